"""lisa-train through the real DeepSpeed engine (CPU, fp32, gloo): steps, curves, checkpoints and an exact resume."""
import csv
import json

import pytest

from training.train import TrainConfig, main, train

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
