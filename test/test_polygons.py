"""Masks from polygons and RLE, pixel for pixel as the reference makes them: ReasonSeg shapes as its loader drew them
with OpenCV 4.8 (and numpy 1.24's tie order), COCO polygons and RLE as pycocotools decodes them and its REFER and
PACO / PASCAL-Part loaders yield them. Fixture: ``test/data/polygons`` (``make_fixture.py`` says how it was made)."""
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from training.data import reasonseg
from training.data.coco import annotation_mask, counted_mask, polygon_counts, rle_counts_from_string, rle_decode
from training.data.reasonseg import IGNORE, argsort_numpy_124, mask_from_shapes

FIXTURE = Path(__file__).parent / "data" / "polygons"
CASES = json.loads((FIXTURE / "cases.json").read_text())
EXPECTED = dict(np.load(FIXTURE / "expected.npz"))


def named(section: str) -> dict:
    return {case["name"]: case for case in CASES[section]}


def ids(case: dict) -> str:
    return case["name"]


# --- ReasonSeg: OpenCV polygons -------------------------------------------------------------------------------

def test_fixture_covers_border_nesting_touching_and_floats():
    assert CASES["made_with"]["opencv"].startswith("4.8") and CASES["made_with"]["numpy"] == "1.24.2"
    points = [np.array(s["points"], float) for c in CASES["reasonseg"] for s in c["shapes"]]
    assert any((p < 0).any() for p in points) and any((p % 1 != 0).any() for p in points)
    assert any(((p[:, 0] >= c["width"]) | (p[:, 1] >= c["height"])).any()
               for c in CASES["reasonseg"] for p in (np.array(s["points"], float) for s in c["shapes"]))
    names = " ".join(named("reasonseg"))
    assert all(word in names for word in ("border", "nested", "touching", "slivers", "ties"))


def test_installed_opencv_draws_as_the_references():
    """The real check of the pin: the reference's drawing calls, in its recorded order, give 4.8's masks here."""
    for case in CASES["reasonseg"]:
        kept = [s for s in case["shapes"] if s["label"].lower() != "flag"]
        mask = np.zeros((case["height"], case["width"]), np.uint8)
        for k in case["order"]:
            points = np.array([kept[k]["points"]], dtype=np.int32)
            value = IGNORE if "ignore" in kept[k]["label"].lower() else 1
            cv2.polylines(mask, points, True, value, 1)
            cv2.fillPoly(mask, points, value)
        differ = int((mask != EXPECTED[f"reasonseg.{case['name']}"]).sum())
        assert differ == 0, (f"OpenCV {cv2.__version__} draws {differ} pixels of {case['name']} unlike 4.8 (4.11+ "
                             f"do): keep requirements.txt's opencv-python-headless pin")


@pytest.mark.parametrize("case", CASES["reasonseg"], ids=ids)
def test_reasonseg_mask_is_the_references(case):
    expected = EXPECTED[f"reasonseg.{case['name']}"]
    mask = mask_from_shapes(case["shapes"], case["height"], case["width"])
    assert mask.dtype == np.uint8 and mask.shape == expected.shape
    assert int((mask != expected).sum()) == 0


def test_equal_areas_drawn_later_shape_first():
    mask = mask_from_shapes(named("reasonseg")["touching_ties"]["shapes"], 32, 80)
    assert mask[10, 25] == 1 and mask[10, 45] == IGNORE  # shared edges go to the earlier shape, drawn last


@pytest.mark.parametrize("case", CASES["argsort"], ids=ids)
def test_tie_order_is_numpy_124s(case):
    assert argsort_numpy_124(case["values"]) == EXPECTED[f"argsort.{case['name']}"].tolist()


def test_heapsort_fallback_is_exercised(monkeypatch):
    spans, heapsort = [], reasonseg._heapsort
    monkeypatch.setattr(reasonseg, "_heapsort", lambda order, values, first, last: (
        spans.append((first, last)), heapsort(order, values, first, last)))
    for case in CASES["argsort"]:
        argsort_numpy_124(case["values"])
    assert spans


# --- COCO: pycocotools polygons and RLE ---------------------------------------------------------------------

