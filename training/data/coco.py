"""COCO-style annotations, decoded as the COCO toolkit does (``pycocotools`` is not a dependency): polygons
rasterised as its ``rleFrPoly`` does, RLE counts uncompressed (list) or compressed (string); the parts of one
annotation are united. Also ``Interleaved``, the source-uniform item order the referring and semantic readers share.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


# --- COCO masks ------------------------------------------------------------------------------------------------

def rle_counts_from_string(text: str | bytes) -> list[int]:
    """Run lengths of COCO's compressed RLE string: each count in 5-bit groups, least significant first, one
    character (``chr(48 + group)``, bit 0x20 = more groups follow, bit 0x10 of the last = negative); from the
    fourth count on, the value is a difference to the count two places back."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE string ends inside a count")
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """H×W bool of run lengths that alternate background/foreground from the top-left pixel, column by column."""
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any() or counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {counts.sum()}, not {height}×{width} pixels")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(width, height).T


def polygon_counts(xy: Sequence[float], height: int, width: int) -> list[int]:
    """Run lengths of one polygon ``[x0, y0, x1, y1, …]`` rasterised as the COCO toolkit's ``rleFrPoly`` does, so
    masks match pycocotools pixel for pixel: the outline is traced on a 5× finer grid, each of its crossings of a
    pixel-column centre gives a run boundary at the first row below it."""
    scale = 5
    points = np.asarray(xy, np.float64).reshape(-1, 2)
    fine = np.trunc(scale * points + 0.5).astype(np.int64)  # C's (int) truncates toward zero
    fine = np.vstack([fine, fine[:1]])
    us, vs = [], []
    for (xs, ys), (xe, ye) in zip(fine[:-1].tolist(), fine[1:].tolist()):
        dx, dy = abs(xe - xs), abs(ye - ys)
        if dx == dy == 0:
            continue  # a repeated point: its neighbours share its column, so it never bounds a run
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        steps = np.arange(max(dx, dy) + 1)
        t = max(dx, dy) - steps if flip else steps
        if dx >= dy:
            us.append(xs + t)
            vs.append(np.trunc(ys + (ye - ys) / dx * t + 0.5).astype(np.int64))
        else:
            vs.append(ys + t)
            us.append(np.trunc(xs + (xe - xs) / dy * t + 0.5).astype(np.int64))
    if not us:
        return [height * width]
    u, v = np.concatenate(us), np.concatenate(vs)
    step = np.flatnonzero(u[1:] != u[:-1]) + 1
    column = (np.where(u[step] < u[step - 1], u[step], u[step] - 1) + 0.5) / scale - 0.5
    row = (np.minimum(v[step], v[step - 1]) + 0.5) / scale - 0.5
    keep = (np.floor(column) == column) & (column >= 0) & (column <= width - 1)
    row = np.ceil(np.clip(row[keep], 0, height))
    boundaries = np.sort(np.append(column[keep] * height + row, height * width).astype(np.int64))
    gaps = np.diff(boundaries, prepend=0).tolist()
    counts, j = [gaps[0]], 1
    while j < len(gaps):  # two crossings at one place cancel: their zero run joins its neighbours
        if gaps[j] > 0:
            counts.append(gaps[j])
            j += 1
        else:
            if j + 1 < len(gaps):
                counts[-1] += gaps[j + 1]
            j += 2
    return counts


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """H×W bool, the union of a COCO ``segmentation``: polygons ``[[x, y, …], …]``, or one RLE ``{"size": [h, w],
    "counts": …}`` or a list of them, counts as a list (uncompressed) or a string (compressed). A polygon of
    fewer than 3 points has no area and adds nothing. Raises ValueError for anything else."""
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    mask = np.zeros((height, width), bool)
    for part in parts:
        if isinstance(part, dict):
            rle_height, rle_width = part["size"]
            if (rle_height, rle_width) != (height, width):
                raise ValueError(f"RLE size {part['size']} differs from the image's {height}×{width}")
            counts = part["counts"]
            counts = rle_counts_from_string(counts) if isinstance(counts, (str, bytes)) else counts
        elif isinstance(part, list) and all(isinstance(c, (int, float)) for c in part):
            if len(part) < 6:
                continue
            counts = polygon_counts(part, height, width)
        else:
            raise ValueError(f"unknown segmentation part {type(part).__name__}")
        mask |= rle_decode(counts, height, width)
    return mask


def counted_mask(annotation: dict, info: dict, skipped: Counter) -> np.ndarray | None:
    """The H×W bool mask of a COCO ``annotation`` in image ``info``, or None after counting why it is unusable."""
    try:
        mask = annotation_mask(annotation["segmentation"], info["height"], info["width"])
    except (ValueError, KeyError, TypeError) as err:
        skipped[f"bad segmentation ({type(err).__name__})"] += 1
        return None
    if not mask.any():
        skipped["empty mask"] += 1
        return None
    return mask


# --- sources drawn uniformly -----------------------------------------------------------------------------------

class Interleaved(Sequence):
    """Items of several sources taken in turn (index k → source ``k % n``), each source as long as the longest, so
    a uniformly drawn index picks every source equally often — as the reference draws the source first — and an
    image of a source nearly uniformly (a shorter source's items repeat)."""

    def __init__(self, sources: Sequence[Sequence]):
        if not sources or not all(sources):
            raise ValueError("every source needs at least one item")
        self.sources = list(sources)
        self.period = max(len(s) for s in self.sources)

    def __len__(self) -> int:
        return len(self.sources) * self.period

    def __getitem__(self, k: int):
        if not 0 <= k < len(self):
            raise IndexError(k)
        source = self.sources[k % len(self.sources)]
        return source[(k // len(self.sources)) % len(source)]
