"""Semantic and part segmentation sets of the paper's recipe, in the layouts the reference reads under ROOT:

    ade20k/images/training/<id>.jpg, ade20k/annotations/training/<id>.png      values 1..150, 0 = other (ignored)
    cocostuff/train2017/<id>.png with coco/train2017/<id>.jpg                  values 0..181, 255 = unlabelled
    mapillary/config_v2.0.json ("labels"[i]["readable"]), mapillary/training/v2.0/labels/<id>.png (palette
        indices) with mapillary/training/images/<id>.jpg
    vlpart/paco/annotations/paco_lvis_v1_train.json (COCO style) with coco/<file_name>
    vlpart/pascal_part/train.json (COCO style) with vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>

One ``SemSeg`` reads any of them (``sources``); like the reference it draws a source uniformly, then an image, then
up to ``num_classes_per_sample`` of the classes present (label maps) or annotations (COCO style), each asked with a
short-question template and answered from ``ANSWERS``, one mask per class. Class names: ADE20K from
``ade20k_classes.json``, COCO-Stuff from ``cocostuff_classes.txt`` (both ship with the reference repo, under
``utils/``; pass their paths, or put them in ROOT or ROOT/utils), classes with "-" in their name (``wall-other``,
``floor-wood``…) left unlabelled; PACO-LVIS ``obj:part`` / PASCAL-Part ``obj:part`` names asked as "obj part" or
"the part of the obj" at even odds (PACO drops "_(…)" qualifiers). Pixels labelled 255 are ``ignore`` (left out of
evaluation; the training masks, as the reference's, count them as background). Missing or unreadable files, bad
or empty annotations are skipped and counted, never fatal.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..collate import Sample
from ..templates import ANSWERS, SHORT_QUESTIONS
from . import SkippingDataset
from .coco import Interleaved, counted_mask

IGNORE = 255
SOURCES = ("ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary")  # the reference's default mix


def find_class_file(path: str | Path | None, root: Path, name: str) -> Path:
    """``path`` if given, else ``root/name`` or ``root/utils/name``."""
    candidates = [Path(path)] if path else [root / name, root / "utils" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {name} at {' or '.join(map(str, candidates))} (it ships with the LISA repo's "
                            f"utils/)")


def read_cocostuff_classes(path: Path) -> list[str]:
    """The 182 names of ``cocostuff_classes.txt`` ("<id>: <name>" lines after the "0: unlabeled" header); label
    value i is class i."""
    return [line.strip().split(": ")[-1] for line in path.read_text().splitlines()[1:] if line.strip()]


def ade20k_labels(label: np.ndarray) -> np.ndarray:
    """ADE20K values 1..150 → class indices 0..149; 0 ("other") → ignore."""
    shifted = label.astype(np.int64) - 1
    shifted[(label == 0) | (label == IGNORE)] = IGNORE
    return shifted


def paco_name(category: str) -> str | tuple[str, str] | None:
    """"obj_(qualifier):part_(qualifier)" → ("obj", "part"); "obj_(qualifier)" → "obj"; else None."""
    parts = [p.split("_(")[0] for p in category.strip().split(":")]
    return parts[0] if len(parts) == 1 else tuple(parts) if len(parts) == 2 else None


def pascal_part_name(category: str) -> tuple[str, str] | None:
    parts = category.strip().split(":")
    return tuple(parts) if len(parts) == 2 else None


@dataclass
class LabelMapSource:
    """Images with label PNGs whose values index ``classes`` once ``prepare`` has run; ``IGNORE`` = unlabelled."""

    classes: list[str]
    pairs: list[tuple[Path, Path]]  # (image, label)
    prepare: Callable[[np.ndarray], np.ndarray]
    missing: int = 0


@dataclass
class CocoSource:
    """A COCO-style json: images by id, their annotations, category id → name (str or (object, part))."""

    images: dict[int, dict]
    annotations: dict[int, list[dict]]
    names: dict[int, str | tuple[str, str] | None]
    image_dir: Path
    ids: list[int]  # images with at least one annotation
    unannotated: int


def pair_labels(labels: list[Path], image_of: Callable[[Path], Path], classes, prepare) -> LabelMapSource:
    pairs = [(image_of(label), label) for label in labels]
    present = [(image, label) for image, label in pairs if image.is_file()]
    return LabelMapSource(list(classes), present, prepare, missing=len(pairs) - len(present))


def ade20k_source(root: Path, classes_path) -> LabelMapSource:
    classes = json.loads(find_class_file(classes_path, root, "ade20k_classes.json").read_text())
    images = sorted((root / "ade20k" / "images" / "training").glob("*.jpg"))
    labels_dir = root / "ade20k" / "annotations" / "training"
    pairs = [(image, labels_dir / f"{image.stem}.png") for image in images]
    present = [(image, label) for image, label in pairs if label.is_file()]
    return LabelMapSource(classes, present, ade20k_labels, missing=len(pairs) - len(present))


def cocostuff_source(root: Path, classes_path) -> LabelMapSource:
    classes = read_cocostuff_classes(find_class_file(classes_path, root, "cocostuff_classes.txt"))
    unlabelled = np.array([IGNORE if "-" in name else i for i, name in enumerate(classes)]
                          + [IGNORE] * (256 - len(classes)))

    def prepare(label: np.ndarray) -> np.ndarray:
        return unlabelled[np.clip(label, 0, 255)]

    labels = sorted((root / "cocostuff" / "train2017").glob("*.png"))
    return pair_labels(labels, lambda p: root / "coco" / "train2017" / f"{p.stem}.jpg", classes, prepare)


def mapillary_source(root: Path) -> LabelMapSource:
    config = json.loads((root / "mapillary" / "config_v2.0.json").read_text())
    classes = [label["readable"].lower() for label in config["labels"]]
    labels = sorted((root / "mapillary" / "training" / "v2.0" / "labels").glob("*.png"))
    images = root / "mapillary" / "training" / "images"
    return pair_labels(labels, lambda p: images / f"{p.stem}.jpg", classes, lambda label: label.astype(np.int64))


def coco_source(json_path: Path, image_dir: Path, name_of: Callable[[str], object]) -> CocoSource:
    data = json.loads(json_path.read_text())
    annotations: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        annotations.setdefault(ann["image_id"], []).append(ann)
    images = {image["id"]: image for image in data["images"]}
    names = {category["id"]: name_of(category["name"]) for category in data["categories"]}
    ids = [image_id for image_id in images if annotations.get(image_id)]
    return CocoSource(images, annotations, names, image_dir, ids, unannotated=len(images) - len(ids))


class SemSeg(SkippingDataset):
    """Samples of the ``sources`` (names from ``SOURCES``, or "a||b" as the reference spells them), each drawn
    equally often."""

    def __init__(self, root: str | Path, sources: Sequence[str] | str = SOURCES, num_classes_per_sample: int = 3,
                 seed: int = 0, ade20k_classes: str | Path | None = None,
                 cocostuff_classes: str | Path | None = None):
        super().__init__()
        self.root = Path(root)
        names = sources.split("||") if isinstance(sources, str) else list(sources)
        self.sources = {name: self._open(name, ade20k_classes, cocostuff_classes) for name in names}
        per_source = []
        for name, source in self.sources.items():
            if isinstance(source, LabelMapSource):
                keys, unusable, why = range(len(source.pairs)), source.missing, "no image or label file"
            else:
                keys, unusable, why = source.ids, source.unannotated, "image without annotations"
            if not keys:
                raise FileNotFoundError(f"{name}: no annotated images under {self.root}")
            if unusable:
                self.skipped[why] += unusable
            per_source.append([(name, key) for key in keys])
        self.items = Interleaved(per_source)
        self.num_classes_per_sample, self.seed = num_classes_per_sample, seed

    def _open(self, name: str, ade20k_classes, cocostuff_classes):
        root = self.root
        try:
            if name == "ade20k":
                return ade20k_source(root, ade20k_classes)
            if name == "cocostuff":
                return cocostuff_source(root, cocostuff_classes)
            if name == "mapillary":
                return mapillary_source(root)
            if name == "paco_lvis":
                return coco_source(root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json",
                                   root / "coco", paco_name)
            if name == "pascal_part":
                part_root = root / "vlpart" / "pascal_part"
                return coco_source(part_root / "train.json", part_root / "VOCdevkit" / "VOC2010" / "JPEGImages",
                                   pascal_part_name)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{name}: unreadable annotation file ({type(err).__name__}: {err})") from err
        raise ValueError(f"unknown source {name!r} (available: {', '.join(SOURCES)})")

    def load_item(self, item, index: int) -> Sample | None:
        name, key = item
        rng = random.Random(self.seed * 1_000_003 + index)
        source = self.sources[name]
        if isinstance(source, LabelMapSource):
            return self._label_map_sample(name, source, *source.pairs[key], rng)
        return self._coco_sample(name, source, key, rng)

    def _sample(self, image, targets, rng, source: str, ignore=None) -> Sample:
        conversations = [[(rng.choice(SHORT_QUESTIONS).format(class_name=text.lower()), rng.choice(ANSWERS))]
                         for text, _ in targets]
        masks = np.stack([mask for _, mask in targets]).astype(np.float32)
        return Sample(image, conversations, masks, ignore=ignore, source=source,
                      meta={"classes": [text for text, _ in targets]})

    def _label_map_sample(self, name, source: LabelMapSource, image_path: Path, label_path: Path, rng):
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        try:
            with Image.open(label_path) as handle:  # PIL keeps palette indices (Mapillary) where cv2 gives colours
                label = source.prepare(np.array(handle))
        except (OSError, ValueError):
            label = None
        if bgr is None or label is None or label.shape != bgr.shape[:2]:
            self.skipped["unreadable image or label (or sizes differ)"] += 1
            return None
        label[label >= len(source.classes)] = IGNORE
        present = [int(c) for c in np.unique(label) if c != IGNORE]
        if not present:
            self.skipped["no labelled class"] += 1
            return None
        chosen = rng.sample(present, min(self.num_classes_per_sample, len(present)))
        targets = [(source.classes[c], label == c) for c in chosen]
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self._sample(image, targets, rng, f"{name}/{image_path.name}", ignore=label == IGNORE)

    def _coco_sample(self, name, source: CocoSource, image_id: int, rng):
        info = source.images[image_id]
        bgr = cv2.imread(str(source.image_dir / info["file_name"]), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (info["height"], info["width"]):
            self.skipped["unreadable image (or not the annotated size)"] += 1
            return None
        annotations = source.annotations[image_id]
        targets = []
        for ann in rng.sample(annotations, len(annotations)):
            text = self._part_name(source.names.get(ann.get("category_id")), rng)
            mask = counted_mask(ann, info, self.skipped) if text else None
            if mask is not None:
                targets.append((text, mask))
            if len(targets) == self.num_classes_per_sample:
                break
        if not targets:
            self.skipped["no usable annotation"] += 1
            return None
        return self._sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), targets, rng, f"{name}/{info['file_name']}")

    def _part_name(self, name, rng) -> str | None:
        if name is None:
            self.skipped["category without a usable name"] += 1
            return None
        if isinstance(name, tuple):
            obj, part = name
            return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"
        return name

