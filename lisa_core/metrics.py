"""gIoU and cIoU exactly as the reference's validation computes them.

Per mask: pixels whose ground truth is ``IGNORE_LABEL`` are ignored; foreground intersection I and union U;
IoU = I / (U + 1e-5), plus 1.0 when U = 0 (an empty prediction of an empty target is right).
gIoU = Σ per-mask IoU / (number of masks + 1e-5); cIoU = Σ I / (Σ U + 1e-10) over the whole set.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

IGNORE_LABEL = 255


def intersection_union(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union of a binary prediction and a 0/1/255 target, both H×W."""
    pred = np.asarray(pred).astype(bool)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    valid = target != IGNORE_LABEL
    fg_pred = pred & valid
    fg_target = (target == 1) & valid
    inter = int(np.count_nonzero(fg_pred & fg_target))
    return inter, int(np.count_nonzero(fg_pred)) + int(np.count_nonzero(fg_target)) - inter


def mask_iou(inter: int, union: int) -> float:
    return inter / (union + 1e-5) + (1.0 if union == 0 else 0.0)


def first_mask_iou(masks, target: np.ndarray) -> float:
    """IoU of an answer's first mask with a 0/1 (or bool) target; 0.0 when the answer has no mask."""
    return mask_iou(*intersection_union(masks[0], target)) if len(masks) else 0.0


def named_in(text: str, names) -> list[str]:
    """The ``names`` that ``text`` mentions as whole words, in the order they appear."""
    found = [(m.start(), n) for n in names for m in [re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE)] if m]
    return [n for _, n in sorted(found)]


@dataclass
class SegmentationMeter:
    """Accumulates samples (each with one or more masks) and reports the reference's gIoU / cIoU."""

    intersection: int = 0
    union: int = 0
    iou_sum: float = 0.0
    n_masks: int = 0
    per_sample: list[dict] = field(default_factory=list)

    def update(self, preds, targets, name: str = "") -> dict:
        """Add one sample: ``preds`` and ``targets`` are sequences of H×W masks, paired in order."""
        if len(preds) != len(targets):
            raise ValueError(f"sample '{name}': {len(preds)} predicted masks for {len(targets)} targets")
        pairs = [intersection_union(p, t) for p, t in zip(preds, targets)]
        ious = [mask_iou(i, u) for i, u in pairs]
        self.intersection += sum(i for i, _ in pairs)
        self.union += sum(u for _, u in pairs)
        self.iou_sum += sum(ious)
        self.n_masks += len(pairs)
        row = {"name": name, "ious": ious, "intersection": sum(i for i, _ in pairs),
               "union": sum(u for _, u in pairs)}
        self.per_sample.append(row)
        return row

    @property
    def giou(self) -> float:
        return self.iou_sum / (self.n_masks + 1e-5)

    @property
    def ciou(self) -> float:
        return self.intersection / (self.union + 1e-10)

    def summary(self) -> dict:
        return {"giou": self.giou, "ciou": self.ciou, "n_masks": self.n_masks, "n_samples": len(self.per_sample)}
