"""Server-side pieces without ROS: newest-frame buffer, session limits, the inference queue, one turn."""
import threading
import time

import numpy as np
import pytest

from lisa_core.geometry import DepthError
from lisa_core.serving import (Busy, DepthFrames, InferenceQueue, LatestFrame, ServingError, SessionStore,
                               TurnRequest, run_turn)

QUESTION = "Where can I wash my hands?"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_latest_frame_keeps_only_the_newest():
    frames = LatestFrame()
    with pytest.raises(ServingError, match="no camera image"):
        frames.get()
    for i in range(5):
        frames.put(f"raw{i}", {"stamp": i})
    assert frames.get().raw == "raw4" and frames.get().meta == {"stamp": 4} and frames.received == 5


def test_depth_frames_closest_in_time_within_the_age_limit():
    depth = DepthFrames(size=3)
    with pytest.raises(DepthError, match="no depth image received"):
        depth.closest(1.0, 0.1)
    for stamp in (1.0, 1.1, 0.9, 1.2):  # out of order, as two topics deliver; 0.9 is then the oldest, dropped
        depth.put(f"d{stamp}", None, stamp)
    assert depth.closest(1.04, 0.1).raw == "d1.0" and depth.closest(1.16, 0.1).raw == "d1.2"
    with pytest.raises(DepthError, match="0.200 s from the colour frame"):
        depth.closest(0.8, 0.1)  # 0.9 was dropped: the nearest left is 1.0
    assert depth.received == 4


def test_session_limits(tiny_lisa, room_image):
    clock = FakeClock()
    store = SessionStore(max_sessions=2, idle_timeout_s=10, max_turns=1, clock=clock)
    a = store.open(tiny_lisa, room_image, "meta-a")
    clock.now = 1
    assert store.open(tiny_lisa, room_image, "meta-b", session_id="b").session_id == "b"
    clock.now = 2
    store.get(a.session_id)  # a is now more recent than b
    c = store.open(tiny_lisa, room_image, "meta-c")
    assert len(store) == 2 and {i["session_id"] for i in store.info()} == {a.session_id, c.session_id}
    with pytest.raises(ServingError, match="unknown session id 'b'"):
        store.get("b")
    clock.now = 20
    assert sorted(store.evict_idle()) == sorted([a.session_id, c.session_id]) and len(store) == 0
    d = store.open(tiny_lisa, room_image, None)
    d.session.chat(QUESTION, max_new_tokens=2)
    with pytest.raises(ServingError, match="max_turns"):
        store.check_turn_allowed(d)
    assert store.reset(d.session_id) and not store.reset(d.session_id)


def test_run_turn_sessions(tiny_lisa, room_image):
    store = SessionStore()
    other = np.full_like(room_image, 128)
    latest = lambda: (room_image, "latest-meta")  # noqa: E731
    entry, first = run_turn(tiny_lisa, store, TurnRequest(QUESTION, max_new_tokens=3), latest)
    assert entry.frame_meta == "latest-meta" and first.turn == 1 and len(entry.session_id) == 12
    same, second = run_turn(tiny_lisa, store, TurnRequest("And now?", entry.session_id, max_new_tokens=3), latest)
    assert same is entry and second.turn == 2
    moved, third = run_turn(tiny_lisa, store, TurnRequest("Here?", entry.session_id, other, "other-meta",
                                                          max_new_tokens=3), latest)
    assert moved.session_id == entry.session_id and third.turn == 1 and moved.frame_meta == "other-meta"
    assert (moved.session.state.image == 128).all()
    reset, fourth = run_turn(tiny_lisa, store, TurnRequest(QUESTION, entry.session_id, reset=True,
                                                           max_new_tokens=3), latest)
    assert fourth.turn == 1 and reset.frame_meta == "latest-meta"
    with pytest.raises(ServingError, match="unknown session"):
        run_turn(tiny_lisa, store, TurnRequest(QUESTION, "nope"), latest)
    custom, _ = run_turn(tiny_lisa, store, TurnRequest(QUESTION, "kitchen", reset=True, max_new_tokens=2), latest)
    assert custom.session_id == "kitchen"


