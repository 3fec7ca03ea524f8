"""LISA's training loss: 1.0·CE (next-token, answers only) + 2.0·BCE + 0.5·DICE on the masks, with the reference's
per-mask normalisation (each term is a mean over all masks of the batch)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5


def mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[n, H, W]`` logits and 0/1 targets → ``[n]`` pixel-mean binary cross-entropy."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)


def mask_dice(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """``[n, H, W]`` → ``[n]`` soft DICE loss; sums are taken at 1/``scale`` as the reference does."""
    probs, targets = logits.sigmoid().flatten(1), targets.flatten(1)
    numerator = 2 * (probs / scale * targets).sum(-1)
    denominator = (probs / scale).sum(-1) + (targets / scale).sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B, L, V]`` logits, ``[B, L]`` labels (-100 = not supervised) → mean CE of predicting token t+1 at t."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def next_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """``next_token_ce``'s inputs → (tokens predicted right by argmax, tokens supervised)."""
    target = labels[:, 1:]
    supervised = target != -100
    right = (logits[:, :-1].argmax(-1) == target) & supervised
    return int(right.sum()), int(supervised.sum())


def lisa_loss(ce: torch.Tensor, pred_masks: list[torch.Tensor], gt_masks: list[torch.Tensor],
              weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Per image ``[n_i, H_i, W_i]`` predicted logits and targets → the weighted total and its terms."""
    n_total = sum(gt.shape[0] for gt in gt_masks)
    bce = ce.new_zeros(())
    dice = ce.new_zeros(())
    for pred, gt in zip(pred_masks, gt_masks):
        if gt.shape != pred.shape:
            raise ValueError(f"predicted masks {tuple(pred.shape)} and targets {tuple(gt.shape)} differ")
        n = gt.shape[0]
        bce = bce + mask_bce(pred, gt).sum() / (n + 1e-8) * n
        dice = dice + mask_dice(pred, gt).sum() / (n + 1e-8) * n
    bce = weights.bce * bce / (n_total + 1e-8)
    dice = weights.dice * dice / (n_total + 1e-8)
    ce = weights.ce * ce
    return {"loss": ce + bce + dice, "ce": ce, "bce": bce, "dice": dice}
