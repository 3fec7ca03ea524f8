"""``lisa-eval``: gIoU / cIoU of a checkpoint as the reference's validation computes them — teacher-forced answer
``"[SEG]."``, one mask per question, pixels labelled 255 ignored.

    lisa-eval --model M [--vision-tower V] (--reason-seg DIR | --refer ROOT | --synthetic N) --out DIR
              [--refer-dataset refcocog] [--refer-split val] [--refer-split-by umd] [--precision fp32]

ReasonSeg ``val``/``test`` folders use the reference's validation prompts: only each image's first query,
``" {query} Please output segmentation mask."`` for sentences and ``" What is {query} in this image? Please output
segmentation mask."`` for phrases. refCOCO/+/g and refCLEF splits (``--refer``: the data root holding
``refer_seg/``, or that folder) ask the phrase form with every sentence of every ref, lower-cased, as the
reference's validation does. Writes ``results.json`` (summary) and ``per_sample.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from tqdm.auto import tqdm

from lisa_core import Lisa
from lisa_core.checkpoint import DEFAULT_MODEL
from lisa_core.metrics import IGNORE_LABEL, SegmentationMeter

from .data.reasonseg import mask_from_shapes, read_annotation

Item = tuple[str, np.ndarray, str, np.ndarray]  # name, RGB image, question, 0/1/255 target


def reasonseg_val_items(root: str | Path) -> Iterator[Item]:
    """The reference's validation items of a ReasonSeg folder: each image's first query; unusable files skipped."""
    for image_path in sorted(Path(root).glob("*.jpg")):
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        try:
            annotation = read_annotation(image_path.with_suffix(".json"))
            target = mask_from_shapes(annotation["shapes"], *bgr.shape[:2])
            query, is_sentence = annotation["text"][0].strip(), annotation["is_sentence"]
        except (AttributeError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            print(f"lisa-eval: skipped {image_path.name} ({'unreadable image' if bgr is None else err})",
                  file=sys.stderr)
            continue
        question = (f" {query} Please output segmentation mask." if is_sentence
                    else f" What is {query} in this image? Please output segmentation mask.")
        yield image_path.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), question, target


def sample_items(samples: Iterable) -> Iterator[Item]:
    """Training-format samples (one question per conversation) as evaluation items."""
    for index, sample in enumerate(samples):
        for turns, mask in zip(sample.conversations, sample.masks):
            target = mask.astype(np.uint8)
            if sample.ignore is not None:
                target[sample.ignore] = IGNORE_LABEL
            yield f"{sample.source or index}", sample.image, turns[0][0], target


def validation_items(name: str, options: dict, dataset_dir: str | Path = "dataset") -> Iterator[Item]:
    """Items of one ``eval`` config entry: ``reason_seg`` (``root`` or ``split`` under ``dataset_dir``, default val)
    and ``refer_seg`` (``root``, ``dataset``, ``split``, ``split_by``) with the reference's validation prompts;
    any other training dataset name (e.g. ``synthetic``, ``scannet``) with its training questions."""
    options = dict(options)
    if name == "reason_seg":
        split = options.pop("split", "val")
        yield from reasonseg_val_items(options.pop("root", Path(dataset_dir) / "reason_seg" / "ReasonSeg" / split))
    elif name == "refer_seg":
        from .data.refer import refer_val_items

        yield from refer_val_items(options.pop("root", dataset_dir), **options)
    else:
        from .data.mix import build_dataset

        dataset = build_dataset(name, options, dataset_dir)
        yield from sample_items(dataset[i] for i in range(len(dataset)))


def evaluate_items(lisa: Lisa, items: Iterable[Item], progress: bool = False) -> tuple[dict, list[dict]]:
    meter = SegmentationMeter()
    rows = []
    for name, image, question, target in tqdm(list(items), desc="evaluating", disable=not progress or None):
        result = lisa.segment(image, question, "[SEG].")
        row = meter.update(result.masks, [target], name=name)
        rows.append({"name": name, "question": question.strip(), "iou": row["ious"][0],
                     "intersection": row["intersection"], "union": row["union"], "score": result.scores[0]})
    return meter.summary(), rows


def write_results(out: str | Path, summary: dict, rows: list[dict]) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "per_sample.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "question", "iou", "intersection", "union", "score"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lisa-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint dir, hub id or embedded model name (default: {DEFAULT_MODEL})")
    parser.add_argument("--vision-tower", help="CLIP vision tower override")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--reason-seg", help="a ReasonSeg val/test folder (*.jpg + *.json)")
    data.add_argument("--refer", metavar="ROOT", help="referring data: ROOT/refer_seg/<dataset>/refs(…).p etc.")
    data.add_argument("--synthetic", type=int, help="this many held-out synthetic rooms (seed 12345)")
    parser.add_argument("--refer-dataset", default="refcocog", choices=["refclef", "refcoco", "refcoco+", "refcocog"])
    parser.add_argument("--refer-split", default="val", help="val, test, testA, testB, … (default: val)")
    parser.add_argument("--refer-split-by", help="refs file (default: umd for refcocog, unc otherwise)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output directory for results.json and per_sample.csv")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        lisa = Lisa.from_pretrained(args.model, vision_tower=args.vision_tower, device=args.device,
                                    dtype=args.precision)
        if args.reason_seg:
            items = reasonseg_val_items(args.reason_seg)
        elif args.refer:
            from .data.refer import refer_val_items

            items = refer_val_items(args.refer, args.refer_dataset, args.refer_split, args.refer_split_by)
        else:
            from .data.synthetic import SyntheticRooms

            items = sample_items(SyntheticRooms(args.synthetic, seed=12345))
        summary, rows = evaluate_items(lisa, items, progress=True)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"lisa-eval: {err}", file=sys.stderr)
        return 1
    out = write_results(args.out, summary, rows)
    print(f"gIoU {summary['giou']:.4f}  cIoU {summary['ciou']:.4f}  ({summary['n_masks']} masks) → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
