"""Referring segmentation (refCLEF, refCOCO, refCOCO+, refCOCOg) in the REFER layout the reference reads:

    ROOT/refer_seg/<dataset>/refs(<splitBy>).p   pickled refs: image_id, ann_id, ref_id, split, sentences [{sent}]
    ROOT/refer_seg/<dataset>/instances.json      COCO style: images, annotations (polygons or RLE), categories
    ROOT/refer_seg/images/mscoco/images/train2014/<file_name>   refcoco, refcoco+, refcocog
    ROOT/refer_seg/images/saiapr_tc-12/<file_name>              refclef

splitBy is "umd" for refcocog and "unc" for the others. ``ReferSeg`` gives training samples: a dataset drawn
uniformly, one of its images, up to ``num_classes_per_sample`` of the image's referring sentences, each asked with
a short-question template and answered from ``ANSWERS``, one mask per sentence. ``refer_val_items`` gives the
reference's validation items: every sentence of every ref of a split.

Masks are decoded by ``coco.annotation_mask`` (pycocotools, as the reference): the union of an annotation's
parts. The reference sums them instead, which differs only where two of its polygons overlap (2 there).
"""
from __future__ import annotations

import json
import pickle
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..collate import Sample
from ..templates import ANSWERS, SHORT_QUESTIONS
from . import SkippingDataset
from .coco import Interleaved, annotation_mask, counted_mask

REFER_DATASETS = ("refclef", "refcoco", "refcoco+", "refcocog")
COCO_TRAIN2014 = Path("images/mscoco/images/train2014")
SAIAPR = Path("images/saiapr_tc-12")
VAL_QUESTION = " What is {} in this image? Please output segmentation mask."


# --- the REFER layout -------------------------------------------------------------------------------------------

class _PlainUnpickler(pickle.Unpickler):
    """The refs files are lists of dicts of strings and numbers; refusing every class keeps a tampered file from
    running code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refs pickle names {module}.{name}; only plain lists and dicts are read")


def refer_folder(root: str | Path) -> Path:
    """``root/refer_seg`` (the reference's training layout), or ``root`` itself where it holds the datasets (the
    layout its validation reads)."""
    root = Path(root)
    return root / "refer_seg" if (root / "refer_seg").is_dir() else root


def in_split(ref_split: str, split: str) -> bool:
    """REFER's split rule: "testA"/"testB"/"testC" also match combined splits ("testAB"), "test" every test split."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


@dataclass
class ReferSet:
    """One dataset's refs of one split, grouped by image (file order), with the images and annotations they use."""

    name: str
    refs_by_image: dict[int, list[dict]]
    images: dict[int, dict]
    annotations: dict[int, dict]
    image_dir: Path


