"""Follow mode: once a ``[SEG]`` answer has found a target, keep it segmented on every new camera frame without the
language model. Tiers, cheapest first, chosen per frame:

1. ``flow``: the last mask carried to the new frame by sparse optical flow (OpenCV's pyramidal Lucas–Kanade on
   corners inside the mask, forward–backward checked, a RANSAC similarity transform; a few ms at 640×480). At the
   frame's edge, where the flow can move a mask but not grow it, the mask is the target as last seen whole carried
   by the motion (the target's own, or the camera's: the same fit over the whole frame): the part coming into view
   appears, the part leaving goes;
2. ``redecode``: when the carried mask's confidence drops, on every frame after a re-decode that disagreed or saw
   only part of the target (something in front of it), and at least every ``redecode_s``: SAM's mask decoder run
   again with the answer's stored ``[SEG]`` prompt embedding on the new frame's SAM embedding (the image encoder once
   per frame, no LLM); of its mask, the parts connected to the carried one or to the target as last seen whole are
   kept (the same target, both sides of whatever is in front of it, not a look-alike elsewhere in the view);
3. ``lost``: at once when the motion carries the whole target out of the view — it is then moved with the camera
   out there, and followed again (tier 1) when the camera brings it back into view, without SAM; or when the
   re-decoded mask is empty, disjoint from where the target was or a speck far smaller than it for ``lost_after``
   consecutive re-decodes (or at once when the target was at the frame's edge and SAM sees nothing of it there). A
   caller may then ask the question again (the node's ``follow_requery``). While lost and not known to be out of
   view, every frame is re-decoded, and the target is re-acquired on a mask of about its size whose colours look
   like it.

Every update says which tier produced it and its confidence (0–1). ``FollowRun`` runs a follow inside a server (the
ROS node): updates as idle-time work on its inference queue, frames dropped rather than queued, re-queries.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .engine import ImageState, Lisa, LisaResult, Session, Yielded
from .serving import Cancelled, Frame, InferenceQueue, LatestFrame, ServingError

FLOW, REDECODE, LOST = "flow", "redecode", "lost"
ANSWER = "answer"  # an update that is the language model's answer (the first one, and each re-query's)
DURATION_REACHED = "duration reached"


@dataclass(frozen=True)
class FollowConfig:
    redecode_s: float = 1.0  # re-decode at least this often even while the flow is confident (0: every frame)
    min_flow_confidence: float = 0.5  # a carried mask below this is re-decoded on the same frame
    min_agreement: float = 0.3  # IoU of a re-decoded mask with the carried one below which the re-decode failed
    lost_after: int = 3  # consecutive failed re-decodes before the target is reported lost
    max_appearance_distance: float = 0.5  # Bhattacharyya distance of colour histograms: farther is not the target
    max_corners: int = 150
    min_area: int = 30  # pixels: a smaller mask is no mask
    partial_share: float = 0.75  # a re-decode seeing less than this share of the target's known size sees part of it
    occluded_inside: float = 0.8  # ... and with this share of it inside where it was whole: the rest is hidden
    # compute per frame held at most this share of what the followed answer cost (asking again on every frame); a
    # re-decode waits (the flow carries on) until the budget saved since holds one. 0: every re-decode wanted runs.
    # A tenth: on the held-out sequences 0.02 IoU below asking again on every frame (bench/README.md)
    budget_share: float = 0.1
    budget_burst: float = 3.0  # the budget saves up to this many re-decodes (for the frames leaving / entering)


@dataclass
class FollowUpdate:
    """One frame's answer. ``mask``: H×W bool (empty when lost); ``confidence``: 0–1, from geometry (how well the
    flow's corners agree, how well a re-decode agrees with where the target was); ``score``: SAM's predicted IoU of
    a re-decode (NaN for flow) — reported, not trusted: LISA's fine-tuning never supervises that head (the
    embedded model's reads −0.02 on every mask); ``seconds``: the compute this update cost."""

    mask: np.ndarray
    tier: str
    confidence: float
    score: float
    seconds: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def lost(self) -> bool:
        return self.tier == LOST


