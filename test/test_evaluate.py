"""lisa-eval: the reference's validation prompts on a ReasonSeg folder, results files, and the metric plumbing."""
import csv
import json

import cv2
import numpy as np
import pytest

from training.evaluate import main, reasonseg_val_items

SQUARE = {"label": "target", "points": [[5, 5], [24, 5], [24, 24], [5, 24]]}
HOLE = {"label": "ignore", "points": [[10, 10], [14, 10], [14, 14], [10, 14]]}


def test_reasonseg_val_prompts(tmp_path):
    for name, text, is_sentence in (("a", ["the seat of the room", "other"], True), ("b", ["chair"], False)):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), np.full((40, 50, 3), 90, np.uint8))
        (tmp_path / f"{name}.json").write_text(json.dumps({"text": text, "is_sentence": is_sentence,
                                                           "shapes": [SQUARE, HOLE]}))
    items = list(reasonseg_val_items(tmp_path))
    assert [(n, q) for n, _, q, _ in items] == [
        ("a.jpg", " the seat of the room Please output segmentation mask."),
        ("b.jpg", " What is chair in this image? Please output segmentation mask.")]
    assert (items[0][3] == 255).sum() == 25


def test_cli_writes_results(tiny_ckpt, tmp_path):
    assert main(["--model", str(tiny_ckpt), "--synthetic", "3", "--device", "cpu", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = list(csv.DictReader((tmp_path / "per_sample.csv").open()))
    assert summary["n_masks"] == len(rows) == 3
    ious = [float(r["iou"]) for r in rows]
    assert abs(summary["giou"] - sum(ious) / (3 + 1e-5)) < 1e-6
    inter, union = sum(int(r["intersection"]) for r in rows), sum(int(r["union"]) for r in rows)
    assert abs(summary["ciou"] - inter / (union + 1e-10)) < 1e-9
    assert main(["--model", str(tmp_path / "missing"), "--synthetic", "1", "--out", str(tmp_path)]) == 1


def test_cli_on_refer_split(tiny_ckpt, tmp_path):
    from test_refer import write_refer

    write_refer(tmp_path / "data", "refcocog", split_by="umd")
    out = tmp_path / "out"
    assert main(["--model", str(tiny_ckpt), "--refer", str(tmp_path / "data"), "--refer-dataset", "refcocog",
                 "--refer-split", "val", "--device", "cpu", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    assert [r["question"] for r in rows] == [f"What is {s} in this image? Please output segmentation mask."
                                             for s in ("val square", "a stripe", "the stripe")]
    assert json.loads((out / "results.json").read_text())["n_masks"] == 3
    assert [int(r["union"]) >= t for r, t in zip(rows, (400, 240, 240))] == [True] * 3  # the targets were read
    assert main(["--model", str(tiny_ckpt), "--refer", str(tmp_path / "data"), "--refer-dataset", "refcoco",
                 "--device", "cpu", "--out", str(out)]) == 1  # no refcoco there
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_ckpt), "--refer", str(tmp_path), "--synthetic", "1", "--out", str(out)])
