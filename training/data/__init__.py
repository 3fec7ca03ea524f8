"""Training data: one module per source format, each yielding ``training.collate.Sample``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter


def describe_skipped(skipped: Counter) -> str:
    """``Counter(reason → n)`` → "3 × unreadable image, 1 × empty mask" (or "none")."""
    return ", ".join(f"{n} × {why}" for why, n in skipped.items()) or "none"


class SkippingDataset(ABC):
    """Items that may turn out unusable (missing file, unreadable image, bad annotation): ``load_item`` returns None
    for those after counting why in ``skipped``, and indexing moves on to the next usable item instead of failing."""

    def __init__(self):
        self.items: list = []
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        return describe_skipped(self.skipped)

    @abstractmethod
    def load_item(self, item, index: int):
        """The sample of ``item`` (drawn with randomness seeded by ``index``), or None when it is unusable."""

    def __getitem__(self, index: int):
        for attempt in range(len(self.items)):
            sample = self.load_item(self.items[(index + attempt) % len(self.items)], index)
            if sample is not None:
                return sample
        raise RuntimeError(f"no usable sample in {type(self).__name__} (skipped: {self.summary()})")