class Follower:
    """Follows mask ``index`` of ``answer`` (a ``LisaResult`` with ``seg_prompts``, computed on ``image``) on later
    frames: ``update(frame)`` per new H×W×3 uint8 RGB frame, in order. Holds one prompt embedding, the last frame in
    grey and the last mask: its memory does not grow."""

    def __init__(self, lisa: Lisa, answer: LisaResult, image: np.ndarray, index: int = 0,
                 config: FollowConfig = FollowConfig(), clock=time.monotonic):
        if answer.seg_prompts is None or not 0 <= index < len(answer.masks):
            raise ValueError(f"nothing to follow: the answer has {len(answer.masks)} mask(s) and mask {index} was "
                             "asked for (an answer with [SEG] is needed)")
        self.lisa, self.config, self.clock = lisa, config, clock
        self.prompt = answer.seg_prompts[index: index + 1].detach()
        self.mask = answer.masks[index].copy()
        self.grey = _grey(image)
        self.last_redecode = clock()
        self.failures = 0
        self.appearance = colour_histogram(image, self.mask)  # what the target looks like, to tell it from others
        self._set_whole(self.mask)  # the target when last seen whole (not hidden in part), moved with the flow
        self.known_area = int(self.mask.sum())  # its size then, scaled with the flow's zoom
        self.out_of_view = False  # lost because the motion carried it out of the view, where it is still tracked
        self.partial_since: float | None = None  # when re-decodes began to see less of it than its known size
        self.weights_version = lisa.weights_version  # the prompt belongs to these weights
        answer_cost = (answer.timings or {}).get("total", 0.0)
        self.allowance = config.budget_share * answer_cost  # seconds of compute each frame adds to the budget
        self.redecode_cost = answer_cost / 2  # a guess (SAM without the language model) until one is measured
        self.budget = config.budget_burst * self.redecode_cost
        self.unconfirmed = 0  # frames in a row on which neither the flow nor SAM vouched for the mask
        self._state: ImageState | None = None
        self._should_yield: Callable[[], bool] | None = None
        self.yielded = 0  # re-decodes given up because a request came while SAM encoded the frame

    @property
    def lost(self) -> bool:
        return self.failures >= self.config.lost_after

    def update(self, image: np.ndarray, state: ImageState | None = None,
               should_yield: Callable[[], bool] | None = None) -> FollowUpdate:
        """``state``: ``image``'s encodings, if a server keeps them (a re-decode then reuses or leaves its SAM
        embedding there). ``should_yield()``: other work is waiting (a server's queue); a re-decode whose SAM encoding
        it interrupts is given up for this frame, which the flow carries (as when the budget holds no re-decode)."""
        start = time.perf_counter()
        grey = _grey(image)
        self._state, self._should_yield = state, should_yield
        self.budget = min(self.budget + self.allowance, self.config.budget_burst * self.redecode_cost)
        update = self._reacquire(image, grey) if self.lost else self._follow(image, grey)
        self.grey = grey
        if not update.lost:
            self._remember_whole(update)
            self.mask = update.mask
        update.seconds = time.perf_counter() - start
        self.budget -= update.seconds
        return update

    def _may_redecode(self) -> bool:
        return not self.allowance or self.budget >= self.redecode_cost

    def _remember_whole(self, update: FollowUpdate) -> None:
        """A confident re-decode off the frame's border that sees at least ``partial_share`` of the target's known
        size shows it whole: remembered. One that sees less (something in front of it) makes the next frames re-decode
        too, as the flow can move a mask but not grow it back; a smaller size that lasts ``redecode_s`` is taken as
        the target's new size."""
        if update.tier != REDECODE or touches_border(update.mask):
            return
        now = self.clock()
        if update.area < self.config.partial_share * self.known_area:
            self.partial_since = now if self.partial_since is None else self.partial_since
            if now - self.partial_since < self.config.redecode_s:
                return
        elif update.confidence < 0.5:
            return
        self._set_whole(update.mask)
        self.known_area, self.partial_since = update.area, None

    def _set_whole(self, mask: np.ndarray) -> None:
        """The target seen whole on this frame; ``_move_whole`` carries it on, out of the view and back included."""
        self.whole_seen, self.whole_to_now, self.whole = mask, np.eye(2, 3), mask

    def _move_whole(self, transform: np.ndarray) -> None:
        """The target as last seen whole moved by this frame's motion (warped from where it was seen, through
        every motion since, so a part carried out of the view comes back with the camera)."""
        self.whole_to_now = then(self.whole_to_now, transform)
        self.whole = warp(self.whole_seen, self.whole_to_now)
        self.known_area = max(1, round(self.known_area * abs(np.linalg.det(transform[:, :2]))))

    def _camera(self, grey: np.ndarray) -> tuple[np.ndarray | None, float]:
        """The camera's motion since the last frame, or (None, 0) when too unsure to move the target by."""
        transform, confidence = camera_motion(self.grey, grey, self.config.max_corners)
        return (transform, confidence) if confidence >= self.config.min_flow_confidence else (None, 0.0)

    def _follow(self, image: np.ndarray, grey: np.ndarray) -> FollowUpdate:
        config = self.config
        transform, confidence = flow_transform(self.grey, grey, self.mask, config.max_corners)
        carried = warp(self.mask, transform)
        flow_ok = confidence >= config.min_flow_confidence and carried.sum() >= config.min_area
        motion, motion_confidence = (transform, confidence) if flow_ok else self._camera(grey)
        if motion is not None:
            self._move_whole(motion)
        at_edge = touches_border(carried) or touches_border(self.mask)  # entering / leaving the view
        # the flow can move a mask, not grow it: at the edge, the target as last seen whole (off the edge: all of
        # it), where the motion puts it, shows the part coming into view, and drops the part gone out of it
        projected = (at_edge and motion is not None and self.partial_since is None
                     and not touches_border(self.whole_seen))
        if projected:
            carried, confidence, flow_ok = self.whole, motion_confidence, True
            if carried.sum() < config.min_area:
                return self._left_view()
            if carried.sum() < self.known_area / 4:  # too little of it in view for a re-decode to tell
                return FollowUpdate(carried, FLOW, confidence, float("nan"), 0.0)
        if ((projected or flow_ok and not at_edge) and not self.failures and self.partial_since is None
                and self.clock() - self.last_redecode < config.redecode_s):
            self.unconfirmed = 0
            return FollowUpdate(carried, FLOW, confidence, float("nan"), 0.0)
        decoded = self._decode(image)
        if decoded is None:
            if not flow_ok and motion is not None:  # the target's own corners failed: the camera's motion carries it
                carried, confidence, flow_ok = warp(self.mask, motion), motion_confidence, True
            return self._flow_only(carried, confidence, flow_ok)
        mask, score = decoded
        near = carried if carried.sum() >= config.min_area else self.mask
        kept = components_touching(mask, near | self.whole)  # both sides of whatever is in front of it
        agreement = overlap(kept, near)
        if self._could_be_it(kept) and (agreement >= config.min_agreement or self._part_of_whole(kept)):
            self.failures = self.unconfirmed = 0
            return FollowUpdate(kept, REDECODE, min(1.0, agreement / 0.7), score, 0.0)
        # SAM disagrees: re-decode every frame from now on; after lost_after disagreements in a row, the target is
        # gone (the flow alone would keep following whatever texture stayed under the mask, e.g. the frame's edge)
        self.failures += 1
        if touches_border(self.mask) and (not flow_ok or carried.sum() < self.known_area / 4):
            # it was at the frame's edge, the flow carries (almost) nothing of it into view and SAM sees nothing of
            # it there: it left the view. Waiting for more re-decodes would only delay ``lost`` (by frames, or by
            # more when updates fall behind the camera)
            self.failures = config.lost_after
        if not self.lost:  # not lost yet: keep the flow's mask (or what was carried), with less trust
            return (FollowUpdate(carried, FLOW, confidence / 2, score, 0.0) if flow_ok else
                    FollowUpdate(near, REDECODE, 0.0, score, 0.0))
        return FollowUpdate(np.zeros_like(mask), LOST, 0.0, score, 0.0)

    def _left_view(self) -> FollowUpdate:
        """The motion carried the whole target out of the view: lost at once (an empty mask, not the few pixels
        of it the motion may leave at the edge), and tracked out there."""
        self.failures, self.out_of_view = self.config.lost_after, True
        return FollowUpdate(np.zeros_like(self.mask), LOST, 0.0, float("nan"), 0.0)

    def _flow_only(self, carried: np.ndarray, confidence: float, flow_ok: bool) -> FollowUpdate:
        """A re-decode was wanted but none ran (no budget, or a request came): the flow's mask. Lost when the flow carried it out of the
        frame, or when nothing vouched for it ``lost_after`` frames in a row."""
        self.unconfirmed = 0 if flow_ok else self.unconfirmed + 1
        if carried.sum() < self.config.min_area or self.unconfirmed >= self.config.lost_after:
            self.failures = self.config.lost_after
            return FollowUpdate(np.zeros_like(carried), LOST, 0.0, float("nan"), 0.0)
        return FollowUpdate(carried, FLOW, confidence, float("nan"), 0.0)

    def _could_be_it(self, kept: np.ndarray) -> bool:
        """Large enough to be the target: a quarter of its known size, or any size at the frame's edge (entering or
        leaving the view). A speck off the edge is something else SAM lit up, e.g. once the target has left."""
        area = int(kept.sum())
        return area >= self.config.min_area and (area >= self.known_area / 4 or touches_border(kept))

    def _part_of_whole(self, kept: np.ndarray) -> bool:
        """Is ``kept`` a part of the target as last seen whole (someone in front of the rest): smaller than it, and
        ``occluded_inside`` of it inside it? Not at the frame's border, where seeing part of it is the target leaving
        or entering the view."""
        area = int(kept.sum())
        if touches_border(kept):
            return False
        inside = float((kept & _dilate(self.whole)).sum()) / max(1, area)
        return inside >= self.config.occluded_inside and area < self.config.partial_share * self.known_area

    def _reacquire(self, image: np.ndarray, grey: np.ndarray) -> FollowUpdate:
        """While lost: a target that left the view is moved with the camera until it comes back into view, where it
        is followed again (no re-decode while it is out; the next re-decode is due at once and checks it). Otherwise,
        or once the camera's motion is unsure, every frame is re-decoded, and the target re-acquired on one that looks
        like it (``_plausible``). One is enough: waiting for a second that agrees cost a frame on every return and,
        on the held-out sequences, kept out no wrong one."""
        if self.out_of_view:
            motion, confidence = self._camera(grey)
            if motion is None:
                self.out_of_view = False  # where it went is no longer known: SAM looks for it from now on
            else:
                self._move_whole(motion)
                if self.whole.sum() < self.config.min_area:
                    return self._left_view()
                self.out_of_view, self.failures, self.unconfirmed = False, 0, 0
                return FollowUpdate(self.whole, FLOW, confidence, float("nan"), 0.0)
        decoded = self._decode(image)
        if decoded is None:
            return FollowUpdate(np.zeros_like(self.mask), LOST, 0.0, float("nan"), 0.0)
        mask, score = decoded
        if self._plausible(image, mask):
            self.failures = self.unconfirmed = 0
            self._set_whole(mask)  # where it is now (its known size stays: it may be entering the view)
            return FollowUpdate(mask, REDECODE, 0.5, score, 0.0)
        return FollowUpdate(np.zeros_like(mask), LOST, 0.0, score, 0.0)

    def _decode(self, image: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The stored prompt decoded on ``image`` (its SAM embedding computed): (H×W mask, SAM's predicted IoU); None
        when this frame gets no re-decode: the budget holds none, or a waiting request interrupted SAM (counted)."""
        if not self._may_redecode():
            return None
        start = time.perf_counter()
        state = self._state if self._state is not None else self.lisa.image_state(image)
        try:
            logits, scores = self.lisa.redecode(state, self.prompt, should_yield=self._should_yield)
        except Yielded:
            self.yielded += 1
            return None
        self.last_redecode, self.redecode_cost = self.clock(), time.perf_counter() - start
        return logits[0].cpu().numpy() > 0, float(scores[0])

    def _plausible(self, image: np.ndarray, mask: np.ndarray) -> bool:
        """A mask of roughly the size the target last had when seen whole (a quarter to four times) whose colours
        look like it."""
        area, known = int(mask.sum()), max(1, self.known_area)
        if area < self.config.min_area or not known / 4 <= area <= known * 4:
            return False
        distance = cv2.compareHist(self.appearance, colour_histogram(image, mask), cv2.HISTCMP_BHATTACHARYYA)
        return distance <= self.config.max_appearance_distance


def colour_histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hue × saturation histogram (16 × 8) of the masked pixels, normalised."""
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], mask.astype(np.uint8), [16, 8], [0, 180, 0, 256])
    return cv2.normalize(hist, hist, norm_type=cv2.NORM_L1)


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def carry_mask(previous: np.ndarray, current: np.ndarray, mask: np.ndarray, max_corners: int = 150,
               ) -> tuple[np.ndarray, float]:
    """``mask`` on grey frame ``previous`` → (its place on ``current``, confidence 0–1); see ``flow_transform``."""
    transform, confidence = flow_transform(previous, current, mask, max_corners)
    return warp(mask, transform), confidence


