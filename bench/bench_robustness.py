"""The node's limits, measured over real DDS with the embedded model (CPU): fuzz, several clients at once, restarts
under load, and a long soak. Writes ``bench/results/robustness.json``.

    python bench/bench_robustness.py [--fuzz 1000] [--clients 8] [--turns 6] [--soak 10000] [--phases ...]

- fuzz: random bad or odd inputs — raw frames (encodings, sizes, steps, truncated data), compressed frames (garbage,
  truncated, decompression bombs) on a second node that takes compressed images, queries of random Unicode and
  length, goals with odd fields and unknown or malformed session ids, cancels at random moments, bursts beyond the
  queue. Every query and goal must be answered (a result or an error); the nodes must stay up.
- clients: ``--clients`` sessions at once on different images while a flooder publishes queries at 20 Hz; no answer
  may cross to another session; per client: turns answered, busy refusals, latency.
- restart: deactivate/activate, SIGKILL + restart, and a quick restart while a turn runs, each under load: how long
  until the client gets its clear answer (``SessionClosed`` or an error), and until the node serves again.
- soak: ``--soak`` queries (topic queries, session turns, resets, session listings); resident memory, threads, file
  descriptors and sessions sampled throughout; the memory slope after warm-up.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from lisa_interfaces.action import Converse
from lisa_interfaces.msg import SegmentationResult
from lisa_interfaces.srv import ListSessions, ResetSession
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from test_images import png_of_size  # noqa: E402

from lisa_core.output import DEMO_IMAGE, read_image  # noqa: E402
from lisa_ros.client import LisaClient, SessionClosed  # noqa: E402
from lisa_ros.dds import REQUESTS, local_dds_env  # noqa: E402
from lisa_ros.images import CAMERA_ENCODINGS, numpy_to_image_msg  # noqa: E402
from lisa_ros.process import start_node, stop_node  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DOMAIN = 95
NODE = {"device": "cpu", "max_new_tokens": 16, "publish_overlay": "false"}
QUESTIONS = ["Where can I wash my hands?", "And where can I sit?", "Where is the window?", "What can I read?",
             "Where can I sleep?", "What color is the wall?"]
ODD_ENCODINGS = ("", "weird42", "RGB8", "bayer_rggb8", "yuv422_yuy2", "8SC4", "rgb8 ", "ñ", "32FC3", "nv12")


# ---------------------------------------------------------------- the process side
def proc_stats(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Prober:
    """One rclpy node talking to a LISA node in ``namespace``: camera, queries, results, the action, services."""

    def __init__(self, executor, name: str, namespace: str = "", image_type=Image, image_topic="/camera/image_raw"):
        self.client = LisaClient(namespace, image_topic, executor=executor, name=name, image_type=image_type)
        self.node, self.executor, self.camera = self.client.node, executor, self.client.camera
        self.queries = self.node.create_publisher(String, "lisa/query", REQUESTS)
        self.results: collections.Counter = collections.Counter()  # query text as the node saw it → results
        self.errors: collections.Counter = collections.Counter()  # error kind → results
        self.failed: collections.Counter = collections.Counter()  # query text → results with an error
        self.node.create_subscription(SegmentationResult, "lisa/result", self.on_result, REQUESTS)
        self.diagnostics = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.lister = self.node.create_client(ListSessions, "lisa/list_sessions", qos_profile=REQUESTS)
        self.resetter = self.node.create_client(ResetSession, "lisa/reset_session", qos_profile=REQUESTS)
        self.spin_until = self.client.spin_until

    def on_result(self, msg) -> None:
        self.results[msg.query] += 1
        if msg.error:
            self.errors[error_kind(msg.error)] += 1
            self.failed[msg.query] += 1

    def ready(self, timeout=120.0) -> None:
        self.spin_until(lambda: self.client.action.server_is_ready() and self.queries.get_subscription_count() > 0
                        and self.lister.service_is_ready(), timeout, "the node's endpoints")

    def ask(self, text: str, timeout: float = 60.0) -> None:
        """A topic query, waited for by the text the node receives (rosidl strings end at a NUL)."""
        seen = text.split("\0")[0]
        count = self.results[seen]
        self.queries.publish(String(data=text))
        self.spin_until(lambda: self.results[seen] > count, timeout, f"the answer to {seen[:30]!r}")

    def call(self, service, request, timeout=30.0):
        future = service.call_async(request)
        self.spin_until(future.done, timeout, "a service answer")
        return future.result()

    def diagnostics_values(self, timeout=10.0) -> dict:
        self.diagnostics.clear()
        self.spin_until(lambda: self.diagnostics, timeout, "diagnostics")
        return {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values}

    def frame(self, msg, times: int = 3) -> None:
        for _ in range(times):  # best effort: a few copies so that one arrives
            self.camera.publish(msg)
            self.executor.spin_once(timeout_sec=0.005)


def error_kind(error: str) -> str:
    """An error's kind for counting: its text with quoted names as '…', up to the first digit, colon or bracket."""
    error = re.sub(r"'[^']*'", "'…'", error)
    for stop in (":", "(", "0123456789"):
        cut = min((error.index(c) for c in stop if c in error), default=len(error))
        error = error[:cut]
    return error.strip()[:60] or "(empty)"


