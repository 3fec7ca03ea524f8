"""Does training really learn? A tiny LISA (``lisa-make-tiny``: random weights) is fine-tuned through the DeepSpeed
path on synthetic indoor rooms written to disk by ``lisa-make-rooms`` in the ScanNet v2 2D layout (semantic samples
by name, and — from each frame's ReasonSeg-format ``reason/<frame>.json`` — reasoning samples by use, e.g. "Where
can I sit?"), and evaluated every 100 steps on a held-out ReasonSeg val folder with the reference's validation
protocol (first query, its prompts, teacher-forced "[SEG].", gIoU/cIoU). Target: gIoU ≥ 0.7 within 15 minutes on
this CPU. Writes ``bench/results/training.json``, ``training_metrics.csv`` and ``training_curves.png``.

Not the paper's recipe where a 7B recipe does not fit a CPU minute budget: micro-batch 4 without accumulation,
50 warm-up steps, one question per sample.

Usage: python bench/bench_training.py [--minutes 15] [--max-steps 3000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lisa_core.tiny import make_tiny  # noqa: E402
from training.data.synthetic import write_reasonseg_split, write_scannet_scenes  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget for training")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--scenes", type=int, default=40, help="training scenes of 50 frames each")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny(Path(tmp) / "tiny")
        data = Path(tmp) / "dataset"
        write_scannet_scenes(data / "scannet", args.scenes, frames=50, seed=0)
        write_reasonseg_split(data / "reason_seg" / "ReasonSeg" / "val", 60, seed=12345)
        config = TrainConfig(
            model=str(model), output_dir=str(Path(tmp) / "run"), precision="fp32", micro_batch=4, grad_accum=1,
            epochs=1, steps_per_epoch=args.max_steps, warmup_steps=50, eval_every=args.eval_every,
            checkpoint_every=args.eval_every, lr=3e-4, dataset_dir=str(data),
            datasets={"scannet": {"label_set": "nyu40", "frame_step": 1, "min_pixels": 50, "classes_per_sample": 1,
                                  "reason_rate": 0.5}},
            eval={"reason_seg": {"split": "val"}})
        start = time.time()
        summary = train(config, deadline=start + 60 * args.minutes)
        summary["wall_clock_s"] = time.time() - start
        summary["config"] = {k: v for k, v in vars(config).items() if k not in ("model", "output_dir")}
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(Path(config.output_dir) / "metrics.csv", RESULTS / "training_metrics.csv")
        shutil.copy(Path(config.output_dir) / "curves.png", RESULTS / "training_curves.png")
    (RESULTS / "training.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"best held-out gIoU {summary['best']['giou']:.3f} (cIoU {summary['best']['ciou']:.3f}) at step "
          f"{summary['best']['step']}; {summary['wall_clock_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
