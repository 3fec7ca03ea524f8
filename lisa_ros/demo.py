"""``lisa-demo``: the whole product in one command. Starts ``lisa-node``, streams a room image as the camera,
asks a one-shot question on ``lisa/query`` and holds a two-turn session through the ``lisa/converse`` action, all over
real ROS 2 topics, then prints the replies, where masks and overlays were written and, where the image comes with its
ground truth (the default one does), which object each reply names and the IoU of its mask with that object.

Without ``--model`` it runs on the embedded default ``lisa-tiny-rooms`` (small, trained by ``lisa-train`` on
synthetic rooms; the default image is a held-out room). ``--model xinlai/LISA-7B-v1`` (or a local dir) runs the
real model.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

from lisa_core.checkpoint import DEFAULT_MODEL
from lisa_core.metrics import first_mask_iou, named_in
from lisa_core.output import DEMO_IMAGE, read_ground_truth, read_image

from .dds import local_dds_env
from .process import start_node, stop_node

# (question, the object it asks for in the default image)
QUESTION = ("Where can I wash my hands?", "sink")
SESSION = (("Where can I put my cup down?", "table"), ("And where can I sit?", "chair"))
NOT_ASKABLE = ("unlabelled", "wall", "floor")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lisa-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded model name, checkpoint dir or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--image", default=str(DEMO_IMAGE),
                   help="image to stream as the camera (default: a held-out room with known ground truth)")
    p.add_argument("--device", default="", help="torch device for the node (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="node dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
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


def check_answer(answer, expected: str, truth: dict) -> bool | None:
    """Print which object the reply names and its mask's IoU with the ground truth of ``expected``; whether both
    are right (the reply names ``expected`` and the IoU is at least 0.5), None without ground truth."""
    from .client import mask_arrays

    if not truth or answer.error:
        return None
    names = named_in(answer.reply, [n for n in truth if n not in NOT_ASKABLE])
    masks = mask_arrays(answer)
    iou = first_mask_iou(masks, truth[expected]) if expected in truth else 0.0
    named = ", ".join(names) or "nothing"
    right = bool(names) and names[0] == expected and iou >= 0.5
    print(f"  expected the {expected}: the reply names {named}; mask IoU with the {expected}: {iou:.2f} "
          f"({'right' if right else 'WRONG'})")
    return right


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, dtype = args.model, args.dtype
    if model == DEFAULT_MODEL:
        print(f"model: {DEFAULT_MODEL}, the embedded small LISA trained on synthetic rooms "
              "(--model xinlai/LISA-7B-v1 runs the real one)")
    image = read_image(args.image)
    truth = read_ground_truth(args.image)
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
        text, expected = QUESTION
        print(f"\n[topic] lisa/query: {text}")
        answer = ask_on_topic(client, text, args.timeout)
        save_answer(out / "query", answer, client.overlay_for(answer.header, wait=3.0))
        print_answer(answer, out / "query")
        errors = [answer.error] if answer.error else []
        checks = [check_answer(answer, expected, truth)]
        session = ""
        for turn, (text, expected) in enumerate(SESSION, 1):
            print(f"\n[action] lisa/converse turn {turn}: {text}")
            answer = client.converse(text, session_id=session, timeout=args.timeout)
            session = answer.session_id
            save_answer(out / f"session_turn_{turn}", answer, client.overlay_for(answer.header, wait=3.0))
            print_answer(answer, out / f"session_turn_{turn}")
            errors += [answer.error] if answer.error else []
            checks.append(check_answer(answer, expected, truth))
            print(f"  latency: clip {answer.latency.clip_s * 1000:.0f} ms, SAM encode "
                  f"{answer.latency.sam_encode_s * 1000:.0f} ms, total {answer.latency.total_s * 1000:.0f} ms")
        if truth:
            print(f"\n{sum(c is True for c in checks)} of {len(checks)} answers right (object named and mask IoU "
                  "≥ 0.5 with the image's ground truth)")
        print(f"replies, masks (mask_<i>.png) and overlays (overlay.png) are in {out}/")
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