def pycocotools_mask(segmentation, height: int, width: int) -> np.ndarray:
    """H×W uint8 of pycocotools' own decoding, dispatched as ``COCO.annToRLE`` does (a list of compressed RLE
    merged, as the reference's REFER loader sums them)."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        return coco_mask.decode(coco_mask.frPyObjects(segmentation, height, width) if isinstance(counts, list)
                                else segmentation)
    if isinstance(segmentation[0], dict):
        return coco_mask.decode(coco_mask.merge(segmentation))
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width)))


@pytest.mark.parametrize("case", CASES["coco"], ids=ids)
def test_coco_mask_is_pycocotools_and_the_references(case):
    segmentation, height, width = case["segmentation"], case["height"], case["width"]
    mask = annotation_mask(segmentation, height, width)
    assert mask.dtype == bool and mask.shape == (height, width) and mask.any()
    assert (mask == pycocotools_mask(segmentation, height, width).astype(bool)).all()
    counted = counted_mask({"segmentation": segmentation}, {"height": height, "width": width}, Counter())
    assert (counted == mask).all()
    references = [k for k in (f"annToMask.{case['name']}", f"refer.{case['name']}") if k in EXPECTED]
    assert references
    for key in references:
        assert (mask == (EXPECTED[key] > 0)).all(), key


def test_refer_reference_sums_overlapping_parts_the_project_unites():
    refer, mask = EXPECTED["refer.poly_nested"], annotation_mask(named("coco")["poly_nested"]["segmentation"], 64, 64)
    assert refer.max() == 3 and (mask == (refer > 0)).all()  # the reference's REFER target is 2 or 3 there
    assert (EXPECTED["annToMask.poly_nested"] == mask).all()  # COCO.annToMask (PACO, PASCAL-Part) unites them
    for case in CASES["coco"]:
        key = f"refer.{case['name']}"
        if key in EXPECTED and EXPECTED[key].max() == 1:
            assert (annotation_mask(case["segmentation"], case["height"], case["width"]) == EXPECTED[key]).all()


def test_rle_compressed_uncompressed_bytes_and_lists_agree():
    compressed = named("coco")["rle_compressed"]["segmentation"]
    h, w = compressed["size"]
    mask = annotation_mask(compressed, h, w)
    counts = rle_counts_from_string(compressed["counts"])
    assert (rle_decode(counts, h, w) == mask).all()
    assert (annotation_mask({"size": [h, w], "counts": counts}, h, w) == mask).all()
    assert (annotation_mask({"size": [h, w], "counts": compressed["counts"].encode()}, h, w) == mask).all()
    assert (annotation_mask([{"size": [h, w], "counts": counts}, compressed], h, w) == mask).all()


def test_polygon_edge_cases_follow_pycocotools():
    square = [5, 5, 25, 5, 25, 25, 5, 25]
    assert (annotation_mask([square + [7.5]], 48, 64) == annotation_mask([square], 48, 64)).all()  # odd: dropped
    assert (annotation_mask([square, [30, 30, 40, 40], [50, 5]], 48, 64) == annotation_mask([square], 48, 64)).all()
    assert sum(polygon_counts(square, 48, 64)) == 48 * 64 and annotation_mask([square], 48, 64).sum() == 400
    assert not annotation_mask([], 48, 64).any()
    for refused in ([[1, 1, 9, 9]], [[1, 1]], [[1, 1, 9, 9], square], [square, {"size": [48, 64], "counts": "0"}]):
        with pytest.raises(ValueError, match="refuses"):
            annotation_mask(refused, 48, 64)


def test_rle_not_covering_the_image_is_refused():
    """pycocotools leaves the pixels past too short a count list uninitialised, and refuses too long a one."""
    for counts in ("5X1", [5, 40], [50, 60], [-5, 105], "5X1:F5X"):
        with pytest.raises(ValueError, match="sum|ends inside"):
            annotation_mask({"size": [10, 10], "counts": counts}, 10, 10)
    with pytest.raises(ValueError, match="size"):
        annotation_mask({"size": [10, 12], "counts": "5X1:F5"}, 10, 10)
    skipped = Counter()
    assert counted_mask({"segmentation": {"size": [10, 10], "counts": "5X1"}}, {"height": 10, "width": 10},
                        skipped) is None and skipped["bad segmentation (ValueError)"] == 1
