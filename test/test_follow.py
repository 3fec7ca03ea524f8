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


def test_look_alike_sequences_hold_a_second_object_of_the_class():
    seq = make_sequence(room_seed(13, 100), "sink", frames=40, look_alike=True)
    assert any(o.sum() >= 60 for o in seq.other), "the look-alike is never in view"
    assert not any((t & o).any() for t, o in zip(seq.truth, seq.other)), "the target and its look-alike overlap"
    assert not any(o.any() for o in make_sequence(room_seed(13, 100), "sink", frames=40).other)


class ScriptedSam:
    """A model whose SAM re-decodes give scripted masks (one per call), to test the follower's choices; everything
    else of a ``Lisa`` the follower touches."""

    weights_version = 0

    def __init__(self, masks):
        self.masks, self.calls = list(masks), 0

    def image_state(self, image):
        return image

    def redecode(self, state, prompts, should_yield=None):
        import torch

        from lisa_core.engine import Yielded

        if should_yield is not None and should_yield():
            raise Yielded()
        mask = self.masks[self.calls]
        self.calls += 1
        return torch.from_numpy(np.where(mask, 1.0, -1.0)[None].astype(np.float32)), torch.tensor([0.5])


def scripted_follow(sam_masks, steps, box, image, redecode_s=1e9):
    """Follow ``box`` on the same (textured, still) ``image`` for ``steps`` frames; SAM answers ``sam_masks``."""
    import torch
    from types import SimpleNamespace

    sam = ScriptedSam(sam_masks)
    answer = SimpleNamespace(masks=[box], seg_prompts=torch.zeros(1, 256), timings={})  # no cost known: no budget
    now = [0.0]
    follower = Follower(sam, answer, image, config=FollowConfig(redecode_s=redecode_s), clock=lambda: now[0])
    updates = []
    for k in range(1, steps + 1):
        now[0] = k / 10
        updates.append(follower.update(image))
    return updates, sam


def rgb_texture():
    return np.dstack([textured(seed=s) for s in range(3)])


def test_someone_in_front_keeps_both_sides_and_re_decodes_until_the_target_is_whole_again():
    image = rgb_texture()
    box = np.zeros(image.shape[:2], bool)
    box[60:130, 60:180] = True
    split = box.copy()
    split[:, 100:140] = False  # a third of it hidden in the middle: two parts, neither touching the other
    updates, sam = scripted_follow([split, split, box], 4, box, image, redecode_s=0.25)
    # frames 1–2: flow (within redecode_s); 3: the periodic re-decode sees both parts; 4: again, as it saw a part;
    # 5: whole again → the flow takes over
    tiers = [u.tier for u in updates]
    assert tiers[:2] == ["flow", "flow"] and tiers[2:] == ["redecode", "redecode"]
    assert np.array_equal(updates[2].mask, split) and sam.calls == 2
    more, _ = scripted_follow([split, box], 5, box, image, redecode_s=0.25)
    assert [u.tier for u in more] == ["flow", "flow", "redecode", "redecode", "flow"]
    assert np.array_equal(more[3].mask, box)


def test_lost_after_three_disagreeing_re_decodes_then_re_acquired_on_the_first_that_looks_like_it():
    image = rgb_texture()
    box = np.zeros(image.shape[:2], bool)
    box[60:130, 60:180] = True
    empty = np.zeros_like(box)
    tiny_speck = np.zeros_like(box)
    tiny_speck[5:9, 5:9] = True  # 16 px, far smaller than the target: not it
    updates, sam = scripted_follow([empty, empty, empty, tiny_speck, box], 5, box, image, redecode_s=0.0)
    # SAM disagrees twice: the flow's mask with half its trust; the third time: lost; a speck is not the target
    assert [u.tier for u in updates] == ["flow", "flow", "lost", "lost", "redecode"]
    assert updates[0].confidence <= 0.5 and np.array_equal(updates[1].mask, box)
    assert updates[2].area == 0 and np.array_equal(updates[4].mask, box) and sam.calls == 5


