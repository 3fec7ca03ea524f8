"""Follow mode on moving-camera sequences (``training.data.sequences``, held-out rooms, each with a look-alike: a
second object of the target's class), the embedded model, CPU: the tiered default (``lisa_core.follow.Follower``)
against re-decoding the [SEG] prompt on every frame and against asking the language model again on every frame (the
quality ceiling, and what a user pays today). Per-frame IoU with the ground truth while the target is in view (mean,
10th percentile), frames until ``lost`` after it leaves, frames until it is re-acquired after it returns, frames on
the look-alike instead of the target, and the compute per frame of each tier. Frames are taken as from a 10 Hz
camera (the follower's clock), processed as fast as they come.
The cost of each tier at 640×480 on the embedded model and on the mid-size config (``bench_engine.mid_size``:
random weights taught to answer "Sure, it is [SEG]." on the sample room; asking again on a new frame costs what that
answer costs) is measured first, and the tiered schedules' compute per frame there (the tier mix of the sequences).
The tiered default holds a follow's compute to a tenth of asking again (``FollowConfig.budget_share``), which buys
the embedded model more re-decodes than the mid-size config (where a re-decode costs nearly what asking again does):
``tiered_mid_budget`` holds the embedded model to the share of frames re-decoded that the mid-size config gets, so its
IoU is what the default gets there; ``tiered_no_budget`` re-decodes whenever it wants to.
Writes ``bench/results/follow.json``.
Usage: python bench/bench_follow.py [--sequences 9] [--frames 80] [--no-mid]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
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


BUDGET = FollowConfig().budget_share  # the default's: a tenth of asking again
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
    truth, visible, other = seq.truth[1:], seq.visible[1:], seq.other[1:]
    ious = [overlap(m, t) for m, t, v in zip(masks, truth, visible) if v]
    row = {"iou_mean": float(np.mean(ious)), "iou_p10": float(np.percentile(ious, 10)),
           # frames whose mask is more on the look-alike than on the target
           "on_look_alike": sum(overlap(m, o) > max(0.1, overlap(m, t)) for m, t, o in zip(masks, truth, other))}
    if lost is not None:
        gone = visible.index(False)  # the first frame out of view
        back = gone + visible[gone:].index(True)
        row["frames_to_lost"] = next((i - gone for i in range(gone, back) if lost[i]), None)
        row["frames_to_reacquire"] = next((i - back for i in range(back, len(lost)) if not lost[i]), None)
        row["false_lost_in_view"] = sum(lost[i] for i in range(len(lost)) if visible[i] and i < gone)
    return row


def median_seconds(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def tier_costs(lisa: Lisa, frames: list[np.ndarray], ask, repeats: int) -> dict:
    """Seconds per frame of each tier on ``frames``: flow (``carry_mask``, plus ``camera_motion``, which runs on
    the frames where the target is at the edge or out of view: both counted on every frame), re-decode (a new
    frame's SAM embedding + the mask decoder), asking again (``ask(frame)``: the whole chat). The prompt re-decoded
    is the first frame's answer's."""
    from lisa_core.follow import _grey, camera_motion, carry_mask

    answer = ask(frames[0])
    assert answer.masks, f"no [SEG] in the answer on the first frame: {answer.text!r}"
    greys = [_grey(f) for f in frames[:2]]
    later = iter(frames[1:])
    flow = median_seconds(lambda: (carry_mask(greys[0], greys[1], answer.masks[0]), camera_motion(*greys)), 20)
    redecode = median_seconds(lambda: lisa.redecode(lisa.image_state(next(later)), answer.seg_prompts), repeats)
    again = median_seconds(lambda: ask(next(later)), repeats)
    return {"flow_s": flow, "redecode_s": redecode, "ask_again_s": again, "masks_in_answer": len(answer.masks)}


def mid_config() -> tuple[Lisa, callable]:
    """The mid-size config and how it is asked: on the sample room (where it was taught its answer), resized to each
    frame's size — a new frame every time, so nothing is cached; the answer is the taught one."""
    import tempfile

    import cv2
    from bench_engine import MID_REPLY, QUESTION, mid_size
    from lisa_core.output import read_image
    from lisa_core.tiny import SAMPLE_IMAGE, make_tiny

    tiny = Lisa.from_pretrained(str(make_tiny(Path(tempfile.mkdtemp()) / "tiny")), device="cpu")
    mid, room = mid_size(tiny), read_image(SAMPLE_IMAGE)
    tokens = len(mid.tokenizer.encode(MID_REPLY, add_bos=False)) + 1

    def ask(frame):
        h, w = frame.shape[:2]
        return mid.chat(cv2.resize(room, (w, h), interpolation=cv2.INTER_AREA), QUESTION, max_new_tokens=tokens)

    return mid, ask


def costs_at_640x480(lisa: Lisa, name: str, no_mid: bool) -> dict:
    """``tier_costs`` at 640×480 of the embedded model and (unless ``no_mid``) of the mid-size config."""
    seq = make_sequence(room_seed(HELD_OUT, 2000), "sink", frames=16, size=(480, 640))
    question = TARGETS["sink"][1][0]
    configs = {name: (lisa, lambda frame: lisa.chat(frame, question, max_new_tokens=24))}
    if not no_mid:
        configs["mid"] = mid_config()
    return {config: tier_costs(model, seq.frames, ask, repeats=5) for config, (model, ask) in configs.items()}


def mid_budget_here(lisa: Lisa, mid: dict) -> float:
    """The ``budget_share`` that lets ``lisa`` re-decode the share of frames a budget of ``BUDGET`` buys the mid-size
    config (costs ``mid``), at the sequences' frame size."""
    share = (BUDGET * mid["ask_again_s"] - mid["flow_s"]) / mid["redecode_s"]
    seq = make_sequence(room_seed(HELD_OUT, 2001), "sink", frames=12)
    here = tier_costs(lisa, seq.frames, lambda frame: lisa.chat(frame, TARGETS["sink"][1][0], max_new_tokens=24), 5)
    return share * here["redecode_s"] / here["ask_again_s"]


def scheduled(costs: dict, redecoded: float, budget_share: float = 0.0) -> tuple[float, float]:
    """(compute per frame, share of frames re-decoded) of a follower that re-decodes ``redecoded`` of the frames (the
    flow runs on every one), at most what ``budget_share`` of asking again allows."""
    if budget_share:  # the follower's budget pays for the flow too
        redecoded = min(redecoded, (budget_share * costs["ask_again_s"] - costs["flow_s"]) / costs["redecode_s"])
    return costs["flow_s"] + redecoded * costs["redecode_s"], redecoded


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=9)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--model", default="lisa-tiny-rooms")
    parser.add_argument("--no-mid", action="store_true", help="skip the mid-size config's costs")
    args = parser.parse_args(argv)
    lisa = Lisa.from_pretrained(args.model, device="cpu")
    targets = sorted(TARGETS)
    at_640 = costs_at_640x480(lisa, args.model, args.no_mid)
    modes = {"tiered": FollowConfig(), "tiered_no_budget": FollowConfig(budget_share=0.0),
             "redecode_every_frame": FollowConfig(redecode_s=0.0, min_flow_confidence=2.0, budget_share=0.0)}
    if "mid" in at_640:
        modes["tiered_mid_budget"] = FollowConfig(budget_share=mid_budget_here(lisa, at_640["mid"]))
    rows, costs = [], collections.defaultdict(list)
    for i in range(args.sequences):
        target = targets[i % len(targets)]
        seq = make_sequence(room_seed(HELD_OUT, 1000 + i), target, frames=args.frames, look_alike=True)
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
            row[name]["redecoded"] = sum(bool(np.isfinite(u.score)) for u in updates) / len(updates)
            for u in updates:
                costs[u.tier].append(u.seconds)
        masks, seconds = ask_again(lisa, seq, question)
        row["ask_again"] = scores(masks, seq) | {"seconds_per_frame": statistics.mean(seconds)}
        costs["ask_again"] += seconds
        rows.append(row)
        print(f"{target}: first {row['first_iou']:.2f}; " + "; ".join(
            f"{m} IoU {row[m]['iou_mean']:.2f} (p10 {row[m]['iou_p10']:.2f}) {1000 * row[m]['seconds_per_frame']:.0f} "
            f"ms/frame, {row[m]['on_look_alike']} on the look-alike"
            + (f", lost after {row[m]['frames_to_lost']}, back after {row[m]['frames_to_reacquire']}"
               if "frames_to_lost" in row[m] else "") for m in (*modes, "ask_again")), flush=True)
    done = [r for r in rows if "error" not in r]
    summary = {m: {"iou_mean": float(np.mean([r[m]["iou_mean"] for r in done])),
                   "iou_p10": float(np.mean([r[m]["iou_p10"] for r in done])),
                   "seconds_per_frame": float(np.mean([r[m]["seconds_per_frame"] for r in done]))}
               for m in (*modes, "ask_again")}
    for m in (*modes, "ask_again"):
        summary[m]["sequences_on_look_alike"] = sum(r[m]["on_look_alike"] > 0 for r in done)
    for m in modes:
        summary[m]["lost_reported"] = sum(r[m]["frames_to_lost"] is not None for r in done) / len(done)
        summary[m]["reacquired"] = sum(r[m]["frames_to_reacquire"] is not None for r in done) / len(done)
    summary["tier_ms"] = {tier: 1000 * statistics.median(s) for tier, s in costs.items()}
    mix = collections.Counter()
    for r in done:
        mix.update(r["tiered"]["tiers"])
    for m in modes:
        summary[m]["redecoded"] = float(np.mean([r[m]["redecoded"] for r in done]))
    for name, c in at_640.items():
        for mode, budget in (("tiered", BUDGET), ("tiered_no_budget", 0.0), ("tiered_mid_budget", BUDGET)):
            if mode in summary:
                # the schedule of the sequences above (the mid-size model's own random masks would schedule nothing
                # meaningful), capped by what the budget allows at this config's costs
                c[f"{mode}_s_per_frame"], c[f"{mode}_redecoded"] = scheduled(c, summary[mode]["redecoded"], budget)
                c[f"ask_again_over_{mode}"] = c["ask_again_s"] / c[f"{mode}_s_per_frame"]
        print(f"{name} at 640×480: flow {1000 * c['flow_s']:.1f} ms, re-decode {1000 * c['redecode_s']:.0f} ms, ask "
              f"again {1000 * c['ask_again_s']:.0f} ms; " + "; ".join(
                  f"{mode} {1000 * c[f'{mode}_s_per_frame']:.0f} ms/frame ({c[f'ask_again_over_{mode}']:.1f}× less "
                  "than asking again)" for mode in modes if f"{mode}_s_per_frame" in c), flush=True)
    summary["tier_mix"], summary["costs_640x480"] = dict(mix), at_640
    report = {"model": args.model, "frames": args.frames, "sequences": rows, "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "follow.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"written {RESULTS / 'follow.json'}")


if __name__ == "__main__":
    main()
