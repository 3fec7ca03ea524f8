"""``lisa-query``: ask the running LISA node a question (through its ``lisa/converse`` action) and save the answer.

    lisa-query "where can I wash my hands?" [--image IMG] [--session ID] [--reset] [--out DIR]
    lisa-query "where can I wash my hands?" --follow [--duration S] [--rate HZ] [--requery]

With ``--image`` the image travels in the goal; otherwise the node answers on its newest camera frame. Prints the
reply and the session id (pass it back with ``--session`` for a follow-up), writes mask PNGs, the overlay and
``reply.json``. With ``--follow`` (the ``lisa/follow`` action) the answer's target is then followed on every new
camera frame: a live line per update (tier, confidence, area, 3-D point) until ``--duration`` or Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from action_msgs.msg import GoalStatus
from lisa_interfaces.action import Converse, Follow
from rclpy.action import ActionClient
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from lisa_core.output import overlay, read_image, write_masks, write_png

from .dds import REQUESTS
from .images import numpy_to_image_msg, raw_image_to_rgb
from .spatial import NO_DEPTH


RESULT_REASK_S = 5.0  # while a turn runs, the result is asked for again this often (cheap: the node holds it)
SERVER_GONE_S = 2.0  # the action server unmatched this long: the node is gone
DISCOVERY_SETTLE_S = 1.0  # after the node's servers are seen: time for the node to match our reply readers too


class SessionClosed(RuntimeError):
    """The node ended the conversation without answering: it stopped, died or restarted during the turn. The session
    (if any) is gone with it: ask again with an empty session id."""


class LisaClient:
    """A small rclpy client of the LISA node: camera publisher, action client, overlay listener."""

    def __init__(self, namespace: str = "", image_topic: str = "/camera/image_raw", context=None, executor=None,
                 name: str = "lisa_client", image_type=Image):
        """``executor``: spin this client's node on it (several clients in one process share one); default: its own.
        ``image_type``: what ``camera`` publishes (``CompressedImage`` for a node with ``image_transport:=compressed``)."""
        self.node = Node(name, namespace=namespace, context=context)
        self.action = ActionClient(self.node, Converse, "lisa/converse", goal_service_qos_profile=REQUESTS,
                                   result_service_qos_profile=REQUESTS, cancel_service_qos_profile=REQUESTS)
        self.follow_action = ActionClient(self.node, Follow, "lisa/follow", goal_service_qos_profile=REQUESTS,
                                          result_service_qos_profile=REQUESTS, cancel_service_qos_profile=REQUESTS)
        self.camera = self.node.create_publisher(image_type, image_topic, qos_profile_sensor_data)
        self.overlays: dict[tuple[int, int], np.ndarray] = {}
        self.node.create_subscription(Image, "lisa/overlay", self._on_overlay, 5)
        self.own_executor = executor is None
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context) if executor is None else executor
        self.executor.add_node(self.node)

    def _on_overlay(self, msg: Image) -> None:
        self.overlays[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = raw_image_to_rgb(msg)

    def spin_until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_node(self, timeout: float = 30.0) -> None:
        """Until the node's action servers are ready, then ``DISCOVERY_SETTLE_S`` more. ``server_is_ready`` says our
        requests reach the node; DDS matches the other direction (its replies to us) separately, and a reply sent
        before that is dropped after 100 ms ("client will not receive response" in the node's log): a goal sent at
        once to a node that had just started then waited for an acceptance that never came."""
        self.spin_until(lambda: self.action.server_is_ready() and self.follow_action.server_is_ready(), timeout,
                        "the LISA node's action servers")
        settled = time.monotonic() + DISCOVERY_SETTLE_S
        self.spin_until(lambda: time.monotonic() >= settled, DISCOVERY_SETTLE_S + 1, "discovery to settle")

    def image_msg(self, rgb: np.ndarray, frame_id: str = "camera") -> Image:
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=frame_id)
        return numpy_to_image_msg(rgb, header, Image)

    def converse(self, text: str, session_id: str = "", image: np.ndarray | Image | None = None, reset: bool = False,
                 max_new_tokens: int = 0, timeout: float = 300.0, on_feedback=None):
        """Send one turn and wait for its ``SegmentationResult`` (``error`` set when the node refused it). ``image``:
        RGB (stamped now) or a ready ``sensor_msgs/Image``. ``SessionClosed`` when the node goes away or restarts
        during the turn (never a hang); ``TimeoutError`` after ``timeout`` seconds."""
        goal = Converse.Goal(text=text, session_id=session_id, reset=reset, max_new_tokens=max_new_tokens)
        if image is not None:
            goal.image = image if isinstance(image, Image) else self.image_msg(image)
        deadline = time.monotonic() + timeout
        sent = self.action.send_goal_async(
            goal, feedback_callback=(lambda m: on_feedback(m.feedback)) if on_feedback else None)
        self.wait_on_node([sent], deadline, "the goal to be accepted")
        handle = sent.result()
        if not handle.accepted:
            raise SessionClosed("the node rejected the goal")
        asked = [handle.get_result_async()]
        # A node restarted mid-turn matches again at once but knows nothing of the goal: asking again now and then
        # gets its answer "unknown goal" (STATUS_UNKNOWN) instead of waiting for a result that will never come.
        while not any(f.done() for f in asked):
            self.wait_on_node(asked, min(deadline, time.monotonic() + RESULT_REASK_S), "the reply", final=deadline)
            if not any(f.done() for f in asked):
                asked.append(handle.get_result_async())
        response = next(f for f in asked if f.done()).result()
        if response.status == GoalStatus.STATUS_UNKNOWN:
            raise SessionClosed("the node no longer knows this turn: it restarted while answering")
        return response.result.result  # GetResult response → Converse.Result → SegmentationResult

    def start_follow(self, text: str = "", session_id: str = "", mask_index: int = 0, rate_hz: float = 0.0,
                     duration_s: float = 0.0, requery: bool = False, on_feedback=None, timeout: float = 30.0):
        """Send a ``lisa/follow`` goal; its accepted goal handle (``get_result_async()``, ``cancel_goal_async()``).
        ``on_feedback(Follow.Feedback)`` is called on every update."""
        goal = Follow.Goal(text=text, session_id=session_id, mask_index=mask_index, rate_hz=float(rate_hz),
                           duration_s=float(duration_s), requery=requery)
        sent = self.follow_action.send_goal_async(
            goal, feedback_callback=(lambda m: on_feedback(m.feedback)) if on_feedback else None)
        self.wait_on_node([sent], time.monotonic() + timeout, "the follow goal to be accepted")
        handle = sent.result()
        if not handle.accepted:
            raise SessionClosed("the node rejected the follow goal")
        return handle

    def follow(self, text: str = "", session_id: str = "", on_feedback=None, timeout: float = 300.0, **options):
        """Run a follow to its end (``duration_s`` or Ctrl-C, which cancels it): its ``Follow.Result``."""
        handle = self.start_follow(text, session_id, on_feedback=on_feedback, **options)
        result = handle.get_result_async()
        try:
            self.wait_on_node([result], time.monotonic() + timeout, "the follow to end")
        except KeyboardInterrupt:
            cancelled = handle.cancel_goal_async()
            self.wait_on_node([cancelled], time.monotonic() + 10, "the follow to be cancelled")
            self.wait_on_node([result], time.monotonic() + 10, "the cancelled follow's result")
        return result.result().result

    def wait_on_node(self, futures, until: float, what: str, final: float | None = None) -> None:
        """Spin until one of ``futures`` is done or ``until`` (monotonic) passes; ``TimeoutError`` past ``final``
        (default ``until``); ``SessionClosed`` once the action server has been gone for ``SERVER_GONE_S``."""
        gone_since = None
        while not any(f.done() for f in futures):
            now = time.monotonic()
            if now > (until if final is None else final):
                raise TimeoutError(f"timed out waiting for {what}")
            if now > until:
                return
            if self.action.server_is_ready():
                gone_since = None
            elif gone_since is None:
                gone_since = now
            elif now - gone_since > SERVER_GONE_S:
                raise SessionClosed(f"the node went away while waiting for {what} (stopped, killed or restarting)")
            self.executor.spin_once(timeout_sec=0.05)

    def overlay_for(self, header, wait: float = 1.0):
        key = (header.stamp.sec, header.stamp.nanosec)
        try:
            self.spin_until(lambda: key in self.overlays, wait, "the overlay")
        except TimeoutError:
            return None
        return self.overlays.pop(key)

    def close(self) -> None:
        if self.own_executor:
            self.executor.shutdown()
        else:
            self.executor.remove_node(self.node)
        self.node.destroy_node()


def mask_arrays(result) -> list[np.ndarray]:
    """The result's mono8 mask messages as H×W bool arrays."""
    return [raw_image_to_rgb(msg)[..., 0] > 0 for msg in result.masks]


def target_rows(result) -> list[dict]:
    """Each mask's 3-D target as plain numbers (``null`` fields when it has none, with the reason)."""
    def xyz(p):
        return None if np.isnan(p.x) else [p.x, p.y, p.z]

    return [{"valid": t.valid, "reason": t.reason, "frame_id": t.header.frame_id, "point_m": xyz(t.point),
             "box_min_m": xyz(t.box_min), "box_max_m": xyz(t.box_max), "centroid_px": [t.centroid_u, t.centroid_v],
             "valid_depth_share": t.valid_depth_share} for t in result.targets]


def save_answer(out: Path, result, image: np.ndarray | None) -> dict:
    """Write mask PNGs, ``overlay.png`` (when the image is known) and ``reply.json``; return the json content."""
    out.mkdir(parents=True, exist_ok=True)
    masks = write_masks(out, mask_arrays(result), result.scores)
    if image is not None:
        write_png(out / "overlay.png", image)
    reply = {"query": result.query, "reply": result.reply, "session_id": result.session_id, "turn": result.turn,
             "error": result.error, "stamp": [result.header.stamp.sec, result.header.stamp.nanosec],
             "frame_id": result.header.frame_id, "masks": masks, "targets": target_rows(result),
             "latency_s": {f: getattr(result.latency, f) for f in ("queue_s", "clip_s", "prefill_s", "decode_s",
                                                                   "sam_encode_s", "mask_decode_s", "total_s")}}
    (out / "reply.json").write_text(json.dumps(reply, indent=2) + "\n")
    return reply


def print_answer(result, out: Path) -> None:
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return
    print(f"reply: {result.reply}")
    session = f"session {result.session_id} (turn {result.turn}); " if result.session_id else ""
    print(f"{session}{len(result.masks)} mask(s), {result.latency.total_s:.2f} s; saved in {out}")
    for i, t in enumerate(result.targets, 1):
        if t.reason == NO_DEPTH:
            continue
        where = (f"({t.point.x:.3f}, {t.point.y:.3f}, {t.point.z:.3f}) m in '{t.header.frame_id}', "
                 f"{t.valid_depth_share:.0%} of the mask with depth" if t.valid else f"no 3-D point: {t.reason}")
        print(f"mask {i}: {where}")


def follow_line(f) -> str:
    """One update of a follow, as ``lisa-query --follow`` prints it."""
    stamp = f"{f.header.stamp.sec}.{f.header.stamp.nanosec:09d}"
    where = ""
    if f.target.valid:
        where = f" at ({f.target.point.x:.3f}, {f.target.point.y:.3f}, {f.target.point.z:.3f}) m"
    elif f.target.reason not in (NO_DEPTH, "target lost"):
        where = f" (no 3-D point: {f.target.reason})"
    return (f"#{f.update} {stamp} {f.tier:<8} confidence {f.confidence:.2f} {f.mask_area:6d} px"
            f"{where} {f.compute_s * 1000:.0f} ms")


def run_follow(client: LisaClient, args) -> int:
    def on_feedback(f):
        print(follow_line(f), flush=True)

    timeout = args.duration + args.timeout if args.duration else float("inf")  # no duration: until Ctrl-C
    result = client.follow(args.text, args.session, on_feedback, timeout, duration_s=args.duration,
                           rate_hz=args.rate, requery=args.requery)
    print(f"follow ended: {result.reason} ({result.updates} updates, {result.lost_updates} lost, "
          f"{result.requeries} re-queries, {result.frames_skipped} frames skipped)")
    if result.answer.reply:
        print(f"reply: {result.answer.reply}  (session {result.answer.session_id})")
    return 0 if result.reason in ("cancelled", "duration reached") else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lisa-query", description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="the question")
    parser.add_argument("--image", help="image file to ask about (default: the node's newest camera frame)")
    parser.add_argument("--session", default="", help="session id from an earlier reply, for a follow-up")
    parser.add_argument("--reset", action="store_true", help="start the session afresh")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the node's setting")
    parser.add_argument("--namespace", default="", help="the node's namespace")
    parser.add_argument("--out", default="lisa_reply", help="output directory (default ./lisa_reply)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the reply")
    parser.add_argument("--follow", action="store_true", help="then follow the answer's target on every new camera "
                        "frame (the lisa/follow action), a line per update; Ctrl-C stops it")
    parser.add_argument("--duration", type=float, default=0.0, help="with --follow: stop after this many seconds "
                        "(0: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=0.0, help="with --follow: most updates per second (0: the "
                        "node's follow_rate_hz)")
    parser.add_argument("--requery", action="store_true", help="with --follow: ask again when the target is lost")
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    image = read_image(args.image) if args.image else None
    # Ctrl-C as a KeyboardInterrupt (not rclpy's shutdown of the context): a follow then cancels its goal
    rclpy.init(args=["lisa-query", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    client = LisaClient(args.namespace)
    try:
        client.wait_for_node(min(args.timeout, 30.0))
        if args.follow:
            if args.image:
                parser.error("--follow follows on the node's camera frames: leave out --image")
            return run_follow(client, args)
        result = client.converse(args.text, args.session, image, args.reset, args.max_new_tokens, args.timeout,
                                 on_feedback=lambda f: print(f"\r[{f.stage}] {f.partial_text[-70:]}", end="",
                                                             file=sys.stderr, flush=True))
        print(file=sys.stderr)
        picture = client.overlay_for(result.header) if image is None else overlay(image, mask_arrays(result))
        save_answer(Path(args.out), result, picture)
        print_answer(result, Path(args.out))
        return 1 if result.error else 0
    except (TimeoutError, SessionClosed) as err:
        print(f"lisa-query: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lisa-query: interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