# ---------------------------------------------------------------- fuzz
def random_text(rng: random.Random, longest: int = 5000) -> str:
    length = min(int(rng.expovariate(1 / 60)), longest) if rng.random() < 0.9 else rng.randrange(longest)
    pools = [(0x20, 0x7E), (0x0, 0x1F), (0xA0, 0x2FF), (0x590, 0x6FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF),
             (0xE000, 0xF8FF), (0xFFF0, 0xFFFF)]
    chars = []
    for _ in range(length):
        low, high = rng.choice(pools)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def random_raw(rng: random.Random, header: Header) -> Image:
    encoding = rng.choice(CAMERA_ENCODINGS + ODD_ENCODINGS)
    small = rng.random() < 0.7
    height = rng.randint(0, 480) if small else rng.choice([1, 2160, 4000, 65535, 2**31 - 1, 2**32 - 1])
    width = rng.randint(0, 640) if small else rng.choice([1, 3840, 5000, 65535, 2**31 - 1])
    channels = rng.choice([1, 2, 3, 4, 6, 8])
    step = rng.choice([width * channels, width * channels - 1, width * channels + 3, 0, 2**32 - 1]) % 2**32
    size = min(height * step, 4 << 20)
    size = rng.choice([size, size // 2, 0, size + 7, rng.randrange(size + 1)]) if size else rng.randrange(64)
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=rng.random() < 0.1,
                 step=step, data=rng.randbytes(min(size, 4 << 20)))


def random_compressed(rng: random.Random, header: Header, real: dict) -> CompressedImage:
    fmt = rng.choice(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "tiff", random_text(rng, 20)])
    kind = rng.randrange(5)
    if kind == 0:
        data = rng.randbytes(rng.randrange(1, 200_000))
    elif kind == 1:  # a real image cut short
        blob = rng.choice(list(real.values()))
        data = blob[: rng.randrange(1, len(blob))]
    elif kind == 2:  # a real image with bytes flipped
        data = bytearray(rng.choice(list(real.values())))
        for _ in range(rng.randint(1, 50)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    elif kind == 3:  # a decompression bomb: tens of thousands of pixels a side in a few kB
        data = real["bomb"]
    else:
        data = rng.choice(list(real.values()))
    return CompressedImage(header=header, format=fmt, data=data)


def run_goal(prober: Prober, goal, timeout=120.0, cancel_after: float | None = None) -> str:
    """Send a goal (cancelling it after ``cancel_after`` s when given) and wait for its outcome."""
    sent = prober.client.action.send_goal_async(goal)
    prober.spin_until(sent.done, timeout, "goal acceptance")
    handle = sent.result()
    if cancel_after is not None:
        end = time.monotonic() + cancel_after
        while time.monotonic() < end:
            prober.executor.spin_once(timeout_sec=0.005)
        cancelled = handle.cancel_goal_async()
        prober.spin_until(cancelled.done, timeout, "the cancel answer")
    result = handle.get_result_async()
    prober.spin_until(result.done, timeout, "the goal's result")
    msg = result.result().result.result
    return "ok" if not msg.error else error_kind(msg.error)


def fuzz(raw: Prober, compressed: Prober, nodes, count: int, room: np.ndarray, seed: int = 0) -> dict:
    import cv2

    rng = random.Random(seed)
    good = numpy_to_image_msg(room, Header(frame_id="fuzz"), Image)
    real = {"jpg": cv2.imencode(".jpg", room[..., ::-1])[1].tobytes(),
            "png": cv2.imencode(".png", room[..., ::-1])[1].tobytes(), "bomb": png_of_size(30000, 30000)}
    cases = collections.Counter()
    goal_outcomes = collections.Counter()
    queries_sent = collections.Counter()  # (prober, text as seen) → sent
    start = time.monotonic()
    for i in range(count):
        header = Header(frame_id="fuzz")
        header.stamp.sec = 1000 + i
        kind = rng.choices(["raw", "compressed", "query", "goal", "cancel", "burst"], [25, 20, 20, 20, 10, 5])[0]
        cases[kind] += 1
        if kind == "raw":
            raw.frame(random_raw(rng, header), 1)
            if rng.random() < 0.3:  # a query on whatever the node made of it
                raw.ask(QUESTIONS[0])
                queries_sent[("raw", QUESTIONS[0])] += 1
        elif kind == "compressed":
            compressed.frame(random_compressed(rng, header, real), 1)
            if rng.random() < 0.3:
                compressed.ask(QUESTIONS[0])
                queries_sent[("compressed", QUESTIONS[0])] += 1
        elif kind == "query":
            if rng.random() < 0.2:
                raw.frame(good, 2)
            text = random_text(rng)
            raw.ask(text)
            queries_sent[("raw", text.split("\0")[0])] += 1
        elif kind in ("goal", "cancel"):
            session = rng.choice(["", "", "no-such-session", random_text(rng, 300), "x" * 10000, "\0", " "])
            image = rng.choice([Image(), numpy_to_image_msg(room, header, Image), random_raw(rng, header)])
            goal = Converse.Goal(text=rng.choice(QUESTIONS + [random_text(rng)]), session_id=session, image=image,
                                 reset=rng.random() < 0.3,
                                 max_new_tokens=rng.choice([0, 1, 4, 1000, 2**32 - 1]))
            goal_outcomes[run_goal(raw, goal, cancel_after=rng.random() * 0.3 if kind == "cancel" else None)] += 1
        else:  # a burst: far more than max_queue at once
            texts = [f"burst {i}.{j} {random_text(rng, 100)}" for j in range(30)]
            futures = [raw.client.action.send_goal_async(Converse.Goal(text=t, max_new_tokens=4))
                       for t in texts[:10]]
            for t in texts:
                raw.queries.publish(String(data=t))
                queries_sent[("raw", t.split("\0")[0])] += 1
            raw.spin_until(lambda: all(f.done() for f in futures), 60, "the burst's acceptances")
            answers = [f.result().get_result_async() for f in futures]
            raw.spin_until(lambda: all(f.done() for f in answers), 120, "the burst's results")
            for answer in answers:
                msg = answer.result().result.result
                goal_outcomes["ok" if not msg.error else error_kind(msg.error)] += 1
        if i % 50 == 0:
            dead = [name for name, process in nodes.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"node(s) {dead} died at fuzz case {i}")
            print(f"  fuzz {i}/{count} ({time.monotonic() - start:.0f} s)", flush=True)
    probers = {"raw": raw, "compressed": compressed}

    def unanswered():
        return {key: n - probers[key[0]].results[key[1]] for key, n in queries_sent.items()
                if probers[key[0]].results[key[1]] < n}

    try:
        raw.spin_until(lambda: not unanswered(), 120, "every query's answer")
    except TimeoutError:
        pass
    diag = {name: prober.diagnostics_values() for name, prober in probers.items()}
    return {"inputs": count, "cases": dict(cases), "goals": sum(goal_outcomes.values()),
            "goal_outcomes": dict(goal_outcomes.most_common()), "queries": sum(queries_sent.values()),
            "queries_unanswered": sum(unanswered().values()),
            "query_errors": {name: dict(p.errors.most_common()) for name, p in probers.items()},
            "node_deaths": sum(process.poll() is not None for process in nodes.values()),
            "frames_received": {n: int(d["frames_received"]) for n, d in diag.items()},
            "frames_refused": {n: int(d["frames_refused"]) for n, d in diag.items()},
            "queries_lost": {n: int(d["queries_lost"]) for n, d in diag.items()},
            "seconds": time.monotonic() - start}


# ---------------------------------------------------------------- several clients at once
def rooms(count: int) -> list[np.ndarray]:
    from training.data.rooms import draw_room
    from training.data.synthetic import room_seed

    return [draw_room(room_seed(13, i)).image for i in range(count)]


def concurrent_clients(executor, flooder: Prober, count: int, turns: int) -> dict:
    """``count`` clients, each a session of ``turns`` turns on its own image (each cropped to its own size, so that a
    mask on another's image would show), all at once, while ``flooder`` publishes queries at 20 Hz."""
    images = [room[: room.shape[0] - 2 * i, : room.shape[1] - 3 * i].copy() for i, room in enumerate(rooms(count))]
    probers = [Prober(executor, f"client{i}") for i in range(count)]
    for p in probers:
        p.ready()
    state = [{"session": "", "turn": 0, "future": None, "latency": [], "busy": 0, "crossed": 0,
              "errors": collections.Counter(), "result": None} for _ in probers]

    def send(i):
        s = state[i]
        image = (numpy_to_image_msg(images[i], Header(frame_id=f"client{i}"), Image) if s["turn"] == 0 else None)
        goal = Converse.Goal(text=QUESTIONS[s["turn"] % len(QUESTIONS)], session_id=s["session"],
                             max_new_tokens=16, **({"image": image} if image is not None else {}))
        s["future"], s["result"] = probers[i].client.action.send_goal_async(goal), None
        s.setdefault("sent", time.monotonic())  # a retry keeps the turn's first try as its start

    for i in range(count):
        send(i)
    flood_sent, next_flood, start = 0, time.monotonic(), time.monotonic()
    flooder.frame(numpy_to_image_msg(images[0], Header(frame_id="flooder"), Image), 3)
    while any(s["turn"] < turns for s in state):
        executor.spin_once(timeout_sec=0.005)
        if time.monotonic() >= next_flood:
            flooder.queries.publish(String(data=f"flood {flood_sent}: {QUESTIONS[0]}"))
            flood_sent, next_flood = flood_sent + 1, next_flood + 0.05
        for i, s in enumerate(state):
            if s["turn"] >= turns:
                continue
            if s["result"] is None and s["future"].done():
                s["result"] = s["future"].result().get_result_async()
            if s["result"] is not None and s["result"].done():
                msg = s["result"].result().result.result
                if "busy" in msg.error:  # a real client would retry: so does this one, a moment later
                    s["busy"] += 1
                    send(i)
                    continue
                if msg.error:
                    s["errors"][error_kind(msg.error)] += 1
                else:
                    wrong_size = any((m.height, m.width) != images[i].shape[:2] for m in msg.masks)
                    s["crossed"] += int(msg.header.frame_id != f"client{i}" or wrong_size or
                                        (s["session"] and msg.session_id != s["session"]) or
                                        msg.turn != s["turn"] + 1)
                    s["session"] = msg.session_id
                s["latency"].append(time.monotonic() - s.pop("sent"))
                s["turn"] += 1
                if s["turn"] < turns:
                    send(i)
        if time.monotonic() - start > 900:
            raise TimeoutError("clients did not finish in 15 minutes")
    seconds = time.monotonic() - start
    end = time.monotonic() + 3  # the flood's last answers
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    flood_answered = sum(n for q, n in flooder.results.items() if q.startswith("flood "))
    flood_failed = sum(n for q, n in flooder.failed.items() if q.startswith("flood "))
    per_client = [{"turns": s["turn"], "busy_retries": s["busy"], "crossed": s["crossed"], "errors": dict(s["errors"]),
                   "latency_median_s": statistics.median(s["latency"]), "latency_max_s": max(s["latency"])}
                  for s in state]
    rates = [turns / sum(s["latency"]) for s in state]
    for p in probers:
        p.client.close()
    return {"clients": count, "turns_each": turns, "seconds": seconds, "per_client": per_client,
            "crossed": sum(c["crossed"] for c in per_client),
            "jain_fairness": sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates)),
            "slowest_over_fastest_client": min(rates) / max(rates),
            "flood_sent": flood_sent, "flood_answered": flood_answered, "flood_busy_or_error": flood_failed,
            "flood_served": flood_answered - flood_failed, "clients_served": sum(c["turns"] for c in per_client),
            "flood_share_of_answers": (flood_answered - flood_failed) / (flood_answered - flood_failed + count * turns)}


