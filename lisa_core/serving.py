"""What a long-running server (the ROS node) needs around the engine, with no ROS in it: the newest camera frame,
recent depth frames by stamp, multi-turn sessions with limits, and a single inference worker with a bounded
queue."""
from __future__ import annotations

import bisect
import collections
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .engine import ImageState, Lisa, LisaResult, Session
from .geometry import DepthError


class ServingError(ValueError):
    """A request that cannot be served as asked; the message is meant for the requester."""


class Busy(ServingError):
    """The inference queue is full."""


class Cancelled(Exception):
    """Raised inside a job whose requester cancelled it."""


@dataclass
class Frame:
    """A camera frame as received: ``raw`` is whatever the transport gave (decoded on use), ``meta`` its header."""

    raw: Any
    meta: Any
    received: float = field(default_factory=time.monotonic)


class LatestFrame:
    """Keeps only the newest frame; older ones are dropped, never queued."""

    def __init__(self):
        self._frame: Frame | None = None
        self._lock = threading.Lock()
        self.received = 0

    def put(self, raw, meta) -> None:
        with self._lock:
            self._frame = Frame(raw, meta)
            self.received += 1

    def get(self) -> Frame:
        with self._lock:
            if self._frame is None:
                raise ServingError("no camera image received yet: publish one on the image topic first")
            return self._frame

    def newest(self) -> Frame | None:
        return self._frame


class DepthFrames:
    """The last ``size`` depth frames by stamp (seconds): an answer takes the one closest in time to its colour
    frame. Depth and colour arrive on separate topics at their own rates, so "newest" would often be the wrong one."""

    def __init__(self, size: int = 30):
        self.size = size
        self._stamps: list[float] = []
        self._frames: list[Frame] = []
        self._lock = threading.Lock()
        self.received = 0

    def put(self, raw, meta, stamp_s: float) -> None:
        with self._lock:
            at = bisect.bisect(self._stamps, stamp_s)
            self._stamps.insert(at, stamp_s)
            self._frames.insert(at, Frame(raw, meta))
            if len(self._frames) > self.size:  # drop the oldest
                del self._stamps[0], self._frames[0]
            self.received += 1

    def closest(self, stamp_s: float, max_age_s: float) -> Frame:
        """The frame nearest ``stamp_s``; ``DepthError`` saying why when none is within ``max_age_s``."""
        with self._lock:
            if not self._frames:
                raise DepthError("no depth image received yet")
            nearest = min(range(len(self._stamps)), key=lambda i: abs(self._stamps[i] - stamp_s))
            gap = abs(self._stamps[nearest] - stamp_s)
            if gap > max_age_s:
                raise DepthError(f"no depth image close enough in time: the nearest is {gap:.3f} s from the colour "
                                 f"frame (depth_max_age_s {max_age_s:g})")
            return self._frames[nearest]


@dataclass
class SessionEntry:
    session_id: str
    session: Session
    frame_meta: Any
    last_used: float
    depth: Any = None  # what a server matched to the session's frame (the node: its depth), kept for later turns


