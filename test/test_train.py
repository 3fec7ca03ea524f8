"""lisa-train through the real DeepSpeed engine (CPU, fp32, gloo): steps, curves, checkpoints and an exact resume."""
import csv
import dataclasses
import json
import os

import pytest
import torch

from training.train import TrainConfig, main, read_metrics, train

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")


def config(tiny_ckpt, out, **changes):
    values = dict(model=str(tiny_ckpt), output_dir=str(out), precision="fp32", micro_batch=2, grad_accum=2, epochs=1,
                  steps_per_epoch=40, warmup_steps=2, eval_every=3, checkpoint_every=3,
                  datasets={"synthetic": {"weight": 1.0, "size": 1000}}, eval={"synthetic": {"size": 3, "seed": 9}})
    values.update(changes)
    return TrainConfig(**values)


def read_rows(out):
    return list(csv.DictReader((out / "metrics.csv").open()))


def test_train_resume_and_outputs(tiny_ckpt, tmp_path):
    straight = train(config(tiny_ckpt, tmp_path / "straight"), max_steps=6)
    first = train(config(tiny_ckpt, tmp_path / "resumed"), max_steps=3)
    assert first["step"] == 3 and first["samples_seen"] == 3 * 2 * 2
    resumed = train(config(tiny_ckpt, tmp_path / "resumed"), max_steps=6)  # picks up the step-3 checkpoint
    assert resumed["step"] == straight["step"] == 6 and resumed["samples_seen"] == straight["samples_seen"] == 24
    a, b = read_rows(tmp_path / "straight"), read_rows(tmp_path / "resumed")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [str(i) for i in range(1, 7)]
    for x, y in zip(a, b):  # same data order, optimizer and scheduler state: the same losses
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), rel=1e-4)
        assert float(x["lr"]) == pytest.approx(float(y["lr"]))
    assert a[2]["giou"] != "" and 0.0 <= float(a[2]["giou"]) <= 1.0
    assert (tmp_path / "straight" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "straight" / "checkpoints" / "latest").read_text().strip() == "step_6"
    best_step = max((r for r in a if r["giou"]), key=lambda r: float(r["giou"]))["step"]
    assert (tmp_path / "straight" / "checkpoints" / "best").is_dir() and int(best_step) in (3, 6)
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["step"] == 6
    # a resume reads its rows back as numbers, the type of the rows it appends (its curves plot steps as numbers)
    read = read_metrics(tmp_path / "resumed" / "metrics.csv")
    assert [r["step"] for r in read] == list(range(1, 7)) and [r["loss"] for r in read] == [float(r["loss"]) for r in b]
    assert [r.get("giou") for r in read] == [float(r["giou"]) if r["giou"] else None for r in b]


