"""Memory after a spike (real DDS, the embedded model, CPU): the node's resident memory before, during and after a
burst of the largest accepted camera frames (3840×2160 rgb8, each asked about) mixed with refused oversized ones
(raw headers of 20 Mpx on the camera topic). The node should return to within 10 % of
its level before the burst within 10 s. Also the cost of refusing a frame from its header (``check_frame_size``).
Writes ``bench/results/memory.json``.
Usage: python bench/bench_memory.py [--frames 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
from sensor_msgs.msg import CompressedImage, Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from test_images import png_of_size  # noqa: E402

from lisa_core.output import DEMO_IMAGE, read_image  # noqa: E402
from lisa_ros.client import LisaClient  # noqa: E402
from lisa_ros.dds import local_dds_env  # noqa: E402
from lisa_ros.images import check_frame_size  # noqa: E402
from lisa_ros.process import start_node, stop_node  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DOMAIN = 94
MAX_PIXELS = 3840 * 2160


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def refusal_cost_us(repeats: int = 200) -> dict:
    raw = Image(height=4000, width=5000, encoding="rgb8", step=15000, data=bytes(16))
    bomb = CompressedImage(format="png", data=png_of_size(20000, 20000))
    big_png = CompressedImage(format="png", data=png_of_size(5000, 3000))

    def timed(msg):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                check_frame_size(msg, MAX_PIXELS, 16 << 20)
            except ValueError:
                pass
            runs.append(1e6 * (time.perf_counter() - start))
        return statistics.median(runs)

    return {"raw_header_us": timed(raw), "png_400mpx_bomb_us": timed(bomb), "png_15mpx_us": timed(big_png),
            "bomb_bytes": len(bomb.data)}


def largest_accepted_decode_ms(repeats: int = 5) -> dict:
    """The most CPU one accepted camera frame costs to decode: 3840×2160 (max_image_pixels) as rgb8, JPEG and PNG."""
    import cv2

    from lisa_ros.images import to_rgb

    room = read_image(DEMO_IMAGE)
    frame = cv2.resize(room, (3840, 2160), interpolation=cv2.INTER_CUBIC)
    frame = np.ascontiguousarray(frame ^ np.random.default_rng(0).integers(0, 8, frame.shape, dtype=np.uint8))
    raw = Image(height=2160, width=3840, encoding="bgr8", step=3840 * 3, data=frame[..., ::-1].tobytes())
    messages = {"raw_bgr8": raw}
    for ext in ("jpg", "png"):
        ok, data = cv2.imencode(f".{ext}", frame[..., ::-1])
        messages[ext] = CompressedImage(format=ext, data=data.tobytes())

    def timed(msg):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            to_rgb(msg, MAX_PIXELS, 16 << 20)
            runs.append(1000 * (time.perf_counter() - start))
        return statistics.median(runs)

    return {f"{name}_ms": timed(msg) for name, msg in messages.items()} | {
        f"{name}_bytes": len(msg.data) for name, msg in messages.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12, help="largest accepted frames in the burst, each asked about")
    args = parser.parse_args(argv)
    report = {"max_image_pixels": MAX_PIXELS, "refusal": refusal_cost_us(), "decode": largest_accepted_decode_ms()}
    print("decoding the largest accepted frame (3840×2160): " + ", ".join(
        f"{k[:-3]} {v:.0f} ms" for k, v in report["decode"].items() if k.endswith("_ms")), flush=True)
    print(f"refusing from the header: raw {report['refusal']['raw_header_us']:.0f} µs, 400 Mpx PNG bomb "
          f"({report['refusal']['bomb_bytes']} bytes) {report['refusal']['png_400mpx_bomb_us']:.0f} µs", flush=True)
    rclpy.init(domain_id=DOMAIN)
    env = local_dds_env(DOMAIN)
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node({"device": "cpu", "max_new_tokens": 16, "publish_overlay": "false"}, Path(tmp) / "node.log",
                          env)
        client = LisaClient()
        try:
            client.wait_for_node(120)
            room = read_image(DEMO_IMAGE)
            session = client.converse("Where can I wash my hands?", image=room, timeout=300).session_id

            def ask_on(rgb):  # one session throughout: a new image restarts it, so it holds one frame at a time
                return client.converse("Where can I wash my hands?", session_id=session, image=rgb, timeout=300)

            for _ in range(5):  # warm-up: the allocator's and torch's steady state on normal frames
                ask_on(room)
            time.sleep(2)
            before = rss_mb(node.pid)
            print(f"before the burst: {before:.0f} MB", flush=True)
            huge = np.ascontiguousarray(np.tile(room, (2160 // room.shape[0] + 1, 3840 // room.shape[1] + 1, 1))
                                        [:2160, :3840])
            oversized = Image(height=4000, width=5000, encoding="rgb8", step=15000, data=bytes(16))
            peak, errors = before, []
            for i in range(args.frames):
                answer = ask_on(huge)  # (through the goal: reliable, where a best-effort 25 MB frame may be lost)
                errors.append(answer.error)
                for _ in range(5):
                    client.camera.publish(oversized)  # refused from its header on arrival
                peak = max(peak, rss_mb(node.pid))
                print(f"  large frame {i + 1}: {peak:.0f} MB peak, error '{answer.error}'", flush=True)
            ask_on(room)  # the session back on a normal frame
            samples = []
            start = time.monotonic()
            while time.monotonic() - start < 15:
                samples.append((round(time.monotonic() - start, 1), rss_mb(node.pid)))
                time.sleep(0.5)
            after_10 = [mb for t, mb in samples if t <= 10][-1]
            report.update(before_mb=before, peak_mb=peak, after_10s_mb=after_10, after_15s_mb=samples[-1][1],
                          after_10s_ratio=after_10 / before, samples=samples, frames=args.frames,
                          frame_pixels=3840 * 2160, answered_without_error=sum(not e for e in errors))
            print(f"before {before:.0f} MB, peak {peak:.0f} MB, 10 s after {after_10:.0f} MB "
                  f"({after_10 / before:.2f}× before), 15 s after {samples[-1][1]:.0f} MB", flush=True)
        finally:
            client.close()
            stop_node(node)
    rclpy.try_shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS / 'memory.json'}")


if __name__ == "__main__":
    main()