def test_a_budget_holds_re_decodes_to_its_share_of_what_the_answer_cost(monkeypatch):
    """SAM wanted on every frame (``redecode_s`` 0), each re-decode costing half the answer: with a budget of an
    eighth, the saved burst (three re-decodes) goes first, then one every fourth frame (a quarter re-decode saved per
    frame); the flow carries the frames between."""
    import torch
    from types import SimpleNamespace

    import lisa_core.follow as follow

    clock = [0.0]  # seconds of compute: only the re-decodes cost any (powers of two: exact sums)
    monkeypatch.setattr(follow.time, "perf_counter", lambda: clock[0])
    image = rgb_texture()
    box = np.zeros(image.shape[:2], bool)
    box[60:130, 60:180] = True
    sam = ScriptedSam([box] * 100)
    decode = sam.redecode

    def costly(state, prompts, **options):
        clock[0] += 1 / 16
        return decode(state, prompts, **options)

    sam.redecode = costly
    answer = SimpleNamespace(masks=[box], seg_prompts=torch.zeros(1, 256), timings={"total": 1 / 8})
    follower = Follower(sam, answer, image, config=FollowConfig(redecode_s=0.0, budget_share=1 / 8),
                        clock=lambda: clock[0])
    tiers = [follower.update(image).tier for _ in range(23)]
    assert [k for k, t in enumerate(tiers, 1) if t == "redecode"] == [1, 2, 3, 5, 9, 13, 17, 21], tiers
    assert set(tiers) == {"redecode", "flow"} and sam.calls == 8


def test_a_target_leaving_the_view_that_sam_no_longer_sees_is_lost_at_once_and_a_speck_is_not_it():
    """Leaving the view: the mask touched the edge, the camera pans so the flow carries only a sliver of it into
    the frame, and SAM's re-decode finds nothing of it → ``lost`` on that very update (waiting for three
    disagreements cost frames, more when updates fall behind the camera). Off the edge, a re-decoded speck
    overlapping where the target was is not taken for it."""
    import torch
    from types import SimpleNamespace

    image = rgb_texture()
    at_edge = np.zeros(image.shape[:2], bool)
    at_edge[60:130, 0:80] = True
    panned = np.roll(image, -70, axis=1)  # the camera turned: the target's 80 px are 10 px now
    sam = ScriptedSam([np.zeros_like(at_edge)] * 2)
    answer = SimpleNamespace(masks=[at_edge], seg_prompts=torch.zeros(1, 256), timings={})
    follower = Follower(sam, answer, image, config=FollowConfig(redecode_s=1e9), clock=lambda: 0.0)
    assert follower.update(panned).tier == "lost" and sam.calls == 1
    still = Follower(sam, answer, image, config=FollowConfig(redecode_s=1e9), clock=lambda: 0.0)
    assert still.update(image).tier != "lost", "still in view, only SAM's one miss: not lost yet"

    box = np.zeros(image.shape[:2], bool)
    box[60:130, 60:180] = True
    speck = np.zeros_like(box)
    speck[90:98, 100:108] = True  # 64 px inside the 8,400 px target: SAM lit up something else
    updates, _ = scripted_follow([speck, speck, speck], 3, box, image, redecode_s=0.0)
    assert [u.tier for u in updates] == ["flow", "flow", "lost"], [u.tier for u in updates]
    assert np.array_equal(updates[0].mask, box) and updates[0].confidence <= 0.5


def test_a_re_decode_yields_to_waiting_work_and_the_flow_carries_that_frame(tiny_lisa, room_image):
    """A server's queue holds a request: SAM's encoding for a re-decode stops between blocks (nothing kept), and the
    follower gives the frame the flow's mask instead, counting the re-decode it gave up."""
    from lisa_core.engine import Yielded

    answer = tiny_lisa.segment(room_image, "Where is the sink?", answer="Sure, it is [SEG].")
    state = tiny_lisa.image_state(room_image)
    with pytest.raises(Yielded):
        tiny_lisa.redecode(state, answer.seg_prompts, should_yield=lambda: True)
    assert state.sam_embedding is None
    assert tiny_lisa.redecode(state, answer.seg_prompts, should_yield=lambda: False)[0].shape[0] == 1

    image = rgb_texture()
    box = np.zeros(image.shape[:2], bool)
    box[60:130, 60:180] = True
    from types import SimpleNamespace

    import torch

    sam = ScriptedSam([box])
    follower = Follower(sam, SimpleNamespace(masks=[box], seg_prompts=torch.zeros(1, 256), timings={}), image,
                        config=FollowConfig(redecode_s=0.0), clock=lambda: 1.0)
    waiting = follower.update(image, should_yield=lambda: True)  # a re-decode is due (redecode_s 0)
    assert waiting.tier == FLOW and np.array_equal(waiting.mask, box) and follower.yielded == 1 and sam.calls == 0
    assert follower.update(image).tier == "redecode" and sam.calls == 1