# ---------------------------------------------------------------- restarts
def restarts(prober: Prober, start, room: np.ndarray) -> tuple[dict, object]:
    """Deactivate/activate, kill + restart and a quick restart, each while a session is mid-conversation and topic
    queries are coming. Returns the report and the node now running."""
    report = {}
    client = prober.client

    class Retrying:  # a client that, told `busy`, asks again a moment later (the load keeps the queue full)
        @staticmethod
        def converse(*args, **kwargs):
            while True:
                result = prober.client.converse(*args, **kwargs)
                if "busy" not in result.error:
                    return result
                time.sleep(0.2)

    client = Retrying
    image = numpy_to_image_msg(room, Header(frame_id="restart"), Image)
    changer = prober.node.create_client(ChangeState, "/lisa/change_state")

    def load(seconds: float):  # topic queries meanwhile
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            prober.queries.publish(String(data=QUESTIONS[1]))
            prober.executor.spin_once(timeout_sec=0.1)

    prober.frame(image)
    session = client.converse(QUESTIONS[0], image=image, timeout=60).session_id
    load(1.0)
    t0 = time.monotonic()
    assert prober.call(changer, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)),
                       60).success
    during = client.converse(QUESTIONS[1], session_id=session, timeout=60).error
    assert prober.call(changer, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE)),
                       120).success
    after = client.converse(QUESTIONS[1], session_id=session, timeout=60).error
    fresh = client.converse(QUESTIONS[0], image=image, timeout=60)
    report["lifecycle"] = {"while_inactive": during, "old_session_after": after, "new_session_ok": not fresh.error,
                           "cycle_s": time.monotonic() - t0}
    print(f"  lifecycle: inactive → {during!r}; old session after → {after!r}", flush=True)

    node = start.current
    for mode in ("kill", "quick_restart"):
        session = client.converse(QUESTIONS[0], image=image, timeout=60).session_id
        killed = {}

        def kill_mid_turn(feedback, mode=mode):  # at the turn's first feedback: it is accepted and running
            if not killed and feedback.stage != "queued":  # (a refused goal gets "queued" too)
                killed["at"] = time.monotonic()
                start.current.send_signal(signal.SIGKILL)
                start.current.wait()
                if mode == "quick_restart":
                    start()

        try:
            client.converse(QUESTIONS[1], session_id=session, max_new_tokens=1000, timeout=120,
                            on_feedback=kill_mid_turn)
            outcome = "answered"  # the turn finished before the kill: not a measurement
        except SessionClosed as err:
            outcome = f"SessionClosed: {err}"
        except TimeoutError as err:
            outcome = f"TimeoutError: {err}"
        answer_s = time.monotonic() - killed.get("at", time.monotonic())
        if mode == "kill":
            start()
        prober.ready()
        back_s = time.monotonic() - killed.get("at", time.monotonic())
        old = client.converse(QUESTIONS[1], session_id=session, timeout=60).error
        serving = client.converse(QUESTIONS[0], image=image, timeout=60)
        report[mode] = {"client_outcome": outcome, "client_answer_s": answer_s, "serving_again_s": back_s,
                        "old_session_answer": old, "new_session_ok": not serving.error}
        print(f"  {mode}: client → {outcome!r} after {answer_s:.1f} s; serving again after {back_s:.1f} s; old "
              f"session → {old!r}", flush=True)
    node = start.current
    return report, node


