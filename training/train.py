"""``lisa-train``: LoRA fine-tuning of LISA under DeepSpeed, with the paper's recipe as the defaults.

    lisa-train --config run.yaml [--set key=value ...]         (one process, or under `deepspeed --num_gpus N`)

The config (YAML or JSON) holds the fields of ``TrainConfig``. On a machine without CUDA the same code path runs in
fp32 over gloo. Writes ``OUTPUT/checkpoints`` (DeepSpeed, resumable), ``OUTPUT/metrics.csv`` and ``curves.png``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from lisa_core import Lisa

from .collate import prepare_batch
from .data import describe_skipped
from .data.mix import Mixture
from .evaluate import evaluate_items, validation_items
from .forward import batch_loss
from .losses import LossWeights

log = logging.getLogger("lisa-train")
TRAINABLE = ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs")
NO_LORA = ("visual_model", "vision_tower", "mm_projector", "text_hidden_fcs")


@dataclass
class TrainConfig:
    """Defaults: the paper's recipe (reference ``train_ds.py``)."""

    # where training starts: a LLaVA v1 base (the paper) or a LISA checkpoint to fine-tune (dir or hub id)
    model: str = "liuhaotian/llava-llama-2-13b-chat-lightning-preview"
    # segment-anything .pth: required with a LLaVA base (the paper: sam_vit_h_4b8939.pth); with a LISA checkpoint
    # it replaces that checkpoint's SAM, left out it keeps it
    sam_checkpoint: str | None = None
    vision_tower: str | None = None
    use_mm_start_end: bool = True  # for a LLaVA base; a LISA checkpoint's config decides
    output_dir: str = "runs/lisa"
    precision: str = "bf16"  # bf16 | fp32 (fp32 is forced without CUDA)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    micro_batch: int = 2
    grad_accum: int = 10
    epochs: int = 10
    steps_per_epoch: int = 500
    zero_stage: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    # parameters trained besides the LoRA (name substrings); the paper's set by default. Training from a random
    # init adds e.g. "image_encoder" (SAM's) and "model.layers" / "model.norm" (the whole LLM)
    trainable: tuple[str, ...] = TRAINABLE
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    max_length: int = 512
    workers: int = 4  # DataLoader processes that read and preprocess samples (the reference's --workers); at most
    # one per CPU core this process may use; 0 = in the training process
    dataset_dir: str = "dataset"  # laid out as the reference's --dataset_dir; see training/data/mix.py
    # name → keyword arguments and ``weight`` (the reference's sample_rates 9,3,3,1)
    datasets: dict = field(default_factory=lambda: {
        "sem_seg": {"weight": 9, "sources": "ade20k||cocostuff||pascal_part||paco_lvis||mapillary"},
        "refer_seg": {"weight": 3, "datasets": "refclef||refcoco||refcoco+||refcocog"},
        "vqa": {"weight": 3},
        "reason_seg": {"weight": 1, "split": "train", "explanatory": 0.1}})
    eval: dict = field(default_factory=lambda: {"reason_seg": {"split": "val"}})  # see evaluate.validation_items
    eval_every: int = 500  # optimizer steps
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):  # YAML and JSON give lists
        self.betas, self.lora_targets, self.trainable = tuple(self.betas), tuple(self.lora_targets), tuple(self.trainable)

    @classmethod
    def load(cls, path: str | None, overrides: list[str] = ()) -> "TrainConfig":
        values = {}
        if path:
            text = Path(path).read_text()
            values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text) or {}
        for item in overrides:
            key, _, raw = item.partition("=")
            values[key] = yaml.safe_load(raw)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**values)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class TrainModule(torch.nn.Module):
    """What DeepSpeed drives: the (LoRA-wrapped) LISA and a forward that returns the loss terms."""

    def __init__(self, peft_model, seg_token_id: int, weights: LossWeights):
        super().__init__()
        self.peft_model = peft_model
        self.seg_token_id, self.weights = seg_token_id, weights

    @property
    def lisa_model(self):
        return self.peft_model.get_base_model()

    def forward(self, batch: dict) -> dict:
        return batch_loss(self.lisa_model, batch, self.seg_token_id, self.weights)

    def engine(self, lisa: Lisa) -> Lisa:
        """An inference engine on the weights being trained (shared, not copied), with ``lisa``'s tokenizer."""
        return Lisa(self.lisa_model, lisa.tokenizer, lisa.clip_processor, lisa.device)


