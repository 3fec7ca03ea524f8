"""ScanNet v2 2D frames (the export layout) as segmentation samples — the robot's own rooms in the same layout work.

    ROOT/scannetv2-labels.combined.tsv
    ROOT/scene0000_00/color/0.jpg          RGB frame
    ROOT/scene0000_00/label-filt/0.png     16-bit ScanNet label ids (the tsv's ``id`` column)
    ROOT/scene0000_00/instance-filt/0.png  8/16-bit instance ids (0: none)
    ROOT/scene0000_00/reason/0.json        optional: a ReasonSeg-format annotation of that colour frame

``mode="semantic"``: up to ``classes_per_sample`` classes of the frame, "Can you segment the {class}?" each;
``mode="instance"``: one object instance. Classes are named by ``label_set``: ``nyu40`` (nyu40class), ``scannet20``
(the 20 benchmark classes, others dropped) or ``scannet200`` (the tsv's ``category``). A frame with a ``reason``
json gives a reasoning sample (ReasonSeg rules) with probability ``reason_rate``. Masks smaller than
``min_pixels`` are not asked about; frames are taken every ``frame_step``. Unreadable or inconsistent files are
skipped and counted (``skipped``), never fatal.

``answers="named"`` (beyond the paper, for models whose replies must name what they segment) makes up to
``classes_per_sample`` conversations per frame instead (as the reference's semantic samples: several objects of one
image, each its own conversation): its classes asked for by name, or by use where a ``reason/<frame>.json`` or
``reason/<frame>_<k>.json`` annotation marks that object (with probability ``reason_rate``; the class is the
frame's label under the annotated mask), answered "It is the {class} [SEG]." (or, with probability
``1 - named_rate``, one of the paper's answers); with probability ``followup_rate`` a second turn asks for another
object ("And where can I sit?", "What about the bed?"). With probability ``plain_rate`` a question goes without the
"Please output segmentation mask." request, as users type it.
"""
from __future__ import annotations

import csv
import logging
import random
from pathlib import Path

import cv2
import numpy as np

from ..collate import Sample
from ..templates import (ANSWERS, FOLLOWUP_NAME_QUESTIONS, FOLLOWUP_USE_PREFIX, LONG_QUESTIONS, NAMED_ANSWERS,
                         PLAIN_NAME_QUESTIONS, SHORT_QUESTIONS)
from . import SkippingDataset
from .reasonseg import ReasonSeg, mask_from_shapes, read_annotation

log = logging.getLogger(__name__)
SCANNET20_NYU40 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39}
LABEL_SETS = ("nyu40", "scannet20", "scannet200")


