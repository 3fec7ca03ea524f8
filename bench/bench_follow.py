"""Follow mode on moving-camera sequences (``training.data.sequences``, held-out rooms), the embedded model, CPU:
the tiered default (``lisa_core.follow.Follower``) against re-decoding the [SEG] prompt on every frame and against
asking the language model again on every frame (the quality ceiling, and what a user pays today). Per-frame IoU
with the ground truth while the target is in view (mean, 10th percentile), frames until ``lost`` after it leaves,
frames until it is re-acquired after it returns, and the compute per frame of each tier. Frames are taken as from
a 10 Hz camera (the follower's clock), processed as fast as they come.
Writes ``bench/results/follow.json``.
Usage: python bench/bench_follow.py [--sequences 9] [--frames 80]
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lisa_core import Lisa  # noqa: E402
from lisa_core.follow import LOST, Follower, FollowConfig, overlap  # noqa: E402
from training.data.rooms import TARGETS  # noqa: E402
from training.data.sequences import make_sequence  # noqa: E402
from training.data.synthetic import room_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT = 13  # the room split no training run uses


def ask_again(lisa: Lisa, seq, question: str) -> tuple[list[np.ndarray], list[float]]:
    masks, seconds = [], []
    for frame in seq.frames[1:]:
        start = time.perf_counter()
        answer = lisa.chat(frame, question, max_new_tokens=24)
        seconds.append(time.perf_counter() - start)
        masks.append(answer.masks[0] if answer.masks else np.zeros(frame.shape[:2], bool))
    return masks, seconds


CAMERA_HZ = 10.0  # the sequences' frame rate: the follower's clock advances by one frame period per frame


def followed(lisa: Lisa, seq, answer, config: FollowConfig):
    now = [0.0]
    follower = Follower(lisa, answer, seq.frames[0], config=config, clock=lambda: now[0])
    updates = []
    for k, frame in enumerate(seq.frames[1:], 1):
        now[0] = k / CAMERA_HZ
        updates.append(follower.update(frame))
    return updates


def scores(masks: list[np.ndarray], seq, lost: list[bool] | None = None) -> dict:
    truth, visible = seq.truth[1:], seq.visible[1:]
    ious = [overlap(m, t) for m, t, v in zip(masks, truth, visible) if v]
    row = {"iou_mean": float(np.mean(ious)), "iou_p10": float(np.percentile(ious, 10))}
    if lost is not None:
        gone = visible.index(False)  # the first frame out of view
        back = gone + visible[gone:].index(True)
        row["frames_to_lost"] = next((i - gone for i in range(gone, back) if lost[i]), None)
        row["frames_to_reacquire"] = next((i - back for i in range(back, len(lost)) if not lost[i]), None)
        row["false_lost_in_view"] = sum(lost[i] for i in range(len(lost)) if visible[i] and i < gone)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=9)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--model", default="lisa-tiny-rooms")
    args = parser.parse_args(argv)
    lisa = Lisa.from_pretrained(args.model, device="cpu")
    targets = sorted(TARGETS)
    modes = {"tiered": FollowConfig(), "redecode_every_frame": FollowConfig(redecode_s=0.0, min_flow_confidence=2.0)}
    rows, costs = [], collections.defaultdict(list)
    for i in range(args.sequences):
        target = targets[i % len(targets)]
        seq = make_sequence(room_seed(HELD_OUT, 1000 + i), target, frames=args.frames)
        question = TARGETS[target][1][0]
        answer = lisa.chat(seq.frames[0], question, max_new_tokens=24)
        if not answer.masks:
            rows.append({"target": target, "error": f"no [SEG] in the first answer: {answer.text!r}"})
            continue
        row = {"target": target, "first_iou": overlap(answer.masks[0], seq.truth[0])}
        for name, config in modes.items():
            updates = followed(lisa, seq, answer, config)
            row[name] = scores([u.mask for u in updates], seq, [u.tier == LOST for u in updates])
            row[name]["tiers"] = dict(collections.Counter(u.tier for u in updates))
            row[name]["seconds_per_frame"] = statistics.mean(u.seconds for u in updates)
            for u in updates:
                costs[u.tier].append(u.seconds)
        masks, seconds = ask_again(lisa, seq, question)
        row["ask_again"] = scores(masks, seq) | {"seconds_per_frame": statistics.mean(seconds)}
        costs["ask_again"] += seconds
        rows.append(row)
        print(f"{target}: first {row['first_iou']:.2f}; " + "; ".join(
            f"{m} IoU {row[m]['iou_mean']:.2f} (p10 {row[m]['iou_p10']:.2f}) {1000 * row[m]['seconds_per_frame']:.0f} "
            f"ms/frame" + (f", lost after {row[m]['frames_to_lost']}, back after {row[m]['frames_to_reacquire']}"
                           if "frames_to_lost" in row[m] else "") for m in (*modes, "ask_again")), flush=True)
    done = [r for r in rows if "error" not in r]
    summary = {m: {"iou_mean": float(np.mean([r[m]["iou_mean"] for r in done])),
                   "iou_p10": float(np.mean([r[m]["iou_p10"] for r in done])),
                   "seconds_per_frame": float(np.mean([r[m]["seconds_per_frame"] for r in done]))}
               for m in (*modes, "ask_again")}
    for m in modes:
        summary[m]["lost_reported"] = sum(r[m]["frames_to_lost"] is not None for r in done) / len(done)
        summary[m]["reacquired"] = sum(r[m]["frames_to_reacquire"] is not None for r in done) / len(done)
    summary["tier_ms"] = {tier: 1000 * statistics.median(s) for tier, s in costs.items()}
    report = {"model": args.model, "frames": args.frames, "sequences": rows, "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "follow.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"written {RESULTS / 'follow.json'}")


if __name__ == "__main__":
    main()