def test_camera_motion_is_the_whole_view_s_shift_not_a_thing_moving_on_its_own():
    from lisa_core.follow import camera_motion

    grey = textured(seed=3)
    moved = shifted(grey, -9, 5)
    moved[40:100, 150:200] = shifted(grey, 20, 0)[40:100, 150:200]  # someone walking the other way
    transform, confidence = camera_motion(grey, moved)
    assert np.allclose(transform[:, 2], [-9, 5], atol=0.5) and np.allclose(transform[:, :2], np.eye(2), atol=0.01)
    assert confidence > 0.6
    assert camera_motion(grey, textured(seed=4))[1] < 0.5


def panning_away_and_back(sam_masks=()):
    """A camera panning right over a textured world until the target has left the view, then back: (frames, the
    target's mask on each, a follower of it from the first frame whose SAM answers ``sam_masks``, that SAM)."""
    import torch
    from types import SimpleNamespace

    world = np.dstack([textured(192, 520, seed=s) for s in range(3)])
    target = np.zeros(world.shape[:2], bool)
    target[60:130, 20:90] = True
    pans = [0, 12, 24, 36, 48, 60, 72, 84, 96, 108, 96, 84, 72, 60, 48, 36]
    frames = [world[:, x: x + 256] for x in pans]
    truth = [target[:, x: x + 256] for x in pans]
    sam = ScriptedSam(sam_masks)
    answer = SimpleNamespace(masks=[truth[0]], seg_prompts=torch.zeros(1, 256), timings={})
    follower = Follower(sam, answer, frames[0], config=FollowConfig(redecode_s=1e9), clock=lambda: 0.0)
    return frames, truth, follower, sam


def test_a_target_carried_out_of_the_view_by_the_camera_is_lost_then_followed_again_when_it_comes_back():
    """While the target leaves the view and comes back, the mask is the target as last seen whole, moved with the
    camera (the flow alone could only shrink it); ``lost`` on the first frame nothing of it is in view; no SAM
    re-decode is needed for any of it (``redecode_s`` far away; the scripted SAM has no answer to give)."""
    frames, truth, follower, sam = panning_away_and_back()
    updates = [follower.update(frame) for frame in frames[1:]]
    gone = [k for k, t in enumerate(truth[1:]) if t.sum() < 30]
    assert [k for k, u in enumerate(updates) if u.lost] == gone and sam.calls == 0, [u.tier for u in updates]
    assert all(u.area == 0 for u in updates if u.lost), "a lost update's mask is empty"
    for u, t in zip(updates, truth[1:]):
        if t.sum() >= 30:
            assert u.tier == FLOW and overlap(u.mask, t) > 0.9, (overlap(u.mask, t), t.sum())


def test_a_follow_asks_again_while_lost_but_not_while_the_camera_has_the_target_out_of_view():
    """``FollowRun`` with re-queries on: while the camera's motion has the target out of view, asking again would
    only find another (or nothing); once that motion is unsure (a frame with nothing in common) and SAM finds nothing,
    the question is asked again."""
    from types import SimpleNamespace

    from lisa_core.follow import FollowOptions, FollowRun
    from lisa_core.serving import InferenceQueue, LatestFrame

    frames, truth, follower, sam = panning_away_and_back([np.zeros((192, 256), bool)] * 3)
    asked, latest = [], LatestFrame()

    def requery(frame, state):
        asked.append(frame)
        raise ValueError("no answer in this test")

    run = FollowRun(follower, InferenceQueue(), latest, lambda frame: SimpleNamespace(image=frame.raw),
                    on_update=lambda update, frame: None, on_end=lambda reason: None,
                    options=FollowOptions(rate_hz=0, requery_every_s=0.0), requery=requery)
    for frame in frames[1:10]:  # out of view from the 8th frame on
        latest.put(frame, None)
        run._step()
    assert run.last.lost and follower.out_of_view and not asked and sam.calls == 0
    latest.put(np.dstack([textured(seed=9)] * 3), None)  # nothing in common: where it went is unknown
    run._step()
    assert run.last.lost and not follower.out_of_view and sam.calls == 1 and len(asked) == 1