def read_label_map(tsv: Path, label_set: str) -> dict[int, str]:
    """ScanNet label id → class name in ``label_set``."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {LABEL_SETS}, got {label_set!r}")
    names = {}
    with tsv.open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            try:
                label_id, nyu40 = int(row["id"]), int(row["nyu40id"] or 0)
            except (KeyError, ValueError):
                continue
            if label_set == "scannet200":
                names[label_id] = row["category"]
            elif nyu40 and (label_set == "nyu40" or nyu40 in SCANNET20_NYU40):
                names[label_id] = row["nyu40class"]
    return names


class ScanNetFrames(SkippingDataset):
    def __init__(self, root: str | Path, mode: str = "semantic", label_set: str = "scannet20", frame_step: int = 20,
                 min_pixels: int = 400, classes_per_sample: int = 3, seed: int = 0,
                 ignore_classes: tuple[str, ...] = ("wall", "floor", "ceiling"), reason_rate: float = 0.5,
                 answers: str = "paper", named_rate: float = 0.75, followup_rate: float = 0.0, plain_rate: float = 0.3):
        super().__init__()
        self.root = Path(root)
        tsv = self.root / "scannetv2-labels.combined.tsv"
        if not tsv.is_file():
            raise FileNotFoundError(f"no scannetv2-labels.combined.tsv in {self.root}")
        if mode not in ("semantic", "instance"):
            raise ValueError(f"mode must be 'semantic' or 'instance', got {mode!r}")
        if answers not in ("paper", "named"):
            raise ValueError(f"answers must be 'paper' or 'named', got {answers!r}")
        self.answers, self.named_rate, self.followup_rate, self.plain_rate = answers, named_rate, followup_rate, plain_rate
        self.names = read_label_map(tsv, label_set)
        self.mode, self.min_pixels, self.classes_per_sample, self.seed = mode, min_pixels, classes_per_sample, seed
        self.ignore_classes = set(ignore_classes)
        self.reason_rate = reason_rate
        self.reasoning = ReasonSeg(self.root, seed=seed, require_items=False)
        for scene in sorted(p for p in self.root.glob("scene*") if p.is_dir()):
            colors = sorted((scene / "color").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
            for color in colors[::frame_step]:
                if (scene / "label-filt" / f"{color.stem}.png").is_file():
                    self.items.append((scene, color.stem))
                else:
                    self.skipped["no label image"] += 1
        if not self.items:
            raise FileNotFoundError(f"no frames with color/*.jpg and label-filt/*.png under {self.root}")

    def load_item(self, frame, index: int) -> Sample | None:
        scene, stem = frame
        rng = random.Random(self.seed * 1_000_003 + index)
        if self.answers == "named":
            return self._named_sample(scene, stem, rng)
        reason = scene / "reason" / f"{stem}.json"
        if reason.is_file() and rng.random() < self.reason_rate:
            sample = self.reasoning.load(scene / "color" / f"{stem}.jpg", index, reason)
            self.skipped.update(self.reasoning.skipped)
            self.reasoning.skipped.clear()
            if sample is not None:
                return sample
        image, labels = self._read_frame(scene, stem)
        if image is None:
            return None
        if self.mode == "instance":
            targets = self._instance_targets(scene / "instance-filt" / f"{stem}.png", labels, rng)
        else:
            targets = self._semantic_targets(labels, rng)
        if not targets:
            self.skipped["no object large enough"] += 1
            return None
        conversations = [[(rng.choice(SHORT_QUESTIONS).format(class_name=name), rng.choice(ANSWERS))]
                         for name, _ in targets]
        masks = np.stack([m for _, m in targets]).astype(np.float32)
        return Sample(image, conversations, masks, source=f"scannet/{scene.name}/{stem}",
                      meta={"classes": [n for n, _ in targets]})

    def _read_frame(self, scene: Path, stem: str):
        """The colour frame resized to its label image ``[h, w, 3]`` RGB, and the labels ``[h, w]``; Nones if
        unreadable (counted)."""
        image = cv2.imread(str(scene / "color" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
        labels = cv2.imread(str(scene / "label-filt" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        if image is None or labels is None or labels.ndim != 2:
            self.skipped["unreadable image or label"] += 1
            return None, None
        h, w = labels.shape
        return cv2.cvtColor(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB), labels

    def _reasoning_targets(self, scene: Path, stem: str, labels: np.ndarray) -> dict[str, tuple[list, np.ndarray]]:
        """Class → (its use questions, its annotated mask ``[h, w]`` bool) from the frame's reason jsons."""
        targets = {}
        paths = [scene / "reason" / f"{stem}.json", *sorted((scene / "reason").glob(f"{stem}_*.json"))]
        for path in (p for p in paths if p.is_file()):
            try:
                annotation = read_annotation(path)
                height, width = annotation.get("imageHeight", labels.shape[0]), annotation.get("imageWidth",
                                                                                               labels.shape[1])
                mask = mask_from_shapes(annotation["shapes"], height, width) == 1
                queries = [q for q in annotation["text"] if q.strip()] if annotation["is_sentence"] else []
            except (OSError, ValueError, KeyError, TypeError) as err:
                self.skipped[f"bad annotation ({type(err).__name__})"] += 1
                continue
            if mask.shape != labels.shape:
                mask = cv2.resize(mask.astype(np.uint8), labels.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            values, counts = np.unique(labels[mask], return_counts=True)
            name = self.names.get(int(values[counts.argmax()])) if len(values) else None
            if name and queries:
                targets[name] = (queries, mask)
        return targets

    def _named_sample(self, scene: Path, stem: str, rng: random.Random) -> Sample | None:
        image, labels = self._read_frame(scene, stem)
        if image is None:
            return None
        masks = self._class_masks(labels)
        if not masks:
            self.skipped["no object large enough"] += 1
            return None
        uses = self._reasoning_targets(scene, stem, labels)
        conversations, names, targets = [], [], []
        for first in rng.sample(sorted(masks), min(self.classes_per_sample, len(masks))):
            others = sorted(set(masks) - {first})
            turn_names = [first] + ([rng.choice(others)] if others and rng.random() < self.followup_rate else [])
            turns = []
            for turn, name in enumerate(turn_names):
                by_use = name in uses and rng.random() < self.reason_rate
                question = self._question(rng, name, rng.choice(uses[name][0]) if by_use else None, turn > 0)
                answer = (rng.choice(NAMED_ANSWERS).format(class_name=name) if rng.random() < self.named_rate
                          else rng.choice(ANSWERS))
                turns.append((question, answer))
                targets.append(uses[name][1] if by_use else masks[name])
            conversations.append(turns)
            names += turn_names
        return Sample(image, conversations, np.stack(targets).astype(np.float32),
                      source=f"scannet/{scene.name}/{stem}", meta={"classes": names})

    def _question(self, rng: random.Random, name: str, use: str | None, followup: bool) -> str:
        """Asking for ``name`` by its ``use`` (a sentence) or by name; a follow-up turn asks shorter."""
        if followup:
            if use:
                return FOLLOWUP_USE_PREFIX + use[0].lower() + use[1:]
            return rng.choice(FOLLOWUP_NAME_QUESTIONS).format(class_name=name)
        if use:
            return use if rng.random() < self.plain_rate else rng.choice(LONG_QUESTIONS).format(sent=use)
        templates = PLAIN_NAME_QUESTIONS if rng.random() < self.plain_rate else SHORT_QUESTIONS
        return rng.choice(templates).format(class_name=name)

    def _class_masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        masks: dict[str, np.ndarray] = {}
        for label_id in np.unique(labels):
            name = self.names.get(int(label_id))
            if name and name not in self.ignore_classes:
                masks[name] = masks.get(name, np.zeros(labels.shape, bool)) | (labels == label_id)
        return {n: m for n, m in masks.items() if m.sum() >= self.min_pixels}

    def _semantic_targets(self, labels, rng):
        masks = self._class_masks(labels)
        names = rng.sample(sorted(masks), min(self.classes_per_sample, len(masks)))
        return [(name, masks[name]) for name in names]

    def _instance_targets(self, path: Path, labels, rng):
        instances = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if instances is None or instances.shape != labels.shape:
            self.skipped["missing or mismatched instance image"] += 1
            return []
        candidates = []
        for instance_id in np.unique(instances):
            if instance_id == 0:
                continue
            mask = instances == instance_id
            values, counts = np.unique(labels[mask], return_counts=True)
            name = self.names.get(int(values[counts.argmax()]))
            if name and name not in self.ignore_classes and mask.sum() >= self.min_pixels:
                candidates.append((name, mask))
        return [rng.choice(candidates)] if candidates else []