class MicroBatches(torch.utils.data.Dataset):
    """Item ``j``: this rank's ``j``-th micro-batch from stream position ``first`` on, ready for the model
    (``prepare_batch``). Rank r of w takes stream samples r, r + w, r + 2w, …, so no two ranks train on the same
    sample and a resumed run continues the same order. Each batch also carries, per source, the samples skipped
    while building it (``skipped``): DataLoader workers count in their own processes."""

    def __init__(self, data: Mixture, first: int, count: int, config: TrainConfig, lisa: Lisa, rank: int = 0,
                 world: int = 1):
        self.data, self.first, self.count, self.config = data, first, count, config
        self.tokenizer, self.clip_processor = lisa.tokenizer, lisa.clip_processor
        self.sam_size = lisa.model.sam.image_encoder.img_size
        self.use_im_start_end = bool(lisa.model.config.mm_use_im_start_end)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, j: int) -> dict:
        if not 0 <= j < self.count:  # also ends a plain ``for`` over it
            raise IndexError(f"micro-batch {j} of {self.count}")
        start = self.first + j * self.config.micro_batch
        before = self.data.skipped_counts()
        samples = [self.data[(start + i) * self.world + self.rank] for i in range(self.config.micro_batch)]
        batch = prepare_batch(samples, self.tokenizer, self.clip_processor, self.sam_size, self.config.max_length,
                              self.use_im_start_end)
        skipped = {name: counts - before[name] for name, counts in self.data.skipped_counts().items()}
        return {**batch, "skipped": skipped}


def micro_batch_loader(micro_batches: MicroBatches, workers: int) -> torch.utils.data.DataLoader:
    """``workers`` processes (at most one per core this process may use; 0: in this process) build the batches."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return torch.utils.data.DataLoader(micro_batches, batch_size=None, collate_fn=_as_is,
                                       num_workers=min(workers, cores), worker_init_fn=_worker_ignores_stop_signals)


def _as_is(batch: dict) -> dict:  # the DataLoader's default would turn numpy arrays into tensors
    return batch


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """A Ctrl-C or a scheduler's SIGTERM reaches the DataLoader workers too; they must outlive it so the trainer
    can finish its step and checkpoint (it shuts them down afterwards)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def add_lora(model, config: TrainConfig):
    """LoRA on the LLM's ``lora_targets`` (not SAM, CLIP, projector or fcs); the parameters named by
    ``config.trainable`` (the paper: lm_head, embed_tokens, the mask decoder and text_hidden_fcs) trainable;
    everything else frozen."""
    from peft import LoraConfig, get_peft_model

    targets = sorted(name for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and not any(x in name for x in NO_LORA)
                     and any(name.endswith(t) for t in config.lora_targets))
    model.requires_grad_(False)
    peft_model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                  lora_dropout=config.lora_dropout, target_modules=targets,
                                                  bias="none", task_type="CAUSAL_LM"))
    for name, param in peft_model.named_parameters():
        if any(x in name for x in config.trainable):
            param.requires_grad = True
    return peft_model


def deepspeed_config(config: TrainConfig, on_gpu: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": config.grad_accum,
        "optimizer": {"type": "AdamW", "params": {"lr": config.lr, "weight_decay": config.weight_decay,
                                                  "betas": list(config.betas), "torch_adam": not on_gpu}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "total_num_steps": config.total_steps, "warmup_min_lr": 0, "warmup_max_lr": config.lr,
            "warmup_num_steps": config.warmup_steps, "warmup_type": "linear"}},
        "bf16": {"enabled": on_gpu and config.precision == "bf16"},
        "gradient_clipping": config.grad_clip,
        "zero_optimization": {"stage": config.zero_stage, "contiguous_gradients": True, "overlap_comm": on_gpu,
                              "reduce_scatter": True, "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
    }