def flow_transform(previous: np.ndarray, current: np.ndarray, mask: np.ndarray, max_corners: int = 150,
                   ) -> tuple[np.ndarray | None, float]:
    """How the part of grey frame ``previous`` under ``mask`` moved on ``current``: (2×3 similarity transform or
    None, confidence 0–1). Corners inside the mask (and a rim around it, for texture at the object's edge) are
    tracked (``track_similarity``); confidence is the share of them that agree with the transform, scaled down when
    few were tracked."""
    if mask.sum() == 0:
        return None, 0.0
    region = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8))
    x, y, w, h = cv2.boundingRect(region)  # corners searched there only: a tenth of the cost on a whole frame
    corners = cv2.goodFeaturesToTrack(previous[y:y + h, x:x + w], max_corners, 0.01, 4, mask=region[y:y + h, x:x + w],
                                      blockSize=5)
    if corners is not None:
        corners += np.float32([x, y])
    transform, agreeing, tracked = track_similarity(previous, current, corners)
    return transform, agreeing / len(corners) * min(1.0, tracked / 20) if transform is not None else 0.0


def camera_motion(previous: np.ndarray, current: np.ndarray, max_corners: int = 150,
                  ) -> tuple[np.ndarray | None, float]:
    """How the whole view moved from grey frame ``previous`` to ``current`` (the camera's own motion, where most of
    what it sees stands still): a similarity transform fitted to corners over the whole frame, halved until it is at
    most 160 px wide (2 ms at 640×480). Things moving on their own (someone walking by) are RANSAC's outliers, so the
    confidence is not their share but whether enough corners agree: 1 from 20 on."""
    scale = 1
    while previous.shape[1] > 160:
        previous, current, scale = cv2.pyrDown(previous), cv2.pyrDown(current), 2 * scale
    corners = cv2.goodFeaturesToTrack(previous, max_corners, 0.01, 4, blockSize=5)
    transform, agreeing, _ = track_similarity(previous, current, corners)
    if transform is None:
        return None, 0.0
    transform = transform.copy()
    transform[:, 2] *= scale  # back to full-resolution pixels (the rotation and scale part is the same)
    return transform, min(1.0, agreeing / 20)


