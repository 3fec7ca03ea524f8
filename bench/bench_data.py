"""What the training data costs on the CPU, and how much of it DataLoader workers take off the training process.

Frames at ScanNet's colour resolution (1296×968) in the ScanNet v2 2D layout (``lisa-make-rooms``' generator), SAM
at 1024 px (the real models' input size), micro-batch 2 (the paper's): the time to build micro-batches ready for the
model (read and decode the frame and labels, masks, tokenise, CLIP and SAM preprocessing; ``MicroBatches``) in the
training process (``workers: 0``), and the rate at which ``lisa-train``'s DataLoader delivers them with workers.
Writes ``bench/results/data.json``.

Usage: python bench/bench_data.py [--batches 60] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lisa_core import Lisa  # noqa: E402
from lisa_core.tiny import make_tiny  # noqa: E402
from training.data.mix import Mixture  # noqa: E402
from training.data.synthetic import write_scannet_scenes  # noqa: E402
from training.train import MicroBatches, TrainConfig, micro_batch_loader  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def ms_per_batch(micro_batches: MicroBatches, workers: int) -> float:
    loader = iter(micro_batch_loader(micro_batches, workers))
    next(loader)  # workers start and fill their queues; not counted
    start = time.perf_counter()
    n = sum(1 for _ in loader)
    return (time.perf_counter() - start) / n * 1000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lisa = Lisa.from_pretrained(str(make_tiny(Path(tmp) / "tiny", sam_img_size=1024)), device="cpu")
        write_scannet_scenes(Path(tmp) / "data" / "scannet", scenes=2, frames=30, height=968, width=1296)
        data = Mixture({"scannet": {"frame_step": 1, "reason_rate": 0.5}}, seed=0, dataset_dir=Path(tmp) / "data")
        config = TrainConfig(micro_batch=2)

        def fresh():
            return MicroBatches(data, first=0, count=args.batches + 1, config=config, lisa=lisa)

        results = {"frame": [968, 1296], "sam_img_size": 1024, "micro_batch": 2, "batches": args.batches,
                   "in_process_ms_per_batch": ms_per_batch(fresh(), 0),
                   "workers": args.workers, "with_workers_ms_per_batch": ms_per_batch(fresh(), args.workers)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"one micro-batch of 2 frames at 1296×968: {results['in_process_ms_per_batch']:.0f} ms in the training "
          f"process; delivered every {results['with_workers_ms_per_batch']:.0f} ms by {args.workers} workers")


if __name__ == "__main__":
    main()