def test_queue_runs_in_order_and_rejects_when_full():
    queue = InferenceQueue(max_queued=1)
    gate, order = threading.Event(), []
    first = queue.submit(lambda: gate.wait(5) and order.append(1))
    second = queue.submit(lambda: order.append(2))
    assert queue.depth == 2
    with pytest.raises(Busy, match="busy"):
        queue.submit(lambda: order.append(3))
    gate.set()
    first.result(5), second.result(5)
    time.sleep(0.05)
    assert order == [1, 2] and queue.depth == 0
    reject = InferenceQueue(max_queued=0)
    gate.clear()
    running = reject.submit(lambda: gate.wait(5))
    with pytest.raises(Busy):
        reject.submit(lambda: None)
    gate.set()
    running.result(5)


def run_with_gate(queue, jobs):
    """Hold the worker on a first job (source "A") while ``jobs`` [(source, name)] are submitted; then let it go.
    Returns (the order the jobs ran in, the names refused busy at submit, the names refused later)."""
    gate, order, refused_later, refused_now = threading.Event(), [], [], []
    futures = [queue.submit(lambda: gate.wait(5) and order.append("gate"), source="A")]
    time.sleep(0.05)  # the gate is running
    for source, name in jobs:
        try:
            futures.append(queue.submit(lambda name=name: order.append(name), source=source,
                                        refused=lambda busy, name=name: refused_later.append(name)))
        except Busy:
            refused_now.append(name)
    gate.set()
    for future in futures:
        try:
            future.result(5)
        except Busy:
            pass
    time.sleep(0.05)
    return order, refused_now, refused_later


def test_queue_takes_the_source_served_least_recently_first():
    order, _, _ = run_with_gate(InferenceQueue(max_queued=4), [("A", "A2"), ("A", "A3"), ("B", "B1"), ("A", "A4")])
    assert order == ["gate", "B1", "A2", "A3", "A4"]


def test_a_flooding_source_gives_up_its_newest_request_to_a_newcomer():
    jobs = [("A", "A2"), ("A", "A3"), ("A", "A4"), ("B", "B1"), ("C", "C1"), ("D", "D1")]
    order, refused_now, refused_later = run_with_gate(InferenceQueue(max_queued=3), jobs)
    # full at A2–A4: B1 displaces A4, C1 displaces A3 (A still holds 2 to C's 0); D1 finds A, B, C with one each
    assert refused_later == ["A4", "A3"] and refused_now == ["D1"]
    assert order == ["gate", "B1", "C1", "A2"]


def test_control_job_runs_after_the_requests_before_it():
    queue = InferenceQueue(max_queued=4)
    gate, order = threading.Event(), []
    queue.submit(lambda: gate.wait(5), source="A")
    time.sleep(0.05)
    queue.submit(lambda: order.append("A2"), source="A")
    queue.submit(lambda: order.append("B1"), source="B")
    queue.submit(lambda: order.append("switch"), force=True)
    last = queue.submit(lambda: order.append("C1"), source="C")
    gate.set()
    last.result(5)
    assert order == ["B1", "A2", "switch", "C1"]


class FakeQueue:
    """Stands in for InferenceQueue: background jobs are kept to be run by hand; ``depth`` reads 0 until
    ``busy_after`` reads (then 1), so a test decides where in an encode a request "arrives"."""

    def __init__(self, busy_after=10**9):
        self.jobs, self.reads, self.busy_after = [], 0, busy_after

    @property
    def depth(self):
        self.reads += 1
        return int(self.reads > self.busy_after)

    def submit(self, job, background=False):
        assert background
        self.jobs.append(job)


