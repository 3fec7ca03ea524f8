"""Moving-camera sequences over a synthetic room, with per-frame ground truth: what follow mode is measured on.

A room is drawn twice as large as a frame; a virtual camera looks at part of it through a similarity transform that
changes from frame to frame: it starts on the target, pans away until the target has left the view (past the room's
edge if need be) and stays there a while, comes back, then approaches it while rolling a little. Halfway through the first pass a grey bar (someone walking by) crosses
the target. Each frame's ground truth is the target instance's mask seen through the same transform, minus what
the bar hides. With ``look_alike``, the room holds a second object of the target's class (a distractor a follower must
not jump to); ``seq.other[i]`` is its visible mask.

    seq = make_sequence(room_seed(13, 0), "sink")
    seq.frames[i]   H×W×3 uint8;  seq.truth[i]  H×W bool (empty while the target is out of view)
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

from .rooms import LABELS, Room, draw_room


@dataclass
class Sequence:
    target: str
    frames: list[np.ndarray]
    truth: list[np.ndarray]
    phases: list[str]  # per frame: "on" | "away" | "back" | "approach"
    room: Room
    whole: list[np.ndarray] = None  # per frame: the target in view including what the bar hides (amodal)
    other: list[np.ndarray] = None  # per frame: the look-alike's visible mask (empty without one)

    @property
    def visible(self) -> list[bool]:
        return [t.sum() >= 30 for t in self.truth]


def _camera(centre: tuple[float, float], zoom: float, angle_deg: float, size: tuple[int, int]) -> np.ndarray:
    """The 2×3 transform from room pixels to a ``size`` (h, w) frame looking at ``centre`` (x, y) with ``zoom``
    (frame pixels per room pixel) and roll ``angle_deg``."""
    h, w = size
    m = cv2.getRotationMatrix2D(centre, angle_deg, zoom)
    m[:, 2] += (w / 2 - centre[0], h / 2 - centre[1])
    return m


def _path(start: tuple[float, float], away_x: float, zoom: float, frames: int):
    """Per frame: (centre, zoom, roll, phase). On the target, drifting; pan to ``away_x`` (out of view) and hold;
    pan back; approach to 1.6× the zoom, rolling up to 6°."""
    quarter = frames // 4
    out = []
    for i in range(frames):
        x, z, roll = start[0], zoom, 0.0
        if i < quarter:
            phase = "on"
            x = start[0] + 0.15 * (away_x - start[0]) * np.sin(np.pi * i / quarter)
        elif i < 2 * quarter:
            phase, t = "away", min(1.0, 2 * (i - quarter) / quarter)
            x = start[0] + (away_x - start[0]) * np.sin(np.pi / 2 * t)
        elif i < 3 * quarter:
            phase, t = "back", (i - 2 * quarter) / quarter
            x = away_x + (start[0] - away_x) * np.sin(np.pi / 2 * t)
        else:
            phase, t = "approach", (i - 3 * quarter) / max(1, frames - 3 * quarter - 1)
            z, roll = zoom * (1.0 + 0.6 * t), 6.0 * np.sin(np.pi * t)
        out.append(((float(x), float(start[1])), z, roll, phase))
    return out


def make_sequence(rng: random.Random, target: str, frames: int = 80, size: tuple[int, int] = (192, 256),
                  zoom: float = 0.7, look_alike: bool = False) -> Sequence:
    """A moving-camera sequence of ``frames`` frames of ``size`` (h, w) around ``target`` (a class of
    ``rooms.TARGETS``) in a room drawn at twice the frame size, seen at ``zoom`` frame pixels per room pixel (0.7:
    things 1.4× as large as in a training room, 70 % of the room in view). ``look_alike``: a second ``target`` in
    the room (the smaller of the two is the look-alike)."""
    h, w = size
    wanted = 2 if look_alike else 1
    for _ in range(50):
        room = draw_room(rng, 2 * h, 2 * w, include=(target,), twice=(target,) if look_alike else ())
        label = room.labels == LABELS.index(target)
        ids = [i for i in np.unique(room.instances[label]) if i and ((room.instances == i) & label).sum() >= 60]
        if len(ids) >= wanted:
            break
    else:
        raise RuntimeError(f"no room with {wanted} visible {target}(s) in 50 tries")
    ids.sort(key=lambda i: ((room.instances == i) & label).sum(), reverse=True)
    mask = (room.instances == ids[0]) & label
    other = (room.instances == ids[1]) & label if look_alike else np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    start = (float(xs.mean()), float(ys.mean()))
    bar_width = max(6, int(0.6 * zoom * (xs.max() - xs.min())))
    half_view = w / (2 * zoom)  # room pixels from the view's centre to its side
    away_x = xs.max() + half_view + 12 if start[0] < w else xs.min() - half_view - 12  # towards the far side
    seq = Sequence(target, [], [], [], room, [], [])
    for i, (centre, z, roll, phase) in enumerate(_path(start, away_x, zoom, frames)):
        m = _camera(centre, z, roll, size)
        # past the room's edge the border is smeared, not mirrored: a mirror would show a second, untruthed target
        frame = cv2.warpAffine(room.image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        truth = cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0
        seen_other = cv2.warpAffine(other.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0
        seq.whole.append(truth.copy())
        if frames // 8 <= i < frames // 4:  # someone walks past the target
            t = (i - frames // 8) / max(1, frames // 8)
            x0 = int(w / 2 - 1.5 * bar_width + 3 * bar_width * t)
            bar = np.zeros((h, w), bool)
            bar[:, max(0, x0): max(0, x0 + bar_width // 2)] = True
            frame = frame.copy()
            frame[bar] = (70, 70, 78)
            truth &= ~bar
            seen_other &= ~bar
        seq.frames.append(np.ascontiguousarray(frame))
        seq.truth.append(truth)
        seq.other.append(seen_other)
        seq.phases.append(phase)
    return seq
