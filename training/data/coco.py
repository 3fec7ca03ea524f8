"""COCO-style annotations decoded by the COCO toolkit (``pycocotools``), as the reference decodes them: polygons
rasterised by its ``frPyObjects``, RLE counts uncompressed (list) or compressed (string); the parts of one annotation
are united (its ``merge``, as ``COCO.annToMask`` does). Also ``Interleaved``, the source-uniform item order the
referring and semantic readers share.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as coco_mask


# --- COCO masks ------------------------------------------------------------------------------------------------

def rle_counts_from_string(text: str | bytes) -> list[int]:
    """Run lengths of COCO's compressed RLE string: each count in 5-bit groups, least significant first, one
    character (``chr(48 + group)``, bit 0x20 = more groups follow, bit 0x10 of the last = negative); from the
    fourth count on, the value is a difference to the count two places back. Read only to check that the counts
    cover the image: pycocotools leaves the pixels after too short a list uninitialised."""
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


def checked_rle(rle: dict, height: int, width: int) -> dict:
    """``rle`` (``{"size": [h, w], "counts": list or str}``) as a compressed RLE for pycocotools, once its size is
    the image's and its counts, none negative, cover its h·w pixels exactly. Raises ValueError otherwise."""
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"RLE size {rle['size']} differs from the image's {height}×{width}")
    counts = rle["counts"]
    parsed = rle_counts_from_string(counts) if isinstance(counts, (str, bytes)) else list(counts)
    if any(c < 0 for c in parsed) or sum(parsed) != height * width:
        raise ValueError(f"RLE counts sum to {sum(parsed)}, not {height}×{width} pixels (or one is negative)")
    if isinstance(counts, (str, bytes)):
        return {"size": [height, width], "counts": counts}
    return coco_mask.frPyObjects({"size": [height, width], "counts": parsed}, height, width)


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """H×W bool of run lengths that alternate background/foreground from the top-left pixel, column by column."""
    return coco_mask.decode(checked_rle({"size": [height, width], "counts": list(counts)}, height, width)) > 0


def polygon_counts(xy: Sequence[float], height: int, width: int) -> list[int]:
    """Run lengths of one polygon ``[x0, y0, x1, y1, …]`` as pycocotools rasterises it."""
    return rle_counts_from_string(coco_mask.frPyObjects([list(xy)], height, width)[0]["counts"])


def annotation_rle(segmentation, height: int, width: int) -> dict | None:
    """The compressed RLE of a COCO ``segmentation`` as ``COCO.annToRLE`` gives it: polygons ``[[x, y, …], …]``
    through ``frPyObjects`` (a trailing odd coordinate is dropped, a first polygon of 4 numbers is refused as
    pycocotools takes it for a box), one RLE ``{"size": [h, w], "counts": …}`` or a list of them; the parts
    merged. None for no part at all. Raises ValueError for anything pycocotools refuses or an RLE that does not
    fit the image."""
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    if not parts:
        return None
    if all(isinstance(part, dict) for part in parts):
        rles = [checked_rle(part, height, width) for part in parts]
    else:
        try:
            rles = coco_mask.frPyObjects(parts, height, width)
        except Exception as err:  # pycocotools raises bare Exception, TypeError, IndexError…
            raise ValueError(f"unknown segmentation, pycocotools refuses it ({type(err).__name__}: {err})") from err
    return coco_mask.merge(rles)


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """H×W bool, the union of a COCO ``segmentation`` (see ``annotation_rle``; no part: all False). Raises
    ValueError for a segmentation pycocotools refuses or an RLE that does not fit the image."""
    rle = annotation_rle(segmentation, height, width)
    return np.zeros((height, width), bool) if rle is None else coco_mask.decode(rle) > 0


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
