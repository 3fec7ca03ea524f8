"""Engine behaviour on the tiny checkpoint: results, sessions and their caches, history, bad input."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from lisa_core import ImageError
from lisa_core.prompt import IMAGE_TOKEN_INDEX, first_turn_text, next_turn_text

QUESTION = "Where can I wash my hands? Please output segmentation mask."


def greedy_without_cache(lisa, image, ids, n):
    """What the reference does: re-run the whole sequence for each token."""
    model = lisa.model
    features = model.encode_clip(lisa.clip_processor(images=image, return_tensors="pt")["pixel_values"])[0]
    out = []
    with torch.inference_mode():
        for _ in range(n):
            hidden = model.model(inputs_embeds=model.embed_ids(torch.tensor(ids + out), features),
                                 use_cache=False).last_hidden_state[0]
            out.append(int(model.lm_head(hidden[-1]).argmax()))
            if out[-1] == lisa.tokenizer.eos_token_id:
                break
    return out


def test_chat_result(tiny_lisa, room_image):
    result = tiny_lisa.chat(room_image, QUESTION, max_new_tokens=24)
    n_seg = result.token_ids.count(tiny_lisa.tokenizer.seg_token_id)
    assert n_seg > 0, "the tiny factory makes [SEG] likely, so the mask path must run"
    assert len(result.masks) == len(result.scores) == n_seg
    assert result.mask_logits.shape == (n_seg, *room_image.shape[:2])
    assert result.mask_logits.dtype == np.float32
    for mask, logits in zip(result.masks, result.mask_logits):
        assert mask.dtype == bool and mask.shape == room_image.shape[:2]
        assert (mask == (logits > 0)).all()
    assert "[SEG]" in result.text
    assert result.union_mask(room_image.shape[:2]).sum() >= max(m.sum() for m in result.masks)
    assert {"clip", "prefill", "decode", "sam_encode", "mask_decode", "total"} <= set(result.timings)


def test_chat_matches_recompute_without_cache(tiny_lisa, room_image):
    ids = tiny_lisa.tokenizer.encode(first_turn_text(QUESTION))
    result = tiny_lisa.chat(room_image, QUESTION, max_new_tokens=12)
    assert result.token_ids == greedy_without_cache(tiny_lisa, room_image, ids, 12)


def test_session_reuses_image_and_cache(tiny_lisa, room_image, monkeypatch):
    calls = {"clip": 0, "sam": 0}
    for name, key in (("encode_clip", "clip"), ("encode_sam", "sam")):
        original = getattr(tiny_lisa.model, name)

        def counting(*args, _original=original, _key=key):
            calls[_key] += 1
            return _original(*args)

        monkeypatch.setattr(tiny_lisa.model, name, counting)
    session = tiny_lisa.session(room_image)
    first = session.chat(QUESTION, max_new_tokens=10)
    after_first = session.cached_positions
    second = session.chat("And where can I sit? Please output segmentation mask.", max_new_tokens=10)
    after_second = session.cached_positions
    third = session.chat("Thanks. What else is there?", max_new_tokens=10)
    any_mask = any(r.masks for r in (first, second, third))
    assert calls == {"clip": 1, "sam": 1 if any_mask else 0}
    assert (first.turn, second.turn, third.turn) == (1, 2, 3)
    assert len(session.turns) == 3
    # turn 2 fed only what was new: the last token of turn 1, </s>, and the new question
    new_question = tiny_lisa.tokenizer.encode(next_turn_text("And where can I sit? Please output segmentation mask."),
                                              add_bos=False)
    fed = 1 + (first.token_ids[-1] != tiny_lisa.tokenizer.eos_token_id) + len(new_question)
    assert after_second - after_first == fed + len(second.token_ids) - 1
    assert session.cache.get_seq_length() == session.cached_positions


def test_follow_up_matches_full_recompute(tiny_lisa, room_image):
    session = tiny_lisa.session(room_image)
    first = session.chat(QUESTION, max_new_tokens=8)
    second = session.chat("And where can I sit?", max_new_tokens=8)
    tok = tiny_lisa.tokenizer
    conversation = tok.encode(first_turn_text(QUESTION)) + first.token_ids
    if first.token_ids[-1] != tok.eos_token_id:
        conversation.append(tok.eos_token_id)
    conversation += tok.encode(next_turn_text("And where can I sit?"), add_bos=False)
    assert second.token_ids == greedy_without_cache(tiny_lisa, room_image, conversation, 8)


def test_history_is_fed_as_closed_turns(tiny_lisa, room_image):
    session = tiny_lisa.session(room_image)
    session.add_turn("What is this room?", "Sure, it is [SEG].")
    tok = tiny_lisa.tokenizer
    expected = tok.encode(first_turn_text("What is this room?")) + tok.encode("Sure, it is [SEG].", add_bos=False)
    assert session.pending == expected + [tok.eos_token_id]
    result = tiny_lisa.chat(room_image, "And where can I sit?", max_new_tokens=6,
                            history=[("What is this room?", "Sure, it is [SEG].")])
    assert len(result.masks) == result.token_ids.count(tok.seg_token_id), "history's [SEG] makes no mask"
    assert result.turn == 2


def test_no_seg_skips_sam(tiny_lisa, room_image):
    session = tiny_lisa.session(room_image)
    result = session.chat(QUESTION, max_new_tokens=1)
    if result.token_ids == [tiny_lisa.tokenizer.seg_token_id]:
        pytest.skip("the first generated token is [SEG] for this checkpoint; nothing to show")
    assert result.masks == [] and result.mask_logits.shape == (0, *room_image.shape[:2])
    assert "sam_encode" not in result.timings and session.state.sam_embedding is None


def test_on_token_stops_generation(tiny_lisa, room_image):
    seen = []
    result = tiny_lisa.chat(room_image, QUESTION, max_new_tokens=20,
                            on_token=lambda token, text: seen.append(token) or len(seen) < 3)
    assert len(result.token_ids) == 3 and seen == result.token_ids


def test_interrupted_turn_leaves_session_usable(tiny_lisa, room_image):
    session = tiny_lisa.session(room_image)
    session.chat(QUESTION, max_new_tokens=6)
    positions = session.cached_positions

    def cancel(token, text):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.chat("And where can I sit?", max_new_tokens=6, on_token=cancel)
    assert session.cached_positions == positions == session.cache.get_seq_length()
    resumed = session.chat("And where can I sit?", max_new_tokens=6)
    fresh = tiny_lisa.session(room_image)
    fresh.chat(QUESTION, max_new_tokens=6)
    assert resumed.token_ids == fresh.chat("And where can I sit?", max_new_tokens=6).token_ids


def test_segment_teacher_forced(tiny_lisa, room_image):
    two = tiny_lisa.segment(room_image, "Segment the sink and the table.", "The sink is [SEG] and the table [SEG].")
    assert len(two.masks) == 2 and two.text == "The sink is [SEG] and the table [SEG]."
    assert IMAGE_TOKEN_INDEX in two.token_ids
    assert tiny_lisa.segment(room_image, "What is this?", "A room.").masks == []


@pytest.mark.parametrize("image, message", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10), np.uint8), "H×W×3"),
    (np.zeros((10, 10, 4), np.uint8), "H×W×3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array"),
    # found by bench_robustness: a 1×3840 frame cost 2.4 s and +300 MB in CLIP's resize, then failed in SAM's
    (np.zeros((1, 3840, 3), np.uint8), "3840×1: one side is over 20× the other"),
    (np.zeros((2160, 100, 3), np.uint8), "100×2160: one side is over 20× the other"),
])
def test_bad_images(tiny_lisa, image, message):
    with pytest.raises(ImageError, match=message):
        tiny_lisa.chat(image, QUESTION)


def test_a_three_pixel_tall_image_is_read_channels_last(tiny_lisa):
    """transformers guesses channels-first for an H×W×3 array with H = 3 (or 1): the image must be said to be
    channels-last, else CLIP sees the wrong pixels. Equal to the same strip given as an unambiguous 4-row image cut."""
    from lisa_core.preprocess import clip_pixels

    strip = np.random.default_rng(0).integers(0, 255, (3, 48, 3), np.uint8)
    pixels = clip_pixels(tiny_lisa.clip_processor, strip)
    as_pil = tiny_lisa.clip_processor(images=Image.fromarray(strip), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and torch.equal(pixels, as_pil)


def test_bad_text_and_limits(tiny_lisa, room_image):
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            tiny_lisa.chat(room_image, text)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_lisa.chat(room_image, QUESTION, max_new_tokens=0)
    session = tiny_lisa.session(room_image)
    with pytest.raises(ValueError, match="context"):
        session.chat("where is the sink? " * 2000)
    assert session.cached_positions == 0 and session.turns == []
    assert session.chat(QUESTION, max_new_tokens=3).turn == 1


def test_generation_stops_at_context_end(tiny_lisa, room_image, monkeypatch):
    monkeypatch.setattr(tiny_lisa.model.config, "max_position_embeddings", 460)
    prompt = len(tiny_lisa.tokenizer.encode(first_turn_text(QUESTION))) - 1 + 256  # the image takes 256 positions
    assert prompt < 460
    # an end-of-turn id that never comes: generation can only stop at the context's end
    monkeypatch.setattr(tiny_lisa, "tokenizer", dataclasses.replace(tiny_lisa.tokenizer, eos_token_id=-1))
    result = tiny_lisa.chat(room_image, QUESTION, max_new_tokens=1000)
    assert prompt + len(result.token_ids) == 460
