"""Follow mode: once a ``[SEG]`` answer has found a target, keep it segmented on every new camera frame without the
language model. Tiers, cheapest first, chosen per frame:

1. ``flow``: the last mask carried to the new frame by sparse optical flow (OpenCV's pyramidal Lucas–Kanade on
   corners inside the mask, forward–backward checked, a RANSAC similarity transform; a few ms at 640×480);
2. ``redecode``: when the carried mask's confidence drops, while it touches the frame's edge (the target is
   entering or leaving the view: the flow can move a mask, not grow it), on every frame after a re-decode that
   disagreed, and at least every ``redecode_s``: SAM's mask decoder run again with the answer's stored ``[SEG]``
   prompt embedding on the new frame's SAM embedding (the image encoder once per frame, no LLM); of its mask, the
   part connected to the carried one is kept (the same target, not a look-alike elsewhere in the view);
3. ``lost``: the re-decoded mask is empty or disjoint from where the target was for ``lost_after`` consecutive
   re-decodes; a caller may then ask the question again (the node's ``follow_requery``). While lost, every frame
   is re-decoded, and the target is re-acquired when two re-decodes in a row agree on a mask of about its size.

Every update says which tier produced it and its confidence (0–1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from .engine import Lisa, LisaResult

FLOW, REDECODE, LOST = "flow", "redecode", "lost"


@dataclass(frozen=True)
class FollowConfig:
    redecode_s: float = 1.0  # re-decode at least this often even while the flow is confident (0: every frame)
    min_flow_confidence: float = 0.5  # a carried mask below this is re-decoded on the same frame
    min_agreement: float = 0.3  # IoU of a re-decoded mask with the carried one below which the re-decode failed
    lost_after: int = 3  # consecutive failed re-decodes before the target is reported lost
    max_appearance_distance: float = 0.5  # Bhattacharyya distance of colour histograms: farther is not the target
    reacquire_agreement: float = 0.5  # while lost: IoU of two re-decodes in a row that re-acquires the target
    max_corners: int = 150
    min_area: int = 30  # pixels: a smaller mask is no mask


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
        self.candidate: np.ndarray | None = None  # while lost: the last re-decode that looked like the target
        self.appearance = colour_histogram(image, self.mask)  # what the target looks like, to tell it from others
        self.known_area = int(self.mask.sum())  # its size when last seen whole (not cut by the frame's border)

    @property
    def lost(self) -> bool:
        return self.failures >= self.config.lost_after

    def update(self, image: np.ndarray) -> FollowUpdate:
        start = time.perf_counter()
        grey = _grey(image)
        update = self._reacquire(image, grey) if self.lost else self._follow(image, grey)
        self.grey = grey
        if not update.lost:
            self.mask = update.mask
            if update.confidence >= 0.5 and not touches_border(update.mask):  # seen whole: its size now
                self.known_area = update.area
        update.seconds = time.perf_counter() - start
        return update

    def _follow(self, image: np.ndarray, grey: np.ndarray) -> FollowUpdate:
        config = self.config
        carried, confidence = carry_mask(self.grey, grey, self.mask, config.max_corners)
        flow_ok = confidence >= config.min_flow_confidence and carried.sum() >= config.min_area
        if (flow_ok and not self.failures and not touches_border(carried)
                and self.clock() - self.last_redecode < config.redecode_s):
            return FollowUpdate(carried, FLOW, confidence, float("nan"), 0.0)
        near = carried if carried.sum() >= config.min_area else self.mask
        mask, score = self._decode(image)
        kept = components_touching(mask, near)
        agreement = overlap(kept, near)
        if kept.sum() >= config.min_area and agreement >= config.min_agreement:
            self.failures = 0
            return FollowUpdate(kept, REDECODE, min(1.0, agreement / 0.7), score, 0.0)
        # SAM disagrees: re-decode every frame from now on; after lost_after disagreements in a row, the target is
        # gone (the flow alone would keep following whatever texture stayed under the mask, e.g. the frame's edge)
        self.failures += 1
        if not self.lost:  # not lost yet: keep the flow's mask (or what was carried), with less trust
            return (FollowUpdate(carried, FLOW, confidence / 2, score, 0.0) if flow_ok else
                    FollowUpdate(near, REDECODE, 0.0, score, 0.0))
        self.candidate = None
        return FollowUpdate(np.zeros_like(mask), LOST, 0.0, score, 0.0)

    def _reacquire(self, image: np.ndarray, grey: np.ndarray) -> FollowUpdate:
        """While lost, every frame: re-acquired when this re-decode agrees with the last one carried here by the
        flow, on a mask of about the target's last size."""
        mask, score = self._decode(image)
        previous, self.candidate = self.candidate, mask if self._plausible(image, mask) else None
        if self.candidate is not None and previous is not None:
            moved, _ = carry_mask(self.grey, grey, previous, self.config.max_corners)
            agreement = overlap(self.candidate, moved)
            if agreement >= self.config.reacquire_agreement:
                self.failures = 0
                return FollowUpdate(self.candidate, REDECODE, min(1.0, agreement / 0.7), score, 0.0)
        return FollowUpdate(np.zeros_like(mask), LOST, 0.0, score, 0.0)

    def _decode(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The stored prompt decoded on ``image`` (its SAM embedding computed): (H×W mask, SAM's predicted IoU)."""
        self.last_redecode = self.clock()
        logits, scores = self.lisa.redecode(self.lisa.image_state(image), self.prompt)
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
    """``mask`` on grey frame ``previous`` → (its place on ``current``, confidence 0–1). Corners inside the mask
    (and a rim around it, for texture at the object's edge) are tracked with pyramidal LK, checked backwards, and a
    similarity transform (shift, rotation, scale) is fitted with RANSAC; confidence is the share of tracked corners
    that agree with it, scaled down when few corners were found."""
    h, w = mask.shape
    if mask.sum() == 0:
        return mask, 0.0
    region = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8))
    corners = cv2.goodFeaturesToTrack(previous, max_corners, 0.01, 4, mask=region, blockSize=5)
    if corners is None or len(corners) < 6:
        return mask, 0.0
    params = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
    moved, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None, **params)
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, moved, None, **params)
    good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & (np.linalg.norm((back - corners)[:, 0], axis=1) < 1.0)
    if good.sum() < 6:
        return mask, 0.0
    transform, inliers = cv2.estimateAffinePartial2D(corners[good], moved[good], method=cv2.RANSAC,
                                                     ransacReprojThreshold=2.0)
    if transform is None:
        return mask, 0.0
    carried = cv2.warpAffine(mask.astype(np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST) > 0
    agree = float(inliers.sum()) / len(corners)
    return carried, agree * min(1.0, good.sum() / 20)


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
    for frame in frames:
        yield follower.update(frame)


__all__ = ["FollowConfig", "FollowUpdate", "Follower", "carry_mask", "follow", "FLOW", "REDECODE", "LOST"]