class SessionStore:
    """Sessions by id, bounded: at most ``max_sessions`` (least recently used evicted), idle ones dropped after
    ``idle_timeout_s``, at most ``max_turns`` turns each (then the requester must reset). Sessions closed all at once
    with a reason (``clear(reason)``, e.g. an adapter switch) answer with that reason when asked for again."""

    REMEMBERED_CLOSED = 64  # closed session ids whose reason is kept

    def __init__(self, max_sessions: int = 8, idle_timeout_s: float = 600.0, max_turns: int = 20,
                 clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.idle_timeout_s, self.max_turns = max_sessions, idle_timeout_s, max_turns
        self._clock = clock
        self._entries: dict[str, SessionEntry] = {}
        self._closed: dict[str, str] = {}  # session id → why it was closed
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, lisa: Lisa, image: np.ndarray, frame_meta, session_id: str = "") -> SessionEntry:
        """A new session on ``image`` (replacing any session with the same id)."""
        entry = SessionEntry(session_id or uuid.uuid4().hex[:12], lisa.session(image), frame_meta, self._clock())
        with self._lock:
            self._entries.pop(entry.session_id, None)
            self._closed.pop(entry.session_id, None)
            while len(self._entries) >= self.max_sessions:
                oldest = min(self._entries.values(), key=lambda e: e.last_used)
                del self._entries[oldest.session_id]
            self._entries[entry.session_id] = entry
        return entry

    def get(self, session_id: str) -> SessionEntry:
        self.evict_idle()
        with self._lock:
            if session_id not in self._entries and session_id in self._closed:
                raise ServingError(f"session '{session_id}' was closed: {self._closed[session_id]}; send an empty "
                                   "session_id to start a new one")
            if session_id not in self._entries:
                raise ServingError(f"unknown session id '{session_id}' (closed: it expired, was evicted or reset, the "
                                   "server restarted since, or it was never opened); "
                                   "send an empty session_id to start a new one")
            entry = self._entries[session_id]
            entry.last_used = self._clock()
            return entry

    def reset(self, session_id: str) -> bool:
        with self._lock:
            return self._entries.pop(session_id, None) is not None

    def clear(self, reason: str = "") -> int:
        """Close every session; returns how many. With a ``reason``, asking for one of them later says it."""
        with self._lock:
            closed = len(self._entries)
            if reason:
                self._closed.update(dict.fromkeys(self._entries, reason))
                for key in list(self._closed)[:-self.REMEMBERED_CLOSED]:
                    del self._closed[key]
            self._entries.clear()
            return closed

    def evict_idle(self) -> list[str]:
        now = self._clock()
        with self._lock:
            idle = [k for k, e in self._entries.items() if now - e.last_used > self.idle_timeout_s]
            for key in idle:
                del self._entries[key]
        return idle

    def info(self) -> list[dict]:
        self.evict_idle()
        now = self._clock()
        with self._lock:
            return [{"session_id": e.session_id, "turns": len(e.session.turns), "idle_s": now - e.last_used,
                     "frame_meta": e.frame_meta} for e in self._entries.values()]

    def check_turn_allowed(self, entry: SessionEntry) -> None:
        if len(entry.session.turns) >= self.max_turns:
            raise ServingError(f"session '{entry.session_id}' reached max_turns ({self.max_turns}); "
                               "reset it or start a new session")


CONTROL, BACKGROUND = object(), object()  # the sources of control jobs and of idle-time work


@dataclass(eq=False)
class _Job:
    run: Callable[[], Any]
    future: Future
    source: Any
    seq: int
    refused: Callable[[Busy], None] | None = None


