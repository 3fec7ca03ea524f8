"""ReasonSeg as published: ``*.jpg`` + LabelMe-style ``*.json`` (``text``: queries, ``is_sentence``, ``shapes`` with
"target" / "ignore" polygons), and optionally the explanatory json (``image``, ``query``, ``outputs``).

Masks are drawn like the reference: polygons largest first, outline and fill, target = 1, "ignore" = 255 (left out
of evaluation), "flag" shapes skipped. A missing or unreadable file, or a polygon outside the image, is skipped and
counted, never fatal."""
from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np

from ..collate import Sample
from ..templates import ANSWERS, EXPLANATORY_QUESTIONS, LONG_QUESTIONS, SHORT_QUESTIONS
from . import SkippingDataset

IGNORE = 255


def read_annotation(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:  # some published files are cp1252
        return json.loads(path.read_text(encoding="cp1252"))


def _sift(order: list[int], values: list, base: int, moving: int, i: int, n: int) -> None:
    """Heapsort's sift-down of ``moving`` from 1-based slot ``i`` of the heap ``order[base + 1 : base + n + 1]``."""
    j = 2 * i
    while j <= n:
        if j < n and values[order[base + j]] < values[order[base + j + 1]]:
            j += 1
        if not values[moving] < values[order[base + j]]:
            break
        order[base + i], i, j = order[base + j], j, 2 * j
    order[base + i] = moving


def _heapsort(order: list[int], values: list, first: int, last: int) -> None:
    base, n = first - 1, last - first + 1
    for i in range(n // 2, 0, -1):
        _sift(order, values, base, order[base + i], i, n)
    for n in range(n, 1, -1):
        moving, order[base + n] = order[base + n], order[base + 1]
        _sift(order, values, base, moving, 1, n - 1)


def _partition(order: list[int], values: list, first: int, last: int) -> int:
    """Median-of-three quicksort partition of ``order[first : last + 1]``; the pivot's final slot."""
    def swap(i, j):
        order[i], order[j] = order[j], order[i]

    middle = first + (last - first) // 2
    for i, j in ((middle, first), (last, middle), (middle, first)):
        if values[order[i]] < values[order[j]]:
            swap(i, j)
    pivot = values[order[middle]]
    swap(middle, last - 1)
    i, j = first, last - 1
    while True:
        i += 1
        while values[order[i]] < pivot:
            i += 1
        j -= 1
        while pivot < values[order[j]]:
            j -= 1
        if i >= j:
            break
        swap(i, j)
    swap(i, last - 1)
    return i


def argsort_numpy_124(values: list) -> list[int]:
    """Indices sorting ``values`` ascending, equal values in the order numpy 1.24's ``np.argsort`` (the reference's
    pin; its introsort) leaves them: insertion sort of up to 16 items (ties kept in order), median-of-three
    partitions above, heapsort past the depth limit. Later numpy sorts ties differently (SIMD sorts)."""
    order = list(range(len(values)))
    pending = [(0, len(order) - 1, 2 * max(len(order).bit_length() - 1, 0))]
    while pending:
        first, last, depth = pending.pop()
        if depth < 0:
            _heapsort(order, values, first, last)
            continue
        while last - first > 15:
            pivot = _partition(order, values, first, last)
            depth -= 1
            if pivot - first < last - pivot:
                pending.append((pivot + 1, last, depth))
                last = pivot - 1
            else:
                pending.append((first, pivot - 1, depth))
                first = pivot + 1
        for i in range(first + 1, last + 1):
            moving, j = order[i], i
            while j > first and values[moving] < values[order[j - 1]]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = moving
    return order


def mask_from_shapes(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """H×W uint8: 1 target, 255 ignore, 0 background, drawn as the reference draws them (OpenCV outline then fill
    of the points truncated to int32): by pixel area, largest first so smaller ones stay on top, equal areas in the
    order of the reference's ``np.argsort(areas)[::-1]`` under numpy 1.24 (up to 16 shapes: later shape first)."""
    polygons = []
    for shape in shapes:
        if shape["label"].lower() == "flag":
            continue
        points = np.array([shape["points"]], dtype=np.int32)
        area = np.zeros((height, width), np.uint8)
        cv2.polylines(area, points, True, 1, 1)
        cv2.fillPoly(area, points, 1)
        if not area.any():
            raise ValueError("polygon lies outside the image")
        polygons.append((int(area.sum()), points, IGNORE if "ignore" in shape["label"].lower() else 1))
    mask = np.zeros((height, width), np.uint8)
    for k in reversed(argsort_numpy_124([area for area, _, _ in polygons])):
        _, points, value = polygons[k]
        cv2.polylines(mask, points, True, value, 1)
        cv2.fillPoly(mask, points, value)
    return mask


class ReasonSeg(SkippingDataset):
    """Samples from a ReasonSeg folder (``train``/``val``/``test``): up to ``queries_per_sample`` of an image's
    queries, long-question templates for sentences, short ones for phrases."""

    def __init__(self, root: str | Path, queries_per_sample: int = 3, explanatory_json: str | Path | None = None,
                 explanatory: float = 0.1, seed: int = 0, require_items: bool = True):
        super().__init__()
        self.root = Path(root)
        self.items = sorted(p for p in self.root.glob("*.jpg") if p.with_suffix(".json").is_file())
        if require_items and not self.items:
            raise FileNotFoundError(f"no *.jpg with a matching *.json in {self.root}")
        self.queries_per_sample, self.explanatory, self.seed = queries_per_sample, explanatory, seed
        self.explanations = {}
        if explanatory_json:
            self.explanations = {e["image"]: e for e in json.loads(Path(explanatory_json).read_text())}

    def load_item(self, image_path: Path, index: int) -> Sample | None:
        return self.load(image_path, index)

    def load(self, image_path: Path, index: int = 0, annotation_path: Path | None = None) -> Sample | None:
        """The sample of one image (its annotation beside it, or at ``annotation_path``); None if unusable."""
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            self.skipped["unreadable image"] += 1
            return None
        try:
            annotation = read_annotation(annotation_path or image_path.with_suffix(".json"))
            mask = mask_from_shapes(annotation["shapes"], *bgr.shape[:2])
            queries, is_sentence = list(annotation["text"]), bool(annotation["is_sentence"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.skipped[f"bad annotation ({type(err).__name__})"] += 1
            return None
        if not queries or not (mask == 1).any():
            self.skipped["empty annotation"] += 1
            return None
        rng = random.Random(self.seed * 1_000_003 + index)
        queries = rng.sample(queries, min(self.queries_per_sample, len(queries)))
        explanation = self.explanations.get(image_path.name)
        choice = 0 if explanation is None else (2 if rng.random() < self.explanatory else rng.randint(0, 1))
        conversations, n_masks = [], 0
        for query in queries:
            if choice == 0:
                template = rng.choice(LONG_QUESTIONS if is_sentence else SHORT_QUESTIONS)
                question = template.format(sent=query) if is_sentence else template.format(class_name=query.lower())
                answer = rng.choice(ANSWERS)
            elif choice == 1:  # [SEG] and the explanation
                question = f"{query} {rng.choice(EXPLANATORY_QUESTIONS)}"
                answer = f"{rng.choice(ANSWERS)} {explanation['outputs']}"
            else:  # the explanation alone, no mask
                question, answer = query, explanation["outputs"]
            n_masks += "[SEG]" in answer
            conversations.append([(question, answer)])
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        masks = np.stack([(mask == 1).astype(np.float32)] * n_masks) if n_masks else np.zeros((0, *mask.shape),
                                                                                               np.float32)
        return Sample(image, conversations, masks, ignore=mask == IGNORE, source=f"reasonseg/{image_path.name}",
                      meta={"queries": queries, "is_sentence": is_sentence})
