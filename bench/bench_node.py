"""ROS node benchmark (tiny checkpoint, CPU, real DDS on this machine).

1. Overhead: time from sending image + question (one ``lisa/converse`` goal) to receiving the result with its masks,
   against calling the engine directly on the same input, at 640×480 and 1920×1080.
2. Soak: a 30 Hz camera for ``--soak-s`` seconds while a question is asked every 2 s: the node's memory, queue depth
   and frames received over time.
Writes ``bench/results/node.json``. Usage: python bench/bench_node.py [--repeats 15] [--soak-s 60]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray

from lisa_core import Lisa
from lisa_core.output import read_image
from lisa_core.tiny import SAMPLE_IMAGE, make_tiny
from lisa_ros.client import LisaClient
from lisa_ros.dds import local_dds_env
from lisa_ros.process import start_node, stop_node

RESULTS = Path(__file__).resolve().parent / "results"
QUESTION = "Where can I wash my hands? Please output segmentation mask."
DOMAIN = 91
NEW_TOKENS = 8


class TopicPath:
    """Camera frame on the image topic + question on ``lisa/query`` → union mask on ``lisa/mask``."""

    def __init__(self, client: LisaClient):
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.client, self.masks, self.String = client, [], String
        client.node.create_subscription(Image, "lisa/mask", self.masks.append, 10)
        self.query = client.node.create_publisher(String, "lisa/query", 10)
        client.spin_until(lambda: self.query.get_subscription_count() > 0, 20, "the query subscription")
        time.sleep(0.5)

    def ask(self, image, stamp_sec: int) -> float | None:
        """Seconds from publishing to the mask of this frame; None if the query overtook the frame."""
        frame = self.client.image_msg(image)
        frame.header.stamp.sec, frame.header.stamp.nanosec = stamp_sec, 0
        self.masks.clear()
        start = time.perf_counter()
        self.client.camera.publish(frame)
        self.query.publish(self.String(data=QUESTION))
        self.client.spin_until(lambda: self.masks, 30, "the mask")
        elapsed = time.perf_counter() - start
        return elapsed if self.masks[0].header.stamp.sec == stamp_sec else None


def overhead(client: LisaClient, topic: TopicPath, lisa: Lisa, image, repeats: int) -> dict:
    direct, via_topics, via_action, inside = [], [], [], []
    client.converse(QUESTION, image=image, timeout=60)  # warm-up: discovery, allocations
    topic.ask(image, 1)
    for i in range(repeats):
        start = time.perf_counter()
        result = lisa.chat(image, QUESTION, max_new_tokens=NEW_TOKENS)
        direct.append(time.perf_counter() - start)
        for attempt in range(5):  # the query may overtake the frame; then the answer is on the previous one
            elapsed = topic.ask(image, 100 + 10 * i + attempt)
            if elapsed is not None:
                via_topics.append(elapsed)
                break
        start = time.perf_counter()
        answer = client.converse(QUESTION, image=image, timeout=60)
        via_action.append(time.perf_counter() - start)
        assert not answer.error and len(answer.masks) == len(result.masks)
        inside.append(answer.latency.total_s)
    med = statistics.median
    return {"size": list(image.shape[:2]), "masks": len(result.masks), "direct_engine_s": med(direct),
            "topics_end_to_end_s": med(via_topics), "topic_samples": len(via_topics),
            "topics_overhead_ms": 1000 * (med(via_topics) - med(direct)),
            "action_end_to_end_s": med(via_action), "action_overhead_ms": 1000 * (med(via_action) - med(direct)),
            "action_node_internal_s": med(inside)}


def soak(client: LisaClient, node: subprocess.Popen, image, seconds: float, ask: bool = True) -> dict:
    diagnostics = []
    client.node.create_subscription(DiagnosticArray, "/diagnostics",
                                    lambda m: diagnostics.append({kv.key: kv.value for kv in m.status[0].values}), 10)
    process = psutil.Process(node.pid)
    frame = client.image_msg(image)
    stop, published = threading.Event(), [0]

    def camera():
        next_at = time.perf_counter()
        while not stop.is_set():
            frame.header.stamp = client.node.get_clock().now().to_msg()
            client.camera.publish(frame)
            published[0] += 1
            next_at += 1 / 30
            time.sleep(max(0.0, next_at - time.perf_counter()))

    thread = threading.Thread(target=camera, daemon=True)
    client.spin_until(lambda: diagnostics, 5, "diagnostics")
    received_before = int(diagnostics[-1]["frames_received"])
    samples, answers, errors = [], 0, 0
    start = time.monotonic()
    thread.start()
    while time.monotonic() - start < seconds:
        if ask:
            answer = client.converse(QUESTION, timeout=60)  # on the newest camera frame
            answers, errors = answers + 1, errors + bool(answer.error)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            client.executor.spin_once(timeout_sec=0.05)
        last = diagnostics[-1] if diagnostics else {}
        samples.append({"t": time.monotonic() - start, "rss_mb": process.memory_info().rss / 2**20,
                        "queue_depth": int(last.get("queue_depth", 0)),
                        "frame_age_max_ms": float(last.get("frame_age_max_ms", "nan"))})
    stop.set()
    thread.join()
    settle = time.monotonic() + 2.5  # two diagnostics periods after the last frame
    while time.monotonic() < settle:
        client.executor.spin_once(timeout_sec=0.05)
    received = int(diagnostics[-1]["frames_received"]) - received_before
    ages = [s["frame_age_max_ms"] for s in samples if s["frame_age_max_ms"] == s["frame_age_max_ms"]]
    return {"seconds": seconds, "answers": answers, "errors": errors, "frames_published": published[0],
            "frames_received": received, "rss_mb_first": samples[0]["rss_mb"], "rss_mb_last": samples[-1]["rss_mb"],
            "rss_mb_max": max(s["rss_mb"] for s in samples), "max_queue_depth": max(s["queue_depth"] for s in samples),
            "image_callback_delay_ms_max": max(ages), "image_callback_delay_ms_median_of_maxima":
            statistics.median(ages), "samples": samples}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--soak-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    import os

    os.environ.update(local_dds_env(DOMAIN))
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny(Path(tmp) / "tiny")
        lisa = Lisa.from_pretrained(str(model), device="cpu")
        node = start_node({"model": model, "dtype": "float32", "device": "cpu", "max_new_tokens": NEW_TOKENS,
                           "publish_overlay": "false", "max_queue": 2}, Path(tmp) / "node.log", local_dds_env(DOMAIN))
        rclpy.init(domain_id=DOMAIN)
        client = LisaClient()
        try:
            client.wait_for_node(60)
            room = read_image(SAMPLE_IMAGE)
            report = {"new_tokens": NEW_TOKENS, "overhead": []}
            topic = TopicPath(client)
            for w, h in ((640, 480), (1920, 1080)):
                image = cv2.resize(room, (w, h), interpolation=cv2.INTER_LINEAR)
                row = overhead(client, topic, lisa, image, args.repeats)
                report["overhead"].append(row)
                print(f"{w}×{h}: direct engine {row['direct_engine_s'] * 1000:.1f} ms; topics (image + query → "
                      f"mask) {row['topics_end_to_end_s'] * 1000:.1f} ms, overhead {row['topics_overhead_ms']:.1f} ms "
                      f"({row['topic_samples']} samples); action (goal with image → result) "
                      f"{row['action_end_to_end_s'] * 1000:.1f} ms, overhead {row['action_overhead_ms']:.1f} ms",
                      flush=True)
            report["idle_camera"] = soak(client, node, cv2.resize(room, (640, 480)), 6, ask=False)
            report["soak"] = soak(client, node, cv2.resize(room, (640, 480)), args.soak_s)
            i = report["idle_camera"]
            print(f"camera only, 6 s at 30 Hz: {i['frames_published']} frames published, {i['frames_received']} "
                  f"received; image callback delay: worst {i['image_callback_delay_ms_max']:.1f} ms, typical "
                  f"worst-per-second {i['image_callback_delay_ms_median_of_maxima']:.1f} ms")
            s = report["soak"]
            print(f"soak {s['seconds']:.0f} s at 30 Hz: {s['answers']} answers ({s['errors']} errors), "
                  f"{s['frames_published']} frames published, {s['frames_received']} received; node RSS "
                  f"{s['rss_mb_first']:.0f} → {s['rss_mb_last']:.0f} MB (max {s['rss_mb_max']:.0f}); max queue depth "
                  f"{s['max_queue_depth']}; image callback delay: worst {s['image_callback_delay_ms_max']:.1f} ms, "
                  f"typical worst-per-second {s['image_callback_delay_ms_median_of_maxima']:.1f} ms")
        finally:
            client.close()
            rclpy.try_shutdown()
            stop_node(node)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "node.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS / 'node.json'}")


if __name__ == "__main__":
    main()