def test_paper_recipe_defaults_and_bad_config(tmp_path, capsys):
    recipe = TrainConfig()
    assert (recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_targets) == (8, 16, 0.05,
                                                                                             ("q_proj", "v_proj"))
    assert (recipe.lr, recipe.betas, recipe.weight_decay, recipe.warmup_steps) == (3e-4, (0.9, 0.95), 0.0, 100)
    assert (recipe.micro_batch, recipe.grad_accum, recipe.grad_clip, recipe.zero_stage) == (2, 10, 1.0, 2)
    assert (recipe.ce_weight, recipe.bce_weight, recipe.dice_weight) == (1.0, 2.0, 0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 1\n")
    assert main(["--config", str(bad)]) == 2
    assert "unknown config fields: ['lerning_rate']" in capsys.readouterr().err


def test_export_merged_and_adapter(tiny_ckpt, tmp_path, room_image):
    import torch

    from lisa_core import Lisa
    from training.export import ADAPTER_EXTRA, export_adapter, export_merged, load_trained

    run = tmp_path / "run"
    train(config(tiny_ckpt, run, lr=1e-2, warmup_steps=1), max_steps=3)
    lisa, module = load_trained(run)
    trained = Lisa(module.lisa_model.eval(), lisa.tokenizer, lisa.clip_processor, lisa.device)
    expected = trained.segment(room_image, "Where can I wash my hands?", "Sure, it is [SEG].")
    exported = Lisa.from_pretrained(str(export_merged(run, tmp_path / "merged")), device="cpu")
    got = exported.segment(room_image, "Where can I wash my hands?", "Sure, it is [SEG].")
    assert abs(got.mask_logits - expected.mask_logits).max() < 1e-4
    base = Lisa.from_pretrained(str(tiny_ckpt), device="cpu").segment(room_image, "Where can I wash my hands?",
                                                                     "Sure, it is [SEG].")
    assert abs(got.mask_logits - base.mask_logits).max() > 1e-3, "export must carry the trained weights"
    keys = torch.load(tmp_path / "merged" / "pytorch_model.bin", weights_only=True).keys()
    assert not any("lora" in k or "base_model" in k or "vision_tower" in k for k in keys)
    adapter = export_adapter(run, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", ADAPTER_EXTRA} <= {p.name for p in adapter.iterdir()}
    switched = Lisa.from_pretrained(str(tiny_ckpt), device="cpu")  # the base, with the adapter switched on
    switched.set_adapter(switched.load_adapter(adapter))
    tuned = switched.segment(room_image, "Where can I wash my hands?", "Sure, it is [SEG].")
    assert abs(tuned.mask_logits - got.mask_logits).max() < 1e-4


def test_from_llava_base_with_sam_pth_on_disk_rooms(tmp_path, room_image):
    """The paper's start (LLaVA base + SAM .pth), the data read from the ScanNet and ReasonSeg layouts under
    dataset_dir, held-out ReasonSeg val evaluation, then an export that loads as an official LISA checkpoint."""
    import torch

    from lisa_core import Lisa
    from lisa_core.tiny import make_tiny_llava, make_tiny_sam_pth
    from training.data.synthetic import write_reasonseg_split, write_scannet_scenes
    from training.export import export_merged

    llava, sam = make_tiny_llava(tmp_path / "llava"), make_tiny_sam_pth(tmp_path / "sam.pth")
    data = tmp_path / "dataset"
    write_scannet_scenes(data / "scannet", scenes=1, frames=4)
    write_reasonseg_split(data / "reason_seg" / "ReasonSeg" / "train", 4, seed=1)
    write_reasonseg_split(data / "reason_seg" / "ReasonSeg" / "val", 2, seed=2)
    run = tmp_path / "run"
    summary = train(config(llava, run, sam_checkpoint=str(sam), dataset_dir=str(data), lr=1e-2, warmup_steps=1,
                           datasets={"scannet": {"weight": 3, "label_set": "nyu40", "frame_step": 1},
                                     "reason_seg": {"weight": 1}},
                           eval={"reason_seg": {"split": "val"}}), max_steps=2)
    assert summary["step"] == 2 and 0.0 <= summary["last"]["giou"] <= 1.0
    exported = Lisa.from_pretrained(str(export_merged(run, tmp_path / "merged")), device="cpu")
    assert exported.tokenizer.seg_token_id == 400 and exported.model.config.mm_use_im_start_end
    result = exported.segment(room_image, "Where can I wash my hands?", "[SEG].")
    assert result.mask_logits.shape == (1, *room_image.shape[:2])
    pth = torch.load(sam, weights_only=True)
    saved = torch.load(tmp_path / "merged" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(saved["model.visual_model.image_encoder.patch_embed.proj.weight"],
                       pth["image_encoder.patch_embed.proj.weight"]), "the SAM encoder is frozen: it stays the .pth's"


def test_paper_mix_defaults_and_dataset_errors(tmp_path):
    from training.data.mix import Mixture, build_dataset

    recipe = TrainConfig()
    assert {name: opts["weight"] for name, opts in recipe.datasets.items()} == {
        "sem_seg": 9, "refer_seg": 3, "vqa": 3, "reason_seg": 1}
    assert recipe.eval == {"reason_seg": {"split": "val"}} and recipe.sam_checkpoint is None
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        build_dataset("coco", {})
    with pytest.raises(ValueError, match="dataset 'scannet'.*colour"):
        build_dataset("scannet", {"colour": "red"}, _rooms(tmp_path))
    with pytest.raises(FileNotFoundError, match="no \\*.jpg"):
        build_dataset("reason_seg", {}, tmp_path)  # nothing under dataset_dir/reason_seg/ReasonSeg/train
    mix = Mixture({"synthetic": {"weight": 3, "size": 50}, "scannet": {"weight": 1, "label_set": "nyu40",
                                                                        "frame_step": 1, "reason_rate": 0.0}},
                  seed=0, dataset_dir=tmp_path)
    sources = [mix[k].source.split("/")[0] for k in range(400)]
    assert 0.68 < sources.count("synthetic") / 400 < 0.82 and set(sources) == {"synthetic", "scannet"}
    assert [mix[k].source for k in range(20)] == [mix[k].source for k in range(20)]
    # two entries of one kind (``type``), e.g. a new class beside the known ones
    two = Mixture({"scannet": {"label_set": "nyu40", "frame_step": 1, "reason_rate": 0.0},
                   "only_doors": {"type": "scannet", "label_set": "nyu40", "frame_step": 1, "min_pixels": 1, "reason_rate": 0.0,
                                  "ignore_classes": [n for n in LABELS if n != "door"]}},
                  seed=0, dataset_dir=tmp_path)
    assert [type(d).__name__ for d in two.sources.values()] == ["ScanNetFrames", "ScanNetFrames"]
    doors = two.sources["only_doors"]
    assert {c for i in range(len(doors)) if (s := doors[i]) for c in s.meta["classes"]} <= {"door"}


from training.data.rooms import LABELS  # noqa: E402


def _rooms(root):
    from training.data.synthetic import write_scannet_scenes

    write_scannet_scenes(root / "scannet", scenes=1, frames=3)
    return root


def test_shipped_configs_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    paper = TrainConfig.load(str(configs / "paper.yaml"))
    assert dataclasses.replace(paper, output_dir=TrainConfig().output_dir, sam_checkpoint=None) == TrainConfig()
    robot = TrainConfig.load(str(configs / "robot_rooms.yaml"))
    assert robot.model == "xinlai/LISA-7B-v1" and robot.sam_checkpoint is None and "scannet" in robot.datasets
    stage1 = TrainConfig.load(str(configs / "lisa_tiny_rooms.yaml"))
    stage2 = TrainConfig.load(str(configs / "lisa_tiny_rooms_stage2.yaml"))
    assert (stage2.model, stage2.lr, stage2.warmup_steps, stage2.steps_per_epoch) == (
        "runs/lisa-tiny-rooms-stage1", 3e-4, 100, 6000)  # stage 1's export, a second lr cycle; all else as stage 1
    assert dataclasses.replace(stage2, model=stage1.model, output_dir=stage1.output_dir, lr=stage1.lr,
                               warmup_steps=stage1.warmup_steps, steps_per_epoch=stage1.steps_per_epoch) == stage1
    stage3 = TrainConfig.load(str(configs / "lisa_tiny_rooms_stage3.yaml"))
    assert (stage3.model, stage3.lr, stage3.steps_per_epoch, stage3.seed) == (
        "runs/lisa-tiny-rooms-stage2-best", 1.5e-4, 3000, 2)  # stage 2's export, a third, shorter cycle; new order
    assert dataclasses.replace(stage3, model=stage2.model, output_dir=stage2.output_dir, lr=stage2.lr,
                               steps_per_epoch=stage2.steps_per_epoch, seed=stage2.seed) == stage2


def test_sigterm_stops_after_a_checkpoint_and_resumes(tiny_ckpt, tmp_path, monkeypatch):
    import signal

    import training.train as train_module

    batches = []
    prepare_batch = train_module.prepare_batch

    def prepare_then_signal(*args, **kwargs):
        batches.append(1)
        if len(batches) == 5:  # the first micro-batch of step 3 (2 per step): a scheduler pre-empts the job
            signal.raise_signal(signal.SIGTERM)
        return prepare_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "prepare_batch", prepare_then_signal)
    original = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    stopped = train(config(tiny_ckpt, run, eval_every=5, workers=0), max_steps=6)
    assert stopped["step"] == 3 and (run / "checkpoints" / "latest").read_text().strip() == "step_3"
    assert [r["step"] for r in read_rows(run)] == ["1", "2", "3"] and read_rows(run)[-1]["giou"] == ""
    assert signal.getsignal(signal.SIGTERM) is original
    monkeypatch.undo()
    seconds_at_stop = float(read_rows(run)[-1]["seconds"])
    resumed = train(config(tiny_ckpt, run, eval_every=5), max_steps=6)
    assert resumed["step"] == 6 and resumed["samples_seen"] == 24
    seconds = [float(r["seconds"]) for r in read_rows(run)]
    assert seconds == sorted(seconds) and seconds[3] > seconds_at_stop  # the clock goes on across the resume


def test_sigterm_to_the_data_workers_too_still_stops_cleanly(tiny_ckpt, tmp_path, monkeypatch):
    """A scheduler signals every process of the job: the DataLoader workers must live on until the trainer has
    finished its step and written its checkpoint."""
    import signal

    import training.train as train_module

    prepare_batch = train_module.prepare_batch
    built = []

    def signal_job_then_prepare(*args, **kwargs):  # runs in a worker process (a fork of this one)
        built.append(1)
        if len(built) == 1 and torch.utils.data.get_worker_info().id == 0:  # micro-batch 0, before it is returned
            os.kill(os.getppid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return prepare_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "prepare_batch", signal_job_then_prepare)
    run = tmp_path / "run"
    stopped = train(config(tiny_ckpt, run, eval_every=5, workers=2), max_steps=6)
    assert stopped["step"] == 1 and (run / "checkpoints" / "latest").read_text().strip() == "step_1"
    monkeypatch.undo()
    resumed = train(config(tiny_ckpt, run, eval_every=5, workers=2), max_steps=6)
    assert resumed["step"] == 6 and resumed["samples_seen"] == 24


def test_model_card_lists_every_training_stage_in_order(tmp_path):
    from training.model_card import write_card

    (tmp_path / "data" / "scannet" / "scene0000_00" / "color").mkdir(parents=True)
    (tmp_path / "data" / "scannet" / "scene0000_00" / "color" / "0.jpg").write_bytes(b"")
    runs = []
    for stage, (start, steps, giou) in enumerate([("init", 40, 0.3), ("stage1", 20, 0.5)], 1):
        run = tmp_path / f"run{stage}"
        run.mkdir()
        (run / "train_config.json").write_text(json.dumps({"model": start, "dataset_dir": str(tmp_path / "data")}))
        with (run / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "samples", "seconds", "giou"])
            writer.writeheader()
            writer.writerow({"step": steps // 2, "samples": 2 * steps, "seconds": 60.0, "giou": giou - 0.1})
            writer.writerow({"step": steps, "samples": 4 * steps, "seconds": 120.0 * stage, "giou": giou})
            if stage == 1:  # resumed by an older lisa-train, whose clock restarted: 120 s + 100 s more
                writer.writerow({"step": steps + 1, "samples": 4 * steps + 4, "seconds": 100.0, "giou": ""})
        runs.append(run)
    model = tmp_path / "model"
    model.mkdir()
    (model / "pytorch_model.bin").write_bytes(b"x" * 1000)
    card = write_card(runs, model).read_text()
    first, second = card.index("### Stage 1"), card.index("### Stage 2")
    assert first < second
    assert "From `init`: 41 optimizer steps, 164 samples, 4 min" in card[first:second]  # 220 s
    assert "From `stage1`: 20 optimizer steps, 80 samples, 4 min" in card[second:]
    assert "exported: step 20 (val gIoU 0.500)" in card[second:] and "1 scenes, 1 rooms" in card
