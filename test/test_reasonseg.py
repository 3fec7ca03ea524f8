"""ReasonSeg files as published → masks (target/ignore, largest polygon first) and questions."""
import json

import cv2
import numpy as np
import pytest

from training.data.reasonseg import IGNORE, ReasonSeg, mask_from_shapes


def write_item(root, name, shapes, text=("the thing you sit on",), is_sentence=True, image=True):
    if image:
        cv2.imwrite(str(root / f"{name}.jpg"), np.full((40, 50, 3), 90, np.uint8))
    (root / f"{name}.json").write_text(json.dumps({"text": list(text), "is_sentence": is_sentence,
                                                   "shapes": shapes}))


SQUARE = {"label": "target", "points": [[5, 5], [24, 5], [24, 24], [5, 24]], "shape_type": "polygon"}
HOLE = {"label": "ignore", "points": [[10, 10], [14, 10], [14, 14], [10, 14]], "shape_type": "polygon"}


def test_mask_layers_largest_first():
    mask = mask_from_shapes([HOLE, SQUARE, {"label": "flag", "points": [[0, 0], [49, 0], [49, 39]]}], 40, 50)
    assert mask[12, 12] == IGNORE and mask[6, 6] == 1 and mask[30, 30] == 0
    assert (mask == IGNORE).sum() == 25 and (mask == 1).sum() == 20 * 20 - 25
    with pytest.raises(ValueError, match="outside"):
        mask_from_shapes([{"label": "target", "points": [[100, 100], [120, 100], [120, 120]]}], 40, 50)


def test_samples_questions_and_skips(tmp_path):
    write_item(tmp_path, "a", [SQUARE, HOLE])
    write_item(tmp_path, "b", [SQUARE], text=("chair", "seat"), is_sentence=False)
    write_item(tmp_path, "c", [{"label": "target", "points": [[100, 100], [120, 100], [120, 120]]}])
    (tmp_path / "d.jpg").write_bytes(b"broken")
    (tmp_path / "d.json").write_text("{}")
    data = ReasonSeg(tmp_path, queries_per_sample=3)
    assert len(data) == 4
    a = data.load(tmp_path / "a.jpg")
    assert a.masks.shape == (1, 40, 50) and a.ignore.sum() == 25 and a.masks[0][12, 12] == 0
    assert "the thing you sit on" in a.conversations[0][0][0] and "[SEG]" in a.conversations[0][0][1]
    b = data.load(tmp_path / "b.jpg")
    assert b.masks.shape == (2, 40, 50) and {t[0][0].count("chair") + t[0][0].count("seat") for t in
                                             b.conversations} == {1}
    assert data.load(tmp_path / "c.jpg") is None and data.load(tmp_path / "d.jpg") is None
    assert data[2].source in ("reasonseg/d.jpg", "reasonseg/a.jpg")  # c and d are skipped for the next usable
    assert "bad annotation" in data.summary() and "unreadable image" in data.summary()


def test_explanatory_answers(tmp_path):
    write_item(tmp_path, "a", [SQUARE])
    explanations = tmp_path / "train.json"
    explanations.write_text(json.dumps([{"image": "a.jpg", "query": "q", "outputs": "Because it has a seat."}]))
    data = ReasonSeg(tmp_path, explanatory_json=explanations, explanatory=1.0)
    sample = data.load(tmp_path / "a.jpg")
    assert sample.conversations[0][0][1] == "Because it has a seat." and sample.masks.shape[0] == 0