def init_distributed(on_gpu: bool) -> None:
    import deepspeed

    if not on_gpu:  # the shared-memory CPU allreduce op would be JIT-compiled (~1 min) at every start; gloo suffices
        import importlib  # (the attribute deepspeed.comm.torch is the torch library itself; the module is this)

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")


@torch.no_grad()
def evaluate(lisa: Lisa, config: TrainConfig) -> dict:
    """gIoU / cIoU over the ``eval`` entries as the reference's validation: teacher-forced ``"[SEG]."``."""
    items = (item for name, options in config.eval.items()
             for item in validation_items(name, options, config.dataset_dir))
    return evaluate_items(lisa, items)[0]


def load_model(config: TrainConfig, device: str) -> Lisa:
    from .init_model import load_for_training

    return load_for_training(config.model, config.sam_checkpoint, config.vision_tower, device=device,
                             dtype="float32", use_mm_start_end=config.use_mm_start_end)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv's rows with numbers, as lisa-train holds them (a column left empty, no evaluation at that step, is
    absent): a resumed run appends new rows to these, and its curves and summary need one type throughout."""
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    return [{k: int(v) if k in ("step", "samples") else float(v) for k, v in row.items() if v != ""} for row in rows]


def plot_curves(rows: list[dict], out: Path) -> None:
    """``rows``: lisa-train's metrics rows, numbers, as ``read_metrics`` gives them and ``_train`` appends them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "ce", "bce", "dice"):
        losses.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    losses.set(xlabel="optimizer step", ylabel="loss", yscale="log", title="training loss terms")
    losses.legend()
    evals = [r for r in rows if "giou" in r]  # rows of steps with an evaluation
    for key in ("giou", "ciou"):
        scores.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=key)
    scores.set(xlabel="optimizer step", ylim=(0, 1), title="held-out segmentation")
    scores.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