def count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)
    monkeypatch.setattr(obj, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_preencoded_frame_is_answered_without_the_encoders(tiny_lisa, room_image, monkeypatch):
    from lisa_core.serving import PreEncoder

    frames, queue = LatestFrame(), FakeQueue()
    pre = PreEncoder(tiny_lisa, frames, queue, decode=lambda raw: raw)
    frames.put(room_image, "meta")
    pre.poke()
    pre.poke()  # one encode scheduled at a time
    assert len(queue.jobs) == 1
    queue.jobs.pop()()
    state = pre.state_for(frames.get())
    assert state.encoded and pre.encoded == 1
    clip_calls = count_calls(monkeypatch, tiny_lisa.model, "encode_clip")
    sam_calls = count_calls(monkeypatch, tiny_lisa.model, "encode_sam")
    result = tiny_lisa.session(state).chat(QUESTION, max_new_tokens=8)
    embedding = tiny_lisa.sam_embedding(state)  # what a [SEG] in the reply would decode on
    assert result.text and clip_calls == [] and sam_calls == [] and embedding is state.sam_embedding
    encoded_frame = frames.get()
    frames.put(room_image.copy(), "newer")
    assert pre.ready()[0] is encoded_frame  # a newer frame, but the encoded one is young enough to answer on
    assert pre.state_for(frames.get()) is None


def test_preencoded_frame_too_old_is_not_used(tiny_lisa, room_image):
    from lisa_core.serving import PreEncoder

    clock, frames, queue = FakeClock(), LatestFrame(), FakeQueue()
    pre = PreEncoder(tiny_lisa, frames, queue, decode=lambda raw: raw, max_age_s=2.0, clock=clock)
    frames.put(room_image, "meta")
    pre.poke()
    queue.jobs.pop()()
    first = frames.get()
    first.received = clock.now = 100.0
    assert pre.ready()[0] is first
    clock.now = 103.0
    assert pre.ready()[0] is first  # still the newest frame: any age will do
    frames.put(room_image.copy(), "newer")
    assert pre.ready() is None  # a newer frame exists and the encoded one is 3 s old
    assert len(queue.jobs) == 1  # the finished encode scheduled the next one
    queue.jobs.pop()()
    assert pre.ready()[0] is frames.get() and pre.encoded == 2


def test_preencode_yields_to_a_waiting_request_keeping_finished_stages(tiny_lisa, room_image):
    from lisa_core.serving import PreEncoder

    clip_blocks = len(tiny_lisa.model.model.vision_tower.encoder.layers)
    # depth reads: poke, the job's start, one per CLIP block; the request "arrives" before SAM's first block
    queue = FakeQueue(busy_after=2 + clip_blocks)
    frames = LatestFrame()
    pre = PreEncoder(tiny_lisa, frames, queue, decode=lambda raw: raw)
    frames.put(room_image, "meta")
    pre.poke()
    queue.jobs.pop()()
    state = pre.state_for(frames.get())
    assert pre.yielded == 1 and state.clip_features is not None and state.sam_embedding is None
    assert pre.ready() is None and not queue.jobs
    queue.busy_after = 10**9  # idle again: the next encode finishes the SAM stage only
    pre.poke()
    queue.jobs.pop()()
    assert pre.encoded == 1 and pre.state_for(frames.get()) is state and state.encoded
    assert pre.ready()[1] is state


def test_preencode_never_blocks_or_counts_against_requests(tiny_lisa, room_image):
    from lisa_core.serving import PreEncoder

    queue = InferenceQueue(max_queued=0)  # busy_policy=reject: any counted job would refuse a request
    frames = LatestFrame()
    pre = PreEncoder(tiny_lisa, frames, queue, decode=lambda raw: raw)
    frames.put(room_image, "meta")
    pre.poke()
    future = queue.submit(lambda: "served")  # accepted although the pre-encode may be running
    assert future.result(timeout=30) == "served" and queue.depth == 0
    queue.shutdown()