class InferenceQueue:
    """One worker thread runs jobs (one model, one GPU). At most ``max_queued`` requests wait behind the running one;
    with 0, a request that arrives while busy is rejected.

    Fair between requesters (``source``: whatever tells them apart — a publisher, a session): the next request is
    taken from the source served least recently, and when the queue is full, a newcomer whose source waits with at
    least two fewer requests than the fullest source takes the place of that source's newest request, which is
    refused (``Busy``, through its ``refused`` callback). A client flooding the node so fills only its own share.
    Requests without a source share one."""

    SOURCES_REMEMBERED = 256  # when each source was last served (the oldest forgotten first)

    def __init__(self, max_queued: int = 4):
        self.max_queued = max_queued
        self._waiting: list[_Job] = []  # requests and control jobs, in arrival order
        self._background: list[_Job] = []
        self._last_served: dict[Any, int] = {}  # source → the seq of its last job started
        self._running = False
        self._seq = 0
        self._stopped = False
        self._lock = threading.Lock()
        # One worker thread; each accepted job adds one "run the next job" to it, and which job that is is decided
        # when it runs. (The pool, not a thread of our own: it finishes its job before the interpreter exits.)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lisa-inference")

    @property
    def depth(self) -> int:
        """Requests accepted and not finished (running + waiting)."""
        return len(self._waiting) + self._running

    def submit(self, job: Callable[[], Any], force: bool = False, background: bool = False, source: Any = None,
               refused: Callable[[Busy], None] | None = None) -> Future:
        """Run ``job``; its future holds what it returned. ``force``: a control job (e.g. an adapter switch), never
        refused, run after every request accepted before it. ``background``: idle-time work (pre-encoding), run only
        while no request waits, not counted in ``depth``; it should stop as soon as ``depth`` > 0. ``Busy`` when the
        queue is full and ``source`` may not displace another's request."""
        displaced = None
        with self._lock:
            if self._stopped:
                raise ServingError("the inference queue is shut down")
            self._seq += 1
            entry = _Job(job, Future(), BACKGROUND if background else CONTROL if force else source, self._seq,
                         refused)
            if background:
                self._background.append(entry)
            else:
                if not force and self.depth > self.max_queued:
                    displaced = self._make_room_for(source)
                self._waiting.append(entry)
        if displaced is not None:  # told outside the lock: its callback may do anything
            displaced.future.set_exception(self._busy())
            if displaced.refused is not None:
                displaced.refused(self._busy())
        self._pool.submit(self._run_next)
        return entry.future

    def _busy(self) -> Busy:
        return Busy(f"busy: {self.depth} request(s) in progress or queued (limit {self.max_queued} waiting); "
                    "try again later")

    def _make_room_for(self, source) -> _Job:
        """Take out and return the newest request of the source waiting with the most, if it has two more than
        ``source``; else raise ``Busy`` for the newcomer. (Under the lock.)"""
        counts = collections.Counter(j.source for j in self._waiting if j.source is not CONTROL)
        fullest, most = max(counts.items(), key=lambda kv: kv[1], default=(None, 0))
        if most < counts[source] + 2:
            raise self._busy()
        victim = next(j for j in reversed(self._waiting) if j.source == fullest)
        self._waiting.remove(victim)
        return victim

    def _next(self) -> _Job | None:
        """The control job once everything before it ran; else the request whose source was served least recently
        (ties: the oldest); else background work."""
        barrier = next((j.seq for j in self._waiting if j.source is CONTROL), None)
        if barrier is not None and self._waiting[0].seq == barrier:
            return self._waiting.pop(0)
        eligible = [j for j in self._waiting if j.source is not CONTROL and (barrier is None or j.seq < barrier)]
        if eligible:
            job = min(eligible, key=lambda j: (self._last_served.get(j.source, 0), j.seq))
            self._waiting.remove(job)
            self._last_served.pop(job.source, None)
            self._last_served[job.source] = job.seq
            while len(self._last_served) > self.SOURCES_REMEMBERED:
                del self._last_served[next(iter(self._last_served))]
            return job
        return self._background.pop(0) if self._background else None

    def _run_next(self) -> None:
        with self._lock:
            job = self._next()
            if job is None:  # (a refused request's turn)
                return
            self._running = job.source is not BACKGROUND
        try:
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.run())
                except BaseException as err:  # the job's own error, for whoever holds the future
                    job.future.set_exception(err)
        finally:
            with self._lock:
                self._running = False

    def shutdown(self) -> None:
        """Stop after the running job; what waits is dropped (its futures cancelled)."""
        with self._lock:
            self._stopped = True
            for job in self._waiting + self._background:
                job.future.cancel()
            self._waiting, self._background = [], []
        self._pool.shutdown(wait=False, cancel_futures=True)