def track_similarity(previous: np.ndarray, current: np.ndarray, corners: np.ndarray | None,
                     ) -> tuple[np.ndarray | None, int, int]:
    """``corners`` of grey frame ``previous`` tracked on ``current`` with pyramidal LK, checked backwards, and a
    similarity transform (shift, rotation, scale) fitted with RANSAC: (2×3 transform or None, how many corners
    agree with it, how many were tracked)."""
    if corners is None or len(corners) < 6:
        return None, 0, 0
    params = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
    moved, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None, **params)
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, moved, None, **params)
    good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & (np.linalg.norm((back - corners)[:, 0], axis=1) < 1.0)
    if good.sum() < 6:
        return None, 0, int(good.sum())
    transform, inliers = cv2.estimateAffinePartial2D(corners[good], moved[good], method=cv2.RANSAC,
                                                     ransacReprojThreshold=2.0)
    if transform is None:
        return None, 0, int(good.sum())
    return transform, int(inliers.sum()), int(good.sum())


def then(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The 2×3 transform doing ``first``, then ``second``."""
    return second[:, :2] @ first + np.hstack([np.zeros((2, 2)), second[:, 2:]])


def warp(mask: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
    """``mask`` moved by a ``flow_transform`` (unmoved when there is none)."""
    if transform is None:
        return mask
    h, w = mask.shape
    return cv2.warpAffine(mask.astype(np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST) > 0


def components_touching(mask: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that overlap ``near`` (dilated a little: the target moved since)."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8))
    if count <= 2:
        return mask if (mask & _dilate(near)).any() else np.zeros_like(mask)
    touching = np.unique(labels[_dilate(near) & mask])
    return np.isin(labels, touching[touching > 0])


def _dilate(mask: np.ndarray, pixels: int = 5) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * pixels + 1,) * 2, np.uint8)) > 0


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks, 0 when both are empty: here an empty mask never agrees with anything (not
    ``metrics.mask_iou``, whose reference convention scores two empty masks 1)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def follow(lisa: Lisa, answer: LisaResult, image: np.ndarray, frames, index: int = 0,
           config: FollowConfig = FollowConfig()):
    """Yield a ``FollowUpdate`` per frame of ``frames`` (an iterable of RGB arrays) for mask ``index`` of
    ``answer`` (asked on ``image``)."""
    follower = Follower(lisa, answer, image, index, config)
    return (follower.update(frame) for frame in frames)


@dataclass(frozen=True)
class FollowOptions:
    """How a server runs one follow."""

    rate_hz: float = 15.0  # most updates per second (0: one per new camera frame)
    duration_s: float = 0.0  # end after this long (0: until stopped)
    # while lost, ask the question again at most this often (None: never); not while the target is known to be out
    # of the view (carried there by the camera's motion)
    requery_every_s: float | None = None


class FollowRun:
    """One follow inside a server. Each new camera frame ``poke``s it; an update (``Follower.update`` on the newest
    frame, at most ``rate_hz``) then runs as idle-time work on the server's ``InferenceQueue``, so every request
    waiting goes first. One update at a time: frames that arrive while one is pending or running are dropped, never
    queued (``frames_skipped`` counts them). It ends once, with a reason given to ``on_end``: ``stop(reason)``, the
    duration reached, a switch of the model's weights (the stored prompt belongs to the old ones) or an error.
    While the target is lost, ``requery(frame, state)`` (given: the language model asked again on that frame; ``Cancelled``
    when a request arrives meanwhile) may return a new answer, whose first mask is followed from then on."""

    def __init__(self, follower: Follower, queue: InferenceQueue, frames: LatestFrame,
                 frame_state: Callable[[Frame], ImageState], on_update: Callable[[FollowUpdate, Frame], None],
                 on_end: Callable[[str], None], options: FollowOptions = FollowOptions(),
                 requery: Callable[[Frame, ImageState], LisaResult] | None = None, clock=time.monotonic):
        self.follower, self.queue, self.frames, self.frame_state = follower, queue, frames, frame_state
        self.on_update, self.on_end, self.options, self.requery, self.clock = on_update, on_end, options, requery, clock
        self.started = self._last_requery = clock()
        self.updates = self.lost_updates = self.requeries = self.frames_skipped = self.frames_unusable = 0
        self.last: FollowUpdate | None = None
        self.requery_error = ""
        self.ended: str | None = None
        self._lock = threading.Lock()
        self._scheduled = False
        self._last_frame: Frame | None = frames.newest()  # the answer's frame, or older: updates start after it
        self._frames_seen = frames.received

    def poke(self) -> None:
        """A camera frame arrived: schedule an update unless one is pending, it is too soon, or nothing is new."""
        with self._lock:
            frame, last = self.frames.newest(), self._last_frame
            if self.ended or self._scheduled or frame is None or frame is last:
                return
            # by arrival, not by when updates ran (they start late behind other work): a 10 Hz camera followed at
            # 10 Hz gets every frame; 10 % slack for the camera's jitter
            if self.options.rate_hz > 0 and last is not None and (
                    frame.received - last.received < 0.9 / self.options.rate_hz):
                return
            self._scheduled = True
        try:
            self.queue.submit(self._step, background=True)
        except ServingError as err:  # the server is shutting down
            self.stop(str(err))

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.ended:
                return
            self.ended = reason
        self.on_end(reason)

    def _step(self) -> None:
        try:
            if self.check_end():
                return
            frame = self.frames.newest()
            self.frames_skipped += max(0, self.frames.received - self._frames_seen - 1)
            self._frames_seen, self._last_frame = self.frames.received, frame
            try:
                state = self.frame_state(frame)
            except Exception:  # an unusable camera frame: skipped, counted (a query on it would say why)
                self.frames_unusable += 1
                return
            update = self.follower.update(state.image, state, should_yield=lambda: self.queue.depth > 0)
            if update.lost and self.requery is not None:
                update = self._ask_again(frame, state) or update
            self.updates += 1
            self.lost_updates += update.lost
            self.last = update
            if not self.ended:
                self.on_update(update, frame)
        except Exception as err:  # never let one follow take the server down
            self.stop(f"follow failed: {err}")
        finally:
            with self._lock:
                self._scheduled = False
        self.poke()  # a frame that came during the update is taken now, not at the next frame

    def check_end(self) -> bool:
        """End the follow if it is due (duration, weights switched); True once it has ended. Also for a server's
        timer: a follow whose camera went quiet still ends on time."""
        if self.ended:
            return True
        if self.options.duration_s and self.clock() - self.started >= self.options.duration_s:
            self.stop(DURATION_REACHED)
        elif self.follower.lisa.weights_version != self.follower.weights_version:
            self.stop("the model's weights switched (adapter changed): the followed answer belongs to the old ones")
        return self.ended is not None

    def _ask_again(self, frame: Frame, state: ImageState) -> FollowUpdate | None:
        """While lost, at most every ``requery_every_s``: a new answer on this frame → its first mask, followed."""
        every = self.options.requery_every_s
        if every is None or self.clock() - self._last_requery < every or self.follower.out_of_view:
            return None  # (out of view: the camera's motion will bring it back; asked now, another would answer)
        self._last_requery = self.clock()
        start = time.perf_counter()
        try:
            answer = self.requery(frame, state)
        except Cancelled:  # a request came: it goes first, the re-query is tried again later
            self._last_requery = float("-inf")
            return None
        except (ServingError, ValueError) as err:
            self.requery_error = str(err)
            return None
        self.requeries += 1
        if not answer.masks:
            self.requery_error = f"the question asked again got no mask: '{answer.text}'"
            return None
        old = self.follower
        self.follower = Follower(old.lisa, answer, state.image, 0, old.config, old.clock)
        self.requery_error = ""
        score = answer.scores[0] if answer.scores else float("nan")
        return FollowUpdate(answer.masks[0], ANSWER, 1.0, score, time.perf_counter() - start)


def ask_again(session: Session, question: str, state: ImageState, max_new_tokens: int = 512,
              should_yield: Callable[[], bool] = lambda: False) -> Session:
    """``question`` asked again on a new frame (``state``) after ``session``'s conversation so far, replayed (a
    LLaVA-v1 conversation holds one image, so the history moves to the new frame): the new session, whose
    ``last_result`` is the answer. ``Cancelled`` as soon as ``should_yield()`` says a request is waiting."""
    again = Session(session.lisa, state)
    for asked, answered in session.turns:
        again.add_turn(asked, answered)

    def on_token(token_id: int, text: str):
        if should_yield():
            raise Cancelled()

    again.chat(question, max_new_tokens, on_token)
    return again


__all__ = ["FollowConfig", "FollowOptions", "FollowRun", "FollowUpdate", "Follower", "ask_again", "carry_mask",
           "follow", "ANSWER", "DURATION_REACHED", "FLOW", "REDECODE", "LOST"]
