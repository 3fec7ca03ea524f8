"""Follow mode in the node (CPU, fp32, real DDS, the embedded model): does a follow cost the robot its answers, and
does it hold its memory over a long run? A camera replays a held-out moving-camera sequence at 10 Hz (looped).
Questions arrive on ``lisa/query`` at random moments, first with no follow running, then with ``max_follows`` (2)
follows running; the query-to-result latency of both phases, in one run on one node. Then one follow runs for
``--soak-min`` minutes: the node's RSS sampled every second (its slope per 1,000 updates after a warm-up), its
threads, updates sent and frames skipped. Writes ``bench/results/follow_node.json``.

Usage: python bench/bench_follow_node.py [--queries 20] [--soak-min 5]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import rss_mb  # noqa: E402
from bench_stream import CAMERA_HZ, Camera  # noqa: E402

from lisa_ros.client import LisaClient  # noqa: E402
from lisa_ros.dds import local_dds_env  # noqa: E402
from lisa_ros.process import start_node, stop_node  # noqa: E402
from training.data.sequences import make_sequence  # noqa: E402
from training.data.synthetic import room_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DOMAIN = 94
HELD_OUT = 13  # the room split no training run uses
QUESTION = "Where can I wash my hands?"
GAP_S = (0.5, 2.0)  # between an answer and the next question


def ask(client: LisaClient, query, results: list, queries: int, rng: random.Random) -> list[float]:
    """Seconds from each question published to its result on ``lisa/result``."""
    from std_msgs.msg import String

    latencies = []
    for _ in range(queries):
        gap = time.monotonic() + rng.uniform(*GAP_S)
        client.spin_until(lambda: time.monotonic() > gap, 30, "the gap")
        count, asked = len(results), time.perf_counter()
        query.publish(String(data=QUESTION))
        client.spin_until(lambda: len(results) > count, 120, "the answer")
        if results[-1].error:
            raise RuntimeError(f"the question got an error: {results[-1].error}")
        latencies.append(time.perf_counter() - asked)
    return latencies


def summary(latencies: list[float]) -> dict:
    return {"queries": len(latencies), "median_s": statistics.median(latencies),
            "p90_s": float(np.percentile(latencies, 90)), "all_s": latencies}


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def soak(client: LisaClient, pid: int, minutes: float) -> dict:
    """One follow for ``minutes``: RSS every second against the updates sent."""
    updates, samples = [], []
    handle = client.start_follow(QUESTION, on_feedback=updates.append)
    end = time.monotonic() + 60 * minutes
    next_sample = time.monotonic()
    while time.monotonic() < end:
        client.spin_until(lambda: time.monotonic() >= next_sample, 5, "the next sample")
        samples.append((len(updates), rss_mb(pid), threads(pid)))
        next_sample += 1.0
    result = handle.get_result_async()
    cancelled = handle.cancel_goal_async()
    client.spin_until(lambda: cancelled.done() and result.done(), 30, "the soak follow's end")
    settled = [s for s in samples if s[0] >= samples[-1][0] * 0.1]  # after a warm-up of the first tenth
    n, rss = np.array([s[0] for s in settled], float), np.array([s[1] for s in settled])
    slope = float(np.polyfit(n, rss, 1)[0] * 1000) if len(settled) > 2 and np.ptp(n) > 0 else float("nan")
    end_result = result.result().result
    if not updates:
        raise RuntimeError(f"the soak's follow sent no update: {end_result.reason}")
    return {"minutes": minutes, "updates": len(updates), "updates_per_s": len(updates) / (60 * minutes),
            "tiers": {t: sum(u.tier == t for u in updates) for t in sorted({u.tier for u in updates})},
            "frames_skipped": end_result.frames_skipped, "reason": end_result.reason,
            "rss_mb_first": samples[0][1], "rss_mb_after_warmup": settled[0][1], "rss_mb_last": samples[-1][1],
            "rss_mb_max": max(s[1] for s in samples), "rss_slope_mb_per_1000_updates": slope,
            "threads_first": samples[0][2], "threads_last": samples[-1][2]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20, help="timed questions per phase")
    parser.add_argument("--soak-min", type=float, default=5.0, help="minutes of the long follow")
    parser.add_argument("--model", default="lisa-tiny-rooms")
    args = parser.parse_args(argv)
    os.environ.update(local_dds_env(DOMAIN))
    seq = make_sequence(room_seed(HELD_OUT, 1005), "sink", frames=80)
    rclpy.init(domain_id=DOMAIN)
    report = {"model": args.model, "camera_hz": CAMERA_HZ, "frame": list(seq.frames[0].shape[:2]), "gap_s": GAP_S}
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node({"model": args.model, "dtype": "float32", "device": "cpu", "publish_overlay": "false",
                           "max_new_tokens": 24}, Path(tmp) / "node.log", local_dds_env(DOMAIN))
        client = LisaClient()
        from lisa_interfaces.msg import SegmentationResult
        from std_msgs.msg import String

        results = []
        client.node.create_subscription(SegmentationResult, "lisa/result", results.append, 10)
        query = client.node.create_publisher(String, "lisa/query", 10)
        camera = Camera(client, seq.frames)
        rng = random.Random(0)
        try:
            client.wait_for_node(180)
            client.spin_until(lambda: query.get_subscription_count() > 0, 30, "the query subscription")
            camera.start()
            ask(client, query, results, 2, rng)  # warm-up
            report["no_follow"] = summary(ask(client, query, results, args.queries, rng))
            print(f"no follow: query→result median {report['no_follow']['median_s'] * 1000:.0f} ms, p90 "
                  f"{report['no_follow']['p90_s'] * 1000:.0f} ms", flush=True)
            counts = [[], []]
            handles = [client.start_follow(QUESTION, on_feedback=c.append) for c in counts]
            client.spin_until(lambda: all(counts), 60, "both follows' first updates")
            during = summary(ask(client, query, results, args.queries, rng))
            during["follow_updates"] = [len(c) for c in counts]
            report["two_follows"] = during
            ended = [handle.get_result_async() for handle in handles]
            for handle in handles:
                handle.cancel_goal_async()
            client.spin_until(lambda: all(e.done() for e in ended), 30, "the cancelled follows' ends")  # slots free
            ratio = during["median_s"] / report["no_follow"]["median_s"]
            report["median_ratio"], report["p90_ratio"] = ratio, during["p90_s"] / report["no_follow"]["p90_s"]
            print(f"two follows ({during['follow_updates']} updates meanwhile): median "
                  f"{during['median_s'] * 1000:.0f} ms ({ratio:.2f}×), p90 {during['p90_s'] * 1000:.0f} ms "
                  f"({report['p90_ratio']:.2f}×)", flush=True)
            report["soak"] = soak(client, node.pid, args.soak_min)
            s = report["soak"]
            print(f"one follow for {args.soak_min} min: {s['updates']} updates ({s['updates_per_s']:.1f}/s), "
                  f"{s['frames_skipped']} frames skipped; RSS {s['rss_mb_first']:.0f} → {s['rss_mb_last']:.0f} MB "
                  f"(max {s['rss_mb_max']:.0f}), slope {s['rss_slope_mb_per_1000_updates']:.2f} MB per 1,000 "
                  f"updates; threads {s['threads_first']} → {s['threads_last']}", flush=True)
        finally:
            camera.stop.set()
            client.close()
            stop_node(node)
            rclpy.try_shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "follow_node.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS / 'follow_node.json'}")


if __name__ == "__main__":
    main()