class PreEncoder:
    """Encodes the newest camera frame while the server is idle (CLIP features and SAM image embedding), so that a
    query starts at the LLM. It runs as background work on the inference queue, yields between transformer blocks as
    soon as a request is waiting (finished stages are kept) and, when done, moves on to the newest frame. Kept: the
    last fully encoded frame and the one being encoded; both are dropped when the model's weights change (an
    adapter switch). A query takes the last encoded frame while it is the newest or at most ``max_age_s`` old
    (0: any age) — on a live stream whose frames come faster than an encode, that is how a query skips the
    encoders — and the newest frame otherwise."""

    def __init__(self, lisa: Lisa, frames: LatestFrame, queue: InferenceQueue, decode: Callable[[Any], np.ndarray],
                 max_age_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.lisa, self.frames, self.queue, self.decode = lisa, frames, queue, decode
        self.max_age_s, self._clock = max_age_s, clock
        self._lock = threading.Lock()
        self._scheduled = False
        self._done: tuple[Frame, ImageState] | None = None
        self._working: tuple[Frame, ImageState] | None = None
        self._weights = lisa.weights_version
        self.encoded = self.yielded = self.failed = 0

    def poke(self) -> None:
        """A frame arrived (or an encode ended): schedule an encode if the queue is idle and none is scheduled."""
        with self._lock:
            if self._scheduled or self.queue.depth > 0:
                return
            self._scheduled = True
        self.queue.submit(self._run, background=True)

    def ready(self) -> tuple[Frame, ImageState] | None:
        """The last fully encoded frame and its state, if a query may use it (see the class)."""
        with self._lock:
            self._drop_stale()
            if self._done is None:
                return None
            frame, state = self._done
            fresh = not self.max_age_s or self._clock() - frame.received <= self.max_age_s
            return self._done if fresh or frame is self.frames.newest() else None

    def state_for(self, frame: Frame) -> ImageState | None:
        """``frame``'s encodings (possibly partial) if it is the encoded or the in-progress frame."""
        with self._lock:
            self._drop_stale()
            for kept in (self._done, self._working):
                if kept is not None and kept[0] is frame:
                    return kept[1]
            return None

    def claim(self, frame: Frame) -> ImageState:
        """``frame``'s state for other idle-time work (a follow's re-decode): the one kept here, or a new one kept as
        the frame in progress — so what that work encodes (SAM) is not encoded again for a query, nor the reverse."""
        state = self.state_for(frame)
        if state is not None:
            return state
        state = self.lisa.image_state(self.decode(frame.raw))
        with self._lock:
            self._working = (frame, state)
        return state

    def _drop_stale(self) -> None:
        if self._weights != self.lisa.weights_version:
            self._done = self._working = None
            self._weights = self.lisa.weights_version

    def _run(self) -> None:
        finished = False
        try:
            if self.queue.depth > 0:
                return
            frame = self.frames.get()
            state = self.state_for(frame)
            if state is None:
                state = self.lisa.image_state(self.decode(frame.raw))
                with self._lock:
                    self._working = (frame, state)
            if state.encoded:
                return
            finished = self.lisa.encode(state, should_yield=lambda: self.queue.depth > 0)
            with self._lock:
                if finished and self._working is not None and self._working[1] is state:
                    self._done, self._working = self._working, None
            self.encoded += finished
            self.yielded += not finished
        except Exception:  # an undecodable frame: the query on it will say why
            self.failed += 1
        finally:
            with self._lock:
                self._scheduled = False
        if finished:  # newer frames came in meanwhile: encode the newest next
            self.poke()


@dataclass
class TurnRequest:
    """One conversational turn as a server receives it."""

    text: str
    session_id: str = ""
    image: np.ndarray | None = None  # None: the latest frame (new session) or the session's own frame
    frame_meta: Any = None
    reset: bool = False
    max_new_tokens: int = 512


def run_turn(lisa: Lisa, store: SessionStore, request: TurnRequest, latest: Callable[[], tuple[np.ndarray, Any]],
             on_token: Callable[[int, str], bool | None] | None = None) -> tuple[SessionEntry, LisaResult]:
    """Serve one turn: open/reset/continue the session, then chat. ``latest()`` gives (image, meta) of the newest
    frame. A new image on an existing session restarts its conversation on that image (LLaVA-v1 holds one image)."""
    if request.reset and request.session_id:
        store.reset(request.session_id)
    entry = None
    if request.session_id and not request.reset:
        entry = store.get(request.session_id)
        if request.image is not None:
            entry = None
    if entry is None:
        image, meta = (request.image, request.frame_meta) if request.image is not None else latest()
        entry = store.open(lisa, image, meta, request.session_id)
    store.check_turn_allowed(entry)
    return entry, entry.session.chat(request.text, request.max_new_tokens, on_token)
