"""Server-side pieces without ROS: newest-frame buffer, session limits, the inference queue, one turn."""
import threading
import time

import numpy as np
import pytest

from lisa_core.serving import (Busy, InferenceQueue, LatestFrame, ServingError, SessionStore, TurnRequest,
                               run_turn)

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