class StopSignals:
    """While active, SIGINT / SIGTERM (Ctrl-C, a scheduler's pre-emption) ask the run to stop at the next optimizer
    step, after a checkpoint, instead of killing it mid-step; a second signal kills as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.previous = {}

    def _handle(self, signum, frame):
        log.warning("%s: stopping after this step's checkpoint (again to stop at once)", signal.Signals(signum).name)
        self.requested = True
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def agreed(self, device) -> bool:
        """Whether any rank was asked to stop (every rank must stop at the same step to save collectively)."""
        if torch.distributed.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def train(config: TrainConfig, max_steps: int | None = None, deadline: float | None = None) -> dict:
    """Run (or resume) training; returns the final metrics. ``max_steps`` / ``deadline`` (a ``time.time()``) stop
    early, after an evaluation and a checkpoint (tests, benchmarks); SIGINT / SIGTERM stop after a checkpoint."""
    with StopSignals() as stop:
        return _train(config, max_steps, deadline, stop)


def _train(config: TrainConfig, max_steps: int | None, deadline: float | None, stop: StopSignals) -> dict:
    import deepspeed

    on_gpu = torch.cuda.is_available()
    if not on_gpu and config.precision != "fp32":
        log.info("no CUDA: training in fp32 (bf16 is emulated and 20-45x slower on CPU)")
    init_distributed(on_gpu)
    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    rank = torch.distributed.get_rank()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if on_gpu else "cpu"
    if on_gpu:
        torch.cuda.set_device(device)
    lisa = load_model(config, device)
    peft_model = add_lora(lisa.model, config)
    module = TrainModule(peft_model, lisa.tokenizer.seg_token_id,
                         LossWeights(config.ce_weight, config.bce_weight, config.dice_weight))
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=deepspeed_config(config, on_gpu))
    checkpoints = out / "checkpoints"
    samples_seen, best = 0, {"giou": -1.0}
    if (checkpoints / "latest").is_file():
        _, state = engine.load_checkpoint(str(checkpoints))
        samples_seen, best = state["samples_seen"], state["best"]
        log.info("resumed at step %d (%d samples seen)", engine.global_steps, samples_seen)
    data = Mixture(config.datasets, config.seed, config.dataset_dir)
    lisa_view = module.engine(lisa)
    metrics_file = out / "metrics.csv"
    fields = ["step", "samples", "lr", "loss", "ce", "bce", "dice", "giou", "ciou", "seconds"]
    rows = [r for r in read_metrics(metrics_file) if r["step"] <= engine.global_steps] if samples_seen else []
    seconds_before = rows[-1]["seconds"] if rows else 0.0  # "seconds" counts across resumes
    last_steps = min(config.total_steps, max_steps or config.total_steps)
    bar = tqdm(total=last_steps, initial=engine.global_steps, desc="training", unit="step", disable=None)
    start, running, skipped = time.time(), [], defaultdict(Counter)
    first_step, next_note = engine.global_steps, time.time() + 60
    micro_batches = MicroBatches(data, samples_seen, (last_steps - engine.global_steps) * config.grad_accum,
                                 config, lisa, rank, torch.distributed.get_world_size())
    loader = micro_batch_loader(micro_batches, config.workers)
    for batch in loader:
        if engine.global_steps >= last_steps:  # a deadline or a signal moved the end forward
            break
        for name, counts in batch.pop("skipped").items():
            skipped[name] += counts
        samples_seen += config.micro_batch
        engine.train()
        terms = engine(batch)
        engine.backward(terms["loss"])
        before = engine.global_steps
        engine.step()  # updates the weights only at the end of each gradient-accumulation window
        running.append({k: float(v.detach()) for k, v in terms.items()})
        if engine.global_steps == before:
            continue
        step = engine.global_steps
        stopping = stop.agreed(device)
        if stopping or (deadline is not None and time.time() > deadline):
            last_steps = step
        row = {"step": step, "samples": samples_seen, "lr": scheduler.get_last_lr()[0],
               "seconds": round(seconds_before + time.time() - start, 1),
               **{k: sum(r[k] for r in running) / len(running) for k in ("loss", "ce", "bce", "dice")}}
        running = []
        if step % config.eval_every == 0 or (step == last_steps and not stopping):
            engine.eval()
            summary = evaluate(lisa_view, config)
            row.update(giou=summary["giou"], ciou=summary["ciou"])
            if summary["giou"] > best["giou"]:  # keep the best weights as the checkpoint tag "best"
                best = {"giou": summary["giou"], "ciou": summary["ciou"], "step": step}
                engine.save_checkpoint(str(checkpoints), tag="best", save_latest=False,
                                       client_state={"samples_seen": samples_seen, "best": best})
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", **({"giou": f"{row['giou']:.3f}"} if "giou" in row else {}))
        if bar.disable and time.time() >= next_note:  # no terminal (nohup, CI): a log line a minute, not a bar
            next_note, per_step = time.time() + 60, (time.time() - start) / (step - first_step)
            log.info("step %d/%d  loss %.3f  %.2f s/step  ~%.0f min left", step, last_steps, row["loss"], per_step,
                     (last_steps - step) * per_step / 60)
        if "giou" in row:
            log.info("step %d: validation gIoU %.3f, cIoU %.3f", step, row["giou"], row["ciou"])
        if step % config.checkpoint_every == 0 or step == last_steps:
            engine.save_checkpoint(str(checkpoints), tag=f"step_{step}",
                                   client_state={"samples_seen": samples_seen, "best": best})
            if rank == 0:  # (checkpoints are written by every rank: DeepSpeed saves its shards collectively)
                with metrics_file.open("w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows({k: r.get(k, "") for k in fields} for r in rows)
                plot_curves(rows, out / "curves.png")
    bar.close()
    del loader  # stops its workers
    for name in data.sources:
        log.info("%s: skipped samples: %s", name, describe_skipped(skipped[name]))
    final = {"step": engine.global_steps, "samples_seen": samples_seen, "best": best,
             "last": rows[-1] if rows else {}}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(final, indent=2, default=float) + "\n")
    return final


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lisa-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML or JSON file with TrainConfig fields (defaults: the paper's recipe)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = TrainConfig.load(args.config, args.set)
    except (OSError, ValueError, TypeError) as err:
        print(f"lisa-train: {err}", file=sys.stderr)
        return 2
    summary = train(config, args.max_steps)
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
