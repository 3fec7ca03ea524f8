"""Starting LISA training from a LLaVA base (+ SAM .pth) or from a LISA checkpoint (own SAM or .pth):
``training.init_model.load_for_training``."""
import json
import re

import numpy as np
import pytest
import torch

from conftest import REFERENCE
from lisa_core import CheckpointError, Lisa
from lisa_core.checkpoint import load_tokenizer
from lisa_core.prompt import IM_END, IM_START, SEG_TOKEN
from lisa_core.tiny import LISA_ONLY_CONFIG_FIELDS, make_tiny_llava, make_tiny_sam_pth
from training.init_model import checkpoint_kind, load_for_training

QUESTION = "Where can I wash my hands?"
BASE_VOCAB = 400  # the tiny SentencePiece model's pieces


@pytest.fixture(scope="module")
def llava_ckpt(tmp_path_factory):
    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "llava-tiny")


@pytest.fixture(scope="module")
def sam_pth(tmp_path_factory):
    return make_tiny_sam_pth(tmp_path_factory.mktemp("sam") / "sam_tiny.pth", seed=1)


@pytest.fixture(scope="module")
def from_llava(llava_ckpt, sam_pth) -> Lisa:
    return load_for_training(str(llava_ckpt), str(sam_pth))


def weights(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "pytorch_model.bin", map_location="cpu", weights_only=True)


def sam_of(lisa: Lisa) -> dict[str, torch.Tensor]:
    return lisa.model.sam.state_dict()


# ---------------------------------------------------------------------------------------------------- detection
def test_llava_fixture_has_the_llava_layout_and_kinds_are_told_apart(llava_ckpt, tiny_ckpt):
    config = json.loads((llava_ckpt / "config.json").read_text())
    assert config["mm_vision_tower"] == "clip_vision" and config["mm_use_im_start_end"] is False
    assert not set(LISA_ONLY_CONFIG_FIELDS) & set(config)
    assert not (llava_ckpt / "added_tokens.json").exists()
    names = weights(llava_ckpt)
    assert "model.mm_projector.weight" in names and names["model.embed_tokens.weight"].shape[0] == BASE_VOCAB
    assert not [k for k in names if "visual_model" in k or "text_hidden_fcs" in k]
    assert checkpoint_kind(llava_ckpt) == "llava"
    assert checkpoint_kind(tiny_ckpt) == "lisa"


# ---------------------------------------------------------------------------------------------------- LLaVA base
def test_llava_base_gets_the_lisa_tokens(from_llava, llava_ckpt, tiny_ckpt):
    hf = from_llava.tokenizer.hf
    assert from_llava.tokenizer.seg_token_id == BASE_VOCAB
    assert [hf.convert_tokens_to_ids(t) for t in (IM_START, IM_END)] == [BASE_VOCAB + 1, BASE_VOCAB + 2]
    assert len(hf) == from_llava.model.config.vocab_size == BASE_VOCAB + 3
    # same SentencePiece model as the official-layout tiny LISA: the ids must agree, added tokens included
    assert (llava_ckpt / "tokenizer.model").read_bytes() == (tiny_ckpt / "tokenizer.model").read_bytes()
    official = load_tokenizer(tiny_ckpt)
    text = f"USER: <im_start>x<im_end>\n{QUESTION} ASSISTANT: Sure, it is {SEG_TOKEN}. And {SEG_TOKEN} ."
    assert hf(text).input_ids == official(text).input_ids