def read_refer(root: str | Path, dataset: str, split: str, split_by: str | None = None) -> ReferSet:
    if dataset not in REFER_DATASETS:
        raise ValueError(f"dataset must be one of {REFER_DATASETS}, got {dataset!r}")
    folder = refer_folder(root)
    split_by = split_by or ("umd" if dataset == "refcocog" else "unc")
    refs_path, instances_path = folder / dataset / f"refs({split_by}).p", folder / dataset / "instances.json"
    for path in (refs_path, instances_path):
        if not path.is_file():
            raise FileNotFoundError(f"no {path}")
    try:
        with refs_path.open("rb") as handle:
            refs = _PlainUnpickler(handle).load()
        instances = json.loads(instances_path.read_text())
        refs_by_image: dict[int, list[dict]] = {}
        for ref in refs:
            if in_split(ref["split"], split):
                refs_by_image.setdefault(ref["image_id"], []).append(ref)
        used = {ref["ann_id"] for image_refs in refs_by_image.values() for ref in image_refs}
        images = {image["id"]: image for image in instances["images"] if image["id"] in refs_by_image}
        annotations = {ann["id"]: ann for ann in instances["annotations"] if ann["id"] in used}
    except (pickle.UnpicklingError, EOFError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable {dataset} ({split_by}) annotations: {type(err).__name__}: {err}") from err
    image_dir = folder / (SAIAPR if dataset == "refclef" else COCO_TRAIN2014)
    return ReferSet(dataset, refs_by_image, images, annotations, image_dir)


def read_image(refer: ReferSet, info: dict) -> np.ndarray | None:
    """RGB image of ``info``, or None if unreadable or not of the size its annotations are in."""
    bgr = cv2.imread(str(refer.image_dir / info["file_name"]), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[:2] != (info["height"], info["width"]):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ReferSeg(SkippingDataset):
    """Training samples of refCLEF/refCOCO/refCOCO+/refCOCOg (``datasets``: names, or "a||b" as the reference
    spells them). An annotation that is missing, malformed or empty in the image is not asked about (the
    reference would train on an empty mask) and counted; an image left with no usable sentence is skipped."""

    def __init__(self, root: str | Path, datasets: Sequence[str] | str = REFER_DATASETS, split: str = "train",
                 num_classes_per_sample: int = 3, seed: int = 0):
        super().__init__()
        names = datasets.split("||") if isinstance(datasets, str) else list(datasets)
        self.sets = {name: read_refer(root, name, split) for name in names}
        for name, refer in self.sets.items():
            if not refer.refs_by_image:
                raise ValueError(f"{name} has no refs in split {split!r}")
        self.items = Interleaved([[(name, image_id) for image_id in refer.refs_by_image]
                                  for name, refer in self.sets.items()])
        self.num_classes_per_sample, self.seed = num_classes_per_sample, seed

    def load_item(self, item, index: int) -> Sample | None:
        name, image_id = item
        refer = self.sets[name]
        info = refer.images.get(image_id)
        if info is None:
            self.skipped["image not in instances.json"] += 1
            return None
        image = read_image(refer, info)
        if image is None:
            self.skipped["unreadable image (or not the annotated size)"] += 1
            return None
        try:
            sentences = [(s["sent"].strip(), ref["ann_id"]) for ref in refer.refs_by_image[image_id]
                         for s in ref["sentences"]]
        except (KeyError, TypeError, AttributeError):
            self.skipped["malformed ref"] += 1
            return None
        rng = random.Random(self.seed * 1_000_003 + index)
        masks: dict[int, np.ndarray | None] = {}
        chosen = []
        for i in rng.sample(range(len(sentences)), len(sentences)):
            text, ann_id = sentences[i]
            if ann_id not in masks:
                masks[ann_id] = self._mask(refer.annotations.get(ann_id), info)
            if text and masks[ann_id] is not None:
                chosen.append((text, ann_id))
            if len(chosen) == self.num_classes_per_sample:
                break
        if not chosen:
            self.skipped["no usable referring sentence"] += 1
            return None
        conversations = [[(rng.choice(SHORT_QUESTIONS).format(class_name=text.lower()), rng.choice(ANSWERS))]
                         for text, _ in chosen]
        stacked = np.stack([masks[ann_id] for _, ann_id in chosen]).astype(np.float32)
        return Sample(image, conversations, stacked, source=f"{name}/{info['file_name']}",
                      meta={"sentences": [t for t, _ in chosen], "ann_ids": [a for _, a in chosen]})

    def _mask(self, annotation: dict | None, info: dict) -> np.ndarray | None:
        if annotation is None:
            self.skipped["ref without annotation"] += 1
            return None
        return counted_mask(annotation, info, self.skipped)


def refer_val_items(root: str | Path, dataset: str = "refcocog", split: str = "val",
                    split_by: str | None = None) -> Iterator[tuple[str, np.ndarray, str, np.ndarray]]:
    """The reference's validation items of a split: every sentence of every ref, lower-cased, asked as
    ``" What is {sentence} in this image? Please output segmentation mask."``; target 0/1 (empty where the
    annotation has no segmentation, as in the reference). Unreadable images or masks are reported and left out."""
    refer = read_refer(root, dataset, split, split_by)
    for image_id, refs in refer.refs_by_image.items():
        info = refer.images.get(image_id)
        image = read_image(refer, info) if info else None
        if image is None:
            print(f"lisa-eval: skipped {dataset} image {image_id} (missing, unreadable or not the annotated size)",
                  file=sys.stderr)
            continue
        for ref in refs:
            segmentation = refer.annotations.get(ref["ann_id"], {}).get("segmentation") or []
            try:
                target = annotation_mask(segmentation, info["height"], info["width"]).astype(np.uint8)
            except (ValueError, KeyError, TypeError) as err:
                print(f"lisa-eval: skipped ref {ref['ref_id']} ({err})", file=sys.stderr)
                continue
            for j, sentence in enumerate(ref["sentences"]):
                question = VAL_QUESTION.format(sentence["sent"].strip().lower())
                yield f"{Path(info['file_name']).name}#{ref['ref_id']}.{j}", image, question, target
