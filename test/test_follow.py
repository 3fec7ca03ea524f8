"""Follow mode's pieces without ROS: the optical-flow carry (tier 1), re-decoding a stored [SEG] prompt (tier 2) and
the moving-camera sequences it is measured on."""
import cv2
import numpy as np
import pytest

from lisa_core.follow import FLOW, Follower, FollowConfig, carry_mask, components_touching, overlap
from training.data.sequences import make_sequence
from training.data.synthetic import room_seed


def textured(h=192, w=256, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (0, 0), 1.5)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_carry_mask_follows_a_shift_and_says_it_is_sure():
    grey = textured()
    mask = np.zeros(grey.shape, bool)
    mask[60:120, 80:150] = True
    carried, confidence = carry_mask(grey, shifted(grey, 7, -4), mask)
    expected = shifted(mask.astype(np.uint8), 7, -4) > 0
    assert overlap(carried, expected) > 0.95 and confidence > 0.8


def test_carry_mask_is_unsure_on_a_frame_with_nothing_in_common():
    grey = textured(seed=0)
    mask = np.zeros(grey.shape, bool)
    mask[60:120, 80:150] = True
    _, confidence = carry_mask(grey, textured(seed=1), mask)
    assert confidence < 0.5


def test_components_touching_keeps_the_target_not_a_look_alike():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:30] = mask[60:90, 60:90] = True
    near = np.zeros_like(mask)
    near[12:28, 14:32] = True
    kept = components_touching(mask, near)
    assert kept[20, 20] and not kept[70, 70]


def test_redecode_of_the_stored_prompt_on_the_same_frame_is_the_answer(tiny_lisa, room_image):
    answer = tiny_lisa.chat(room_image, "Where can I wash my hands? Please output segmentation mask.",
                            max_new_tokens=24)
    assert answer.masks and answer.seg_prompts.shape == (len(answer.masks), 256)
    logits, scores = tiny_lisa.redecode(tiny_lisa.image_state(room_image), answer.seg_prompts)
    assert np.array_equal(logits.numpy() > 0, np.stack(answer.masks))
    assert np.allclose(scores.numpy(), answer.scores, atol=1e-5)


def test_follower_needs_a_mask_to_follow(tiny_lisa, room_image):
    answer = tiny_lisa.chat(room_image, "What is this?", max_new_tokens=4)
    answer.masks, answer.seg_prompts = [], None
    with pytest.raises(ValueError, match="nothing to follow"):
        Follower(tiny_lisa, answer, room_image)


def test_follower_carries_the_mask_by_flow_between_redecodes(tiny_lisa, room_image):
    """On a slowly panning view, with re-decodes far apart and the target clear of the frame's edge, every update is
    tier 1 and moves with the image (the random checkpoint's own mask would touch the edge: a box stands in)."""
    answer = tiny_lisa.chat(room_image, "Where can I wash my hands? Please output segmentation mask.",
                            max_new_tokens=24)
    h, w = room_image.shape[:2]
    box = np.zeros((h, w), bool)
    box[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    answer.masks = [box]
    follower = Follower(tiny_lisa, answer, room_image, config=FollowConfig(redecode_s=1e9, min_flow_confidence=0.3))
    for step in range(1, 4):
        update = follower.update(shifted(room_image, 2 * step, 0))
        assert update.tier == FLOW and not update.lost
    assert overlap(update.mask, shifted(box.astype(np.uint8), 6, 0) > 0) > 0.9


def test_sequences_leave_the_target_and_come_back():
    seq = make_sequence(room_seed(13, 100), "sink", frames=40)
    visible = seq.visible
    assert len(seq.frames) == len(seq.truth) == 40 and seq.frames[0].shape == (192, 256, 3)
    assert visible[0] and visible[-1]
    away = [v for v, phase in zip(visible, seq.phases) if phase == "away"]
    assert not all(away) and not away[-1], "the target must leave the view while the camera is away"
    assert seq.truth[-1].sum() > seq.truth[0].sum(), "the approach makes it larger"