def test_llava_base_embeddings_grow_by_three_mean_rows(from_llava, llava_ckpt):
    base = weights(llava_ckpt)
    model = from_llava.model
    for key, grown in (("model.embed_tokens.weight", model.model.embed_tokens.weight),
                       ("lm_head.weight", model.lm_head.weight)):
        old = base[key]
        assert grown.shape == (BASE_VOCAB + 3, old.shape[1])
        assert torch.equal(grown[:BASE_VOCAB], old)
        assert torch.allclose(grown[BASE_VOCAB:], old.mean(0).expand(3, -1), atol=1e-7)
    for key in ("model.mm_projector.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(model.state_dict()[key], base[key])


def test_llava_base_sam_is_the_pth_and_text_fcs_are_new(from_llava, sam_pth):
    pth = torch.load(sam_pth, map_location="cpu", weights_only=True)
    sam = sam_of(from_llava)
    assert set(sam) == set(pth)
    assert all(torch.equal(sam[k], pth[k]) for k in pth)
    first, _, last, _ = from_llava.model.model.text_hidden_fcs[0]
    assert first.weight.shape == (64, 64) and last.weight.shape == (256, 64)
    bound = 1 / 64 ** 0.5  # PyTorch's default Linear init: U(±1/√fan_in), biases included (LLaMA's init zeroes them)
    for layer in (first, last):
        assert 0 < layer.weight.abs().max() <= bound and 0 < layer.bias.abs().max() <= bound
    assert from_llava.model.config.out_dim == 256 and from_llava.model.config.mm_use_im_start_end is True


def test_llava_base_runs_and_round_trips_through_save(from_llava, room_image, tmp_path):
    segmented = from_llava.segment(room_image, QUESTION)
    assert len(segmented.masks) == 1 and segmented.mask_logits.shape == (1, *room_image.shape[:2])
    chatted = from_llava.chat(room_image, QUESTION, max_new_tokens=6)
    assert 1 <= len(chatted.token_ids) <= 6

    out = from_llava.save_pretrained(tmp_path / "lisa-from-llava")
    assert json.loads((out / "added_tokens.json").read_text()) == {SEG_TOKEN: 400, IM_START: 401, IM_END: 402}
    assert not (out / "tokenizer.json").exists()
    assert (out / "clip_vision" / "config.json").is_file()  # the in-checkpoint tower travels along
    config = json.loads((out / "config.json").read_text())
    assert (config["vision_tower"], config["out_dim"], config["train_mask_decoder"], config["vocab_size"]) == \
        ("clip_vision", 256, True, 403)
    check_official_key_patterns(set(weights(out)))

    reloaded = Lisa.from_pretrained(str(out), device="cpu")
    text = f"{QUESTION} Sure, it is {SEG_TOKEN}. And {SEG_TOKEN} ."
    assert reloaded.tokenizer.hf(text).input_ids == from_llava.tokenizer.hf(text).input_ids
    again = reloaded.segment(room_image, QUESTION)
    np.testing.assert_array_equal(again.mask_logits, segmented.mask_logits)
    assert reloaded.chat(room_image, QUESTION, max_new_tokens=6).token_ids == chatted.token_ids


def numbered_as_n(key: str) -> str:
    return re.sub(r"\.\d+(?=\.)", ".N", key)


def check_official_key_patterns(names: set[str]) -> None:
    """Same key names as LISA-7B-v1 once layer/block numbers are replaced by N."""
    official = REFERENCE.parent / "lisa_checkpoint" / "keys_7b.txt"
    if not official.is_file():
        return
    expected = {numbered_as_n(line.split("\t")[0]) for line in official.read_text().splitlines() if line.strip()}
    assert {numbered_as_n(k) for k in names} == {k for k in expected if not k.endswith("rotary_emb.inv_freq")}


def test_llava_base_without_start_end_tokens_in_prompts(llava_ckpt, sam_pth):
    lisa = load_for_training(str(llava_ckpt), str(sam_pth), use_mm_start_end=False)
    assert lisa.model.config.mm_use_im_start_end is False
    ids = lisa.session(np.zeros((8, 8, 3), np.uint8))._question_ids(QUESTION)
    assert BASE_VOCAB + 1 not in ids and -200 in ids


# ---------------------------------------------------------------------------------------------------- LISA checkpoint
def test_lisa_checkpoint_keeps_its_sam_bit_exact(tiny_ckpt):
    saved = weights(tiny_ckpt)
    sam = sam_of(load_for_training(str(tiny_ckpt)))
    assert all(torch.equal(v, saved["model.visual_model." + k]) for k, v in sam.items())


def test_lisa_checkpoint_sam_replaced_by_pth(tiny_ckpt, sam_pth, room_image):
    saved, pth = weights(tiny_ckpt), torch.load(sam_pth, map_location="cpu", weights_only=True)
    lisa = load_for_training(str(tiny_ckpt), str(sam_pth))
    sam = sam_of(lisa)
    assert all(torch.equal(sam[k], pth[k]) for k in pth)
    iou_token = "mask_decoder.iou_token.weight"
    assert not torch.equal(pth[iou_token], saved["model.visual_model." + iou_token])
    state = lisa.model.state_dict()
    kept = [k for k in saved if "visual_model" not in k and "rotary_emb" not in k]
    assert all(torch.equal(state[k], saved[k]) for k in kept)
    assert lisa.segment(room_image, QUESTION).mask_logits.shape == (1, *room_image.shape[:2])


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture
def broken_pth(sam_pth, tmp_path):
    def write(change) -> str:
        state = torch.load(sam_pth, map_location="cpu", weights_only=True)
        change(state)
        torch.save(state, tmp_path / "broken.pth")
        return str(tmp_path / "broken.pth")

    return write


def test_llava_base_needs_a_sam_pth(llava_ckpt):
    with pytest.raises(CheckpointError, match="LLaVA base checkpoint.*sam_checkpoint"):
        load_for_training(str(llava_ckpt))


def test_missing_checkpoint_dir_and_missing_pth(tmp_path, llava_ckpt):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_for_training(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="no weights in"):
        load_for_training(str(tmp_path))
    with pytest.raises(CheckpointError, match="sam.pth does not exist"):
        load_for_training(str(llava_ckpt), str(tmp_path / "sam.pth"))


def test_pth_with_a_wrong_shape_is_named(llava_ckpt, broken_pth):
    path = broken_pth(lambda s: s.update({"mask_decoder.iou_token.weight": torch.zeros(1, 128)}))
    with pytest.raises(CheckpointError, match=r"mask_decoder\.iou_token\.weight.*\(1, 128\), \(1, 256\)"):
        load_for_training(str(llava_ckpt), path)
    path = broken_pth(lambda s: s.pop("prompt_encoder.no_mask_embed.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing \['prompt_encoder\.no_mask_embed\.weight'\]"):
        load_for_training(str(llava_ckpt), path)
    path = broken_pth(lambda s: [s.pop(k) for k in list(s) if k.startswith("image_encoder.")])
    with pytest.raises(CheckpointError, match="not a SAM checkpoint in segment-anything's layout"):
        load_for_training(str(llava_ckpt), path)


def test_pth_of_another_sam_size_does_not_replace_a_lisa_sam(tiny_ckpt, tmp_path):
    larger = make_tiny_sam_pth(tmp_path / "sam_512.pth", img_size=512)
    with pytest.raises(CheckpointError, match=r"does not fit the LISA checkpoint's SAM.*image_encoder\.pos_embed"):
        load_for_training(str(tiny_ckpt), str(larger))


def test_a_checkpoint_that_is_neither(llava_ckpt, tmp_path):
    state = weights(llava_ckpt)
    projector = state.pop("model.mm_projector.weight")
    state["model.mm_projector.0.weight"] = projector
    (tmp_path / "config.json").write_text((llava_ckpt / "config.json").read_text())
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"neither a LISA checkpoint.*mm_projector\.0\.weight.*MLP projector"):
        load_for_training(str(tmp_path))


def test_kind_is_read_from_safetensors_headers(llava_ckpt, tmp_path):
    from safetensors.torch import save_file

    save_file(weights(llava_ckpt), str(tmp_path / "model.safetensors"))
    assert checkpoint_kind(tmp_path) == "llava"
    save_file({"model.text_hidden_fcs.0.0.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    assert checkpoint_kind(tmp_path) == "lisa"
