"""gIoU / cIoU as the reference LISA validation computes them, on hand-made 4×4 masks with hand-computed values.

Reference rules: ground-truth pixels labelled 255 are ignored; per mask IoU = I / (U + 1e-5), plus 1.0 when
U == 0; gIoU = Σ per-mask IoU / (n_masks + 1e-5); cIoU = Σ I / (Σ U + 1e-10).
"""
import numpy as np
import pytest

from lisa_core.metrics import IGNORE_LABEL, SegmentationMeter, intersection_union, mask_iou

X = IGNORE_LABEL

# prediction: the 2×2 block at the top left (4 pixels)
PRED = np.array([
    [1, 1, 0, 0],
    [1, 1, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
], dtype=np.uint8)
# target: the first three pixels of column 0 → I = 2, U = 4 + 3 − 2 = 5
TARGET = np.array([
    [1, 0, 0, 0],
    [1, 0, 0, 0],
    [1, 0, 0, 0],
    [0, 0, 0, 0],
], dtype=np.uint8)
# same target, but the two predicted pixels of column 1 are "ignore" → they count in neither I nor U:
# prediction inside the valid area = 2 px, target = 3 px, I = 2, U = 3
TARGET_IGNORE = np.array([
    [1, X, 0, 0],
    [1, X, 0, 0],
    [1, 0, 0, 0],
    [0, 0, 0, 0],
], dtype=np.uint8)
EMPTY = np.zeros((4, 4), dtype=np.uint8)


def test_intersection_union_plain():
    assert intersection_union(PRED, TARGET) == (2, 5)
    assert mask_iou(2, 5) == pytest.approx(2 / (5 + 1e-5), rel=1e-12)
    assert mask_iou(2, 5) < 0.4  # no +1 bonus when the union is not empty


def test_bool_prediction_is_the_same_as_01():
    assert intersection_union(PRED.astype(bool), TARGET) == (2, 5)


def test_ignore_label_pixels_are_left_out():
    assert intersection_union(PRED, TARGET_IGNORE) == (2, 3)
    meter = SegmentationMeter()
    meter.update([PRED], [TARGET_IGNORE])
    assert meter.per_sample[0]["ious"] == [pytest.approx(2 / (3 + 1e-5), rel=1e-12)]
    # a prediction only on ignored pixels is no error at all: I = U = 0 → IoU 1
    only_ignored = np.zeros((4, 4), dtype=np.uint8)
    only_ignored[0, 1] = 1
    target = np.full((4, 4), 0, dtype=np.uint8)
    target[0, 1] = X
    assert intersection_union(only_ignored, target) == (0, 0)


def test_ignored_target_pixels_are_not_foreground():
    # a target made only of ignore labels has no foreground: an empty prediction gets I = U = 0
    all_ignored = np.full((4, 4), X, dtype=np.uint8)
    assert intersection_union(EMPTY, all_ignored) == (0, 0)
    assert intersection_union(np.ones((4, 4), np.uint8), all_ignored) == (0, 0)


def test_empty_prediction_of_empty_target_counts_as_one():
    assert intersection_union(EMPTY, EMPTY) == (0, 0)
    assert mask_iou(0, 0) == pytest.approx(1.0, abs=1e-12)
    meter = SegmentationMeter()
    meter.update([EMPTY], [EMPTY])
    assert meter.giou == pytest.approx(1.0 / (1 + 1e-5), rel=1e-12)
    assert meter.ciou == 0.0  # Σ I = 0


def test_empty_target_with_nonempty_prediction_is_zero():
    assert intersection_union(PRED, EMPTY) == (0, 4)
    meter = SegmentationMeter()
    meter.update([PRED], [EMPTY])
    assert meter.per_sample[0]["ious"] == [0.0]
    assert meter.giou == 0.0
    assert meter.ciou == 0.0


def test_empty_prediction_of_nonempty_target_is_zero():
    assert intersection_union(EMPTY, TARGET) == (0, 3)
    assert mask_iou(0, 3) == 0.0


def test_multi_mask_samples_giou_and_ciou():
    meter = SegmentationMeter()
    row = meter.update([PRED, EMPTY], [TARGET, EMPTY], name="two masks")  # (I, U) = (2, 5) and (0, 0)
    assert row["name"] == "two masks"
    assert row["ious"] == [pytest.approx(2 / (5 + 1e-5), rel=1e-12), pytest.approx(1.0, abs=1e-12)]
    assert row["intersection"] == 2 and row["union"] == 5
    meter.update([PRED], [TARGET_IGNORE], name="one mask")  # (2, 3)
    expected_giou = (2 / (5 + 1e-5) + 1.0 + 2 / (3 + 1e-5)) / (3 + 1e-5)
    expected_ciou = (2 + 0 + 2) / (5 + 0 + 3 + 1e-10)
    assert meter.giou == pytest.approx(expected_giou, rel=1e-12)
    assert meter.ciou == pytest.approx(expected_ciou, rel=1e-12)
    assert meter.n_masks == 3
    assert meter.intersection == 4 and meter.union == 8
    assert meter.summary() == {"giou": pytest.approx(expected_giou, rel=1e-12),
                               "ciou": pytest.approx(expected_ciou, rel=1e-12), "n_masks": 3, "n_samples": 2}


def test_giou_weights_masks_not_samples():
    """gIoU averages over masks: a 3-mask sample weighs three times a 1-mask sample."""
    meter = SegmentationMeter()
    meter.update([EMPTY, EMPTY, EMPTY], [EMPTY, EMPTY, EMPTY])  # three IoUs of 1
    meter.update([PRED], [EMPTY])  # one IoU of 0
    assert meter.giou == pytest.approx(3.0 / (4 + 1e-5), rel=1e-12)  # a per-sample mean would give 0.5


def test_empty_meter():
    meter = SegmentationMeter()
    assert meter.giou == 0.0 and meter.ciou == 0.0
    assert meter.summary()["n_samples"] == 0


def test_shape_mismatch_raises_and_leaves_meter_unchanged():
    with pytest.raises(ValueError, match="shape"):
        intersection_union(PRED, np.zeros((4, 5), dtype=np.uint8))
    meter = SegmentationMeter()
    meter.update([PRED], [TARGET])
    before = meter.summary()
    with pytest.raises(ValueError):
        meter.update([PRED, PRED], [TARGET, np.zeros((5, 4), dtype=np.uint8)])
    assert meter.summary() == before
    assert meter.intersection == 2 and meter.union == 5


def test_mismatched_mask_counts_raise_and_leave_meter_unchanged():
    meter = SegmentationMeter()
    with pytest.raises(ValueError, match="2 predicted masks for 1 target"):
        meter.update([PRED, PRED], [TARGET], name="bad")
    with pytest.raises(ValueError):
        meter.update([], [TARGET])
    assert meter.n_masks == 0 and meter.per_sample == []
