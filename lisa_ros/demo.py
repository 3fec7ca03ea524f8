"""``lisa-demo``: the whole product in one command. Starts ``lisa-node``, streams a sample image as the camera,
asks a one-shot question on ``lisa/query`` and holds a two-turn session through the ``lisa/converse`` action, all over
real ROS 2 topics, then prints the replies and where masks and overlays were written.

Without ``--model`` it runs on the embedded default: a tiny *untrained* checkpoint made offline (its replies are
noise; it shows the plumbing). ``--model xinlai/LISA-7B-v1`` (or a local dir) runs the real model.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

from lisa_core.output import read_image
from lisa_core.tiny import SAMPLE_IMAGE, make_tiny

from .dds import local_dds_env
from .process import start_node, stop_node

TINY_DIR = Path.home() / ".cache" / "lisa_ros" / "lisa-tiny"
QUESTION = "Where can I wash my hands? Please output segmentation mask."
SESSION = ("What is on the table? Please output segmentation mask.", "And where could I put a cup down?")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lisa-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint dir or hub id (default: the embedded tiny untrained model)")
    p.add_argument("--image", default=str(SAMPLE_IMAGE), help="image to stream as the camera (default: a sample room)")
    p.add_argument("--device", default="", help="torch device for the node (default: cuda if available)")
    p.add_argument("--dtype", help="node dtype (default: float32 for the tiny model, bfloat16 otherwise)")
    p.add_argument("--out", default="demo_out", help="where replies, masks and overlays go (default ./demo_out)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the node and each reply")
    return p.parse_args(argv)


def stream_camera(client, image, stop: threading.Event, hz: float = 5.0) -> None:
    while not stop.is_set():
        client.camera.publish(client.image_msg(image))
        stop.wait(1.0 / hz)


def ask_on_topic(client, question: str, timeout: float):
    """Publish ``question`` on ``lisa/query`` and wait for the matching ``lisa/result``."""
    from lisa_interfaces.msg import SegmentationResult
    from std_msgs.msg import String

    results = []
    client.node.create_subscription(SegmentationResult, "lisa/result", results.append, 10)
    query = client.node.create_publisher(String, "lisa/query", 10)
    client.spin_until(lambda: query.get_subscription_count() > 0, 30, "the node's query subscription")
    client.spin_until(lambda: any(True for _ in client.node.get_publishers_info_by_topic(
        client.node.resolve_topic_name("lisa/result"))), 30, "the node's result publisher")
    time.sleep(0.5)  # both directions of the new pairs to match (the graph lags data)
    query.publish(String(data=question))
    client.spin_until(lambda: any(r.query == question for r in results), timeout, "the reply on lisa/result")
    return next(r for r in results if r.query == question)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model, dtype = args.model, args.dtype or "bfloat16"
    else:
        model, dtype = str(TINY_DIR), args.dtype or "float32"
        if not (TINY_DIR / "config.json").is_file():
            print(f"making the embedded tiny checkpoint in {TINY_DIR} …")
            make_tiny(TINY_DIR)
        print("model: embedded tiny checkpoint — random and UNTRAINED, its replies are noise "
              "(run with --model xinlai/LISA-7B-v1 for the real one)")
    image = read_image(args.image)
    env = local_dds_env(int(os.environ.get("ROS_DOMAIN_ID", random.randint(1, 100))))
    os.environ.update(env)
    node = start_node({"model": model, "dtype": dtype, "device": args.device, "max_new_tokens": 32},
                      out / "node.log", env)
    print(f"started lisa-node (pid {node.pid}, ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}, log {out / 'node.log'})")

    import rclpy
    from rclpy.executors import ExternalShutdownException

    from .client import LisaClient, print_answer, save_answer

    rclpy.init()
    client = LisaClient()
    stop = threading.Event()
    camera = threading.Thread(target=stream_camera, args=(client, image, stop), daemon=True)
    try:
        camera.start()
        client.wait_for_node(args.timeout)
        print(f"\n[topic] lisa/query: {QUESTION}")
        answer = ask_on_topic(client, QUESTION, args.timeout)
        save_answer(out / "query", answer, client.overlay_for(answer.header, wait=3.0))
        print_answer(answer, out / "query")
        errors = [answer.error] if answer.error else []
        session = ""
        for turn, text in enumerate(SESSION, 1):
            print(f"\n[action] lisa/converse turn {turn}: {text}")
            answer = client.converse(text, session_id=session, timeout=args.timeout)
            session = answer.session_id
            save_answer(out / f"session_turn_{turn}", answer, client.overlay_for(answer.header, wait=3.0))
            print_answer(answer, out / f"session_turn_{turn}")
            errors += [answer.error] if answer.error else []
            print(f"  latency: clip {answer.latency.clip_s * 1000:.0f} ms, SAM encode "
                  f"{answer.latency.sam_encode_s * 1000:.0f} ms, total {answer.latency.total_s * 1000:.0f} ms")
        print(f"\nreplies, masks (mask_<i>.png) and overlays (overlay.png) are in {out}/")
        return 1 if errors else 0
    except (TimeoutError, ExternalShutdownException) as err:
        state = "running" if node.poll() is None else f"exited with code {node.returncode}"
        print(f"lisa-demo: {err or type(err).__name__}; lisa-node {state}, its log: {out / 'node.log'}",
              file=sys.stderr)
        return 1
    finally:
        stop.set()
        camera.join(2)
        client.close()
        rclpy.try_shutdown()
        stop_node(node)


if __name__ == "__main__":
    sys.exit(main())