# ---------------------------------------------------------------- soak
def soak(prober: Prober, node, count: int, room_images: list[np.ndarray]) -> dict:
    rng = random.Random(1)
    prober.errors.clear()
    client, samples, kinds = prober.client, [], collections.Counter()
    errors = collections.Counter()
    session, turns, start = "", 0, time.monotonic()
    for i in range(count):
        if i % 20 == 0:
            frame = numpy_to_image_msg(rng.choice(room_images), Header(frame_id="soak"), Image)
            prober.frame(frame)
        roll = rng.random()
        if roll < 0.70:
            kinds["topic_query"] += 1
            prober.ask(rng.choice(QUESTIONS))
        elif roll < 0.95:
            kinds["session_turn"] += 1
            new = not session or turns >= 5
            result = client.converse(rng.choice(QUESTIONS), session_id="" if new else session,
                                     image=rng.choice(room_images) if new else None, timeout=60)
            if result.error:
                errors[error_kind(result.error)] += 1
            session, turns = (result.session_id, 1) if new else (session, turns + 1)
        elif roll < 0.98:
            kinds["reset"] += 1
            prober.call(prober.resetter, ResetSession.Request(session_id=session))
            session = ""
        else:
            kinds["list_sessions"] += 1
            prober.call(prober.lister, ListSessions.Request())
        if i % 100 == 0:
            stats = proc_stats(node.pid)
            stats.update(query=i, s=time.monotonic() - start,
                         sessions=len(prober.call(prober.lister, ListSessions.Request()).sessions))
            samples.append(stats)
            if i % 1000 == 0:
                print(f"  soak {i}/{count}: {stats}", flush=True)
        if node.poll() is not None:
            raise RuntimeError(f"the node died at soak query {i}")
    warm = [s for s in samples if s["query"] >= count // 10]
    slope = np.polyfit([s["query"] for s in warm], [s["rss_mb"] for s in warm], 1)[0] * 1000
    topic_errors = dict(prober.errors.most_common())
    return {"queries": count, "kinds": dict(kinds), "seconds": time.monotonic() - start,
            "queries_per_s": count / (time.monotonic() - start), "session_errors": dict(errors),
            "topic_errors": topic_errors, "rss_mb_first": warm[0]["rss_mb"], "rss_mb_last": warm[-1]["rss_mb"],
            "rss_mb_max": max(s["rss_mb"] for s in samples), "rss_slope_mb_per_1000_queries": slope,
            "threads": [min(s["threads"] for s in warm), max(s["threads"] for s in warm)],
            "fds": [min(s["fds"] for s in warm), max(s["fds"] for s in warm)],
            "sessions_max": max(s["sessions"] for s in samples), "samples": samples}


# ---------------------------------------------------------------- main
class NodeStarter:
    """Starts the main node (again, after a kill) with the same parameters; ``current`` is the running process."""

    def __init__(self, log_dir: Path, env: dict):
        self.log_dir, self.env, self.starts, self.current = log_dir, env, 0, None

    def __call__(self):
        self.starts += 1
        self.current = start_node(NODE, self.log_dir / f"node{self.starts}.log", self.env)
        return self.current


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--soak", type=int, default=10000)
    parser.add_argument("--phases", default="fuzz,clients,restart,soak")
    parser.add_argument("--logs", help="keep the nodes' logs in this directory (default: a temporary one)")
    args = parser.parse_args(argv)
    phases = args.phases.split(",")
    rclpy.init(domain_id=DOMAIN)
    env = local_dds_env(DOMAIN)
    report_path = RESULTS / "robustness.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    room = read_image(DEMO_IMAGE)
    executor = SingleThreadedExecutor()
    with tempfile.TemporaryDirectory() as tmp:
        if args.logs:
            tmp = args.logs
            Path(tmp).mkdir(parents=True, exist_ok=True)
        start = NodeStarter(Path(tmp), env)
        nodes = {"raw": start()}
        if "fuzz" in phases:
            nodes["compressed"] = start_node(
                NODE | {"image_transport": "compressed", "image_topic": "camera/image_raw/compressed"},
                Path(tmp) / "compressed.log", env, namespace="/compressed")
        main_prober = Prober(executor, "robustness_probe")
        try:
            main_prober.ready()
            if "fuzz" in phases:
                compressed = Prober(executor, "compressed_probe", "/compressed", CompressedImage,
                                    "camera/image_raw/compressed")
                compressed.ready()
                print(f"fuzz: {args.fuzz} inputs", flush=True)
                report["fuzz"] = fuzz(main_prober, compressed, nodes, args.fuzz, room)
                print(json.dumps(report["fuzz"], indent=1), flush=True)
                stop_node(nodes.pop("compressed"))
            if "clients" in phases:
                print(f"clients: {args.clients} sessions × {args.turns} turns, a 20 Hz flooder", flush=True)
                report["clients"] = concurrent_clients(executor, main_prober, args.clients, args.turns)
                print(json.dumps(report["clients"], indent=1), flush=True)
            if "restart" in phases:
                print("restart", flush=True)
                report["restart"], nodes["raw"] = restarts(main_prober, start, room)
            if "soak" in phases:
                print(f"soak: {args.soak} queries", flush=True)
                report["soak"] = soak(main_prober, nodes["raw"], args.soak, rooms(16))
                print(json.dumps({k: v for k, v in report["soak"].items() if k != "samples"}, indent=1), flush=True)
        finally:
            for process in nodes.values():
                stop_node(process)
            for log in Path(tmp).glob("*.log"):
                text = log.read_text(errors="replace")
                if "Traceback" in text:
                    print(f"--- {log.name} has a traceback:\n{text[text.index('Traceback'):][:3000]}", flush=True)
    rclpy.try_shutdown()
    RESULTS.mkdir(exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {report_path}")


if __name__ == "__main__":
    main()
