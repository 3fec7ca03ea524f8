"""Checkpoints in the official LISA layout: module layout vs the official key lists, SAM hyper-parameters read from
weight shapes, save/load round trip, sharded and safetensors weights, load errors, quantisation and dtype."""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights

from conftest import REFERENCE
from lisa_core import CheckpointError, Lisa, QuantizationError
from lisa_core.model import LisaConfig, LisaForCausalLM, SamSpec, build_sam

KEY_LISTS = REFERENCE.parent / "lisa_checkpoint"  # the shared data dir next to reference_tiny (see conftest)
INV_FREQ = "rotary_emb.inv_freq"
QUESTION = "Where can I wash my hands?"
INV_FREQ_KEY = "model.layers.0.self_attn.rotary_emb.inv_freq"


def read_key_list(name: str) -> dict[str, tuple[int, ...]]:
    """``key<TAB>[d0, d1, ...]`` lines → {key: shape}, in file order."""
    path = KEY_LISTS / name
    if not path.is_file():
        pytest.skip(f"official key list {path} is not available on this machine")
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")
        shapes[key] = tuple(int(d) for d in shape.strip().strip("[]").split(","))
    return shapes


# ---------------------------------------------------------------------------------------------------- a. layout
OFFICIAL_DIMS = {
    "7b": dict(vocab_size=32004, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32),
    "13b": dict(vocab_size=32003, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                num_attention_heads=40),
}


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_module_layout_matches_official_keys(size):
    dims = OFFICIAL_DIMS[size]
    expected = {k: v for k, v in read_key_list(f"keys_{size}.txt").items() if not k.endswith(INV_FREQ)}
    config = LisaConfig(**dims, num_key_value_heads=dims["num_attention_heads"], mm_hidden_size=1024, out_dim=256,
                        tie_word_embeddings=False, sam_image_encoder=asdict(SamSpec()))
    with init_empty_weights():
        model = LisaForCausalLM(config)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if "vision_tower" not in k}
    assert sorted(set(got) - set(expected)) == []  # no key the official checkpoint lacks
    assert sorted(set(expected) - set(got)) == []  # every official key exists
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert wrong == {}
    assert len(got) == len(expected)


# ---------------------------------------------------------------------------------------------------- b. SamSpec
def test_sam_spec_from_official_7b_shapes_is_vit_h():
    spec = SamSpec.from_state_dict(read_key_list("keys_7b.txt"))
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.global_attn_indexes, spec.window_size,
            spec.img_size) == (1280, 32, 16, [7, 15, 23, 31], 14, 1024)
    assert spec.mlp_ratio == pytest.approx(4.0)
    assert spec == SamSpec()  # the ViT-H defaults


def test_sam_spec_from_reference_tiny_checkpoint():
    weights = REFERENCE / "ckpt" / "pytorch_model.bin"
    if not weights.is_file():
        pytest.skip(f"reference checkpoint {weights} is not available on this machine")
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    spec = SamSpec.from_state_dict({k: tuple(v.shape) for k, v in state.items()})
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.global_attn_indexes, spec.window_size,
            spec.img_size) == (48, 3, 3, [1, 2], 14, 1024)


def test_sam_spec_round_trips_a_vit_b_layout():
    vit_b = SamSpec(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11], window_size=14,
                    img_size=1024)
    with init_empty_weights():
        sam = build_sam(vit_b)
    shapes = {f"model.visual_model.{k}": tuple(v.shape) for k, v in sam.state_dict().items()}
    assert shapes["model.visual_model.image_encoder.patch_embed.proj.weight"][0] == 768
    assert SamSpec.from_state_dict(shapes) == vit_b
    # the same shapes under another prefix
    bare = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    assert SamSpec.from_state_dict(bare, prefix="image_encoder.") == vit_b


def test_sam_spec_without_encoder_raises():
    with pytest.raises(ValueError, match="SAM image encoder"):
        SamSpec.from_state_dict({"model.embed_tokens.weight": (10, 4)})


# ---------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_state(tiny_ckpt) -> dict[str, torch.Tensor]:
    return torch.load(tiny_ckpt / "pytorch_model.bin", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_reply(tiny_lisa):
    from lisa_core.output import read_image
    from lisa_core.tiny import SAMPLE_IMAGE

    return tiny_lisa.chat(read_image(SAMPLE_IMAGE), QUESTION, max_new_tokens=8)


def copy_without_weights(src: Path, dst: Path, *, skip=("pytorch_model.bin",)) -> Path:
    """A copy of the checkpoint dir (tokenizer, config, clip_vision/) minus the named files."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d) == src and n in skip])
    return dst


def assert_same_weights(a: Lisa, b: Lisa):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert different == []


# ---------------------------------------------------------------------------------------------------- c. round trip
def test_save_and_reload_round_trip(tiny_lisa, tiny_ckpt, tmp_path, room_image):
    out = tmp_path / "saved"
    tiny_lisa.save_pretrained(out)

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["vision_tower"]
    assert (out / "tokenizer.model").is_file()
    added = json.loads((out / "added_tokens.json").read_text())
    assert "[SEG]" in added
    state = torch.load(out / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
    assert state and not [k for k in state if "vision_tower" in k]

    reloaded = Lisa.from_pretrained(str(out), vision_tower=str(tiny_ckpt / "clip_vision"), device="cpu")
    assert_same_weights(tiny_lisa, reloaded)
    before = tiny_lisa.chat(room_image, QUESTION, max_new_tokens=8)
    after = reloaded.chat(room_image, QUESTION, max_new_tokens=8)
    assert after.token_ids == before.token_ids
    assert after.mask_logits.shape == before.mask_logits.shape
    np.testing.assert_array_equal(after.mask_logits, before.mask_logits)
    # the chat above may produce no [SEG] in 8 tokens; the teacher-forced path always makes one mask
    before = tiny_lisa.segment(room_image, QUESTION, "Sure, it is [SEG].")
    after = reloaded.segment(room_image, QUESTION, "Sure, it is [SEG].")
    assert before.mask_logits.shape == (1, *room_image.shape[:2])
    np.testing.assert_array_equal(after.mask_logits, before.mask_logits)


def test_round_trip_keeps_a_fast_only_tokenizer(tiny_ckpt, tmp_path):
    """A checkpoint whose tokenizer is only ``tokenizer.json`` loads; what it saves must load again."""
    from transformers import AutoTokenizer

    tokenizer_files = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "fast_tokenizer", skip=tokenizer_files)
    AutoTokenizer.from_pretrained(str(tiny_ckpt)).save_pretrained(str(ckpt))
    (ckpt / "tokenizer.model").unlink(missing_ok=True)
    assert (ckpt / "tokenizer.json").is_file()
    lisa = Lisa.from_pretrained(str(ckpt), device="cpu")
    out = lisa.save_pretrained(tmp_path / "saved_fast")
    reloaded = Lisa.from_pretrained(str(out), vision_tower=str(tiny_ckpt / "clip_vision"), device="cpu")
    assert reloaded.tokenizer.seg_token_id == lisa.tokenizer.seg_token_id


# ---------------------------------------------------------------------------------------------------- d. sharded
def test_sharded_bin_with_index_loads(tiny_lisa, tiny_ckpt, tiny_state, tiny_reply, room_image, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "sharded")
    keys = list(tiny_state)
    half = len(keys) // 2
    shards = {"pytorch_model-00001-of-00002.bin": keys[:half], "pytorch_model-00002-of-00002.bin": keys[half:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        torch.save({k: tiny_state[k] for k in shard_keys}, ckpt / name)
        weight_map.update({k: name for k in shard_keys})
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert not (ckpt / "pytorch_model.bin").exists()

    lisa = Lisa.from_pretrained(str(ckpt), device="cpu")
    assert_same_weights(tiny_lisa, lisa)
    assert lisa.chat(room_image, QUESTION, max_new_tokens=8).token_ids == tiny_reply.token_ids


def test_safetensors_with_inv_freq_loads(tiny_lisa, tiny_ckpt, tiny_state, tiny_reply, room_image, tmp_path):
    from safetensors.torch import save_file

    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "safetensors")
    head_dim = tiny_lisa.model.config.hidden_size // tiny_lisa.model.config.num_attention_heads
    state = {k: v.contiguous().clone() for k, v in tiny_state.items()}
    # old (transformers 4.31) checkpoints carry this buffer; it must be ignored, not reported as unexpected
    state[INV_FREQ_KEY] = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    save_file(state, str(ckpt / "model.safetensors"))
    assert not (ckpt / "pytorch_model.bin").exists()

    lisa = Lisa.from_pretrained(str(ckpt), device="cpu")
    assert INV_FREQ_KEY not in lisa.model.state_dict()
    assert_same_weights(tiny_lisa, lisa)
    assert lisa.chat(room_image, QUESTION, max_new_tokens=8).token_ids == tiny_reply.token_ids


# ---------------------------------------------------------------------------------------------------- e. errors
def test_directory_without_weights(tiny_ckpt, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "no_weights")
    with pytest.raises(CheckpointError, match="no weights") as err:
        Lisa.from_pretrained(str(ckpt), device="cpu")
    assert "pytorch_model.bin" in str(err.value)


def test_index_naming_missing_shard(tiny_ckpt, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "broken_index")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "pytorch_model-00001-of-00001.bin"}}
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="pytorch_model-00001-of-00001.bin"):
        Lisa.from_pretrained(str(ckpt), device="cpu")


def test_directory_without_config(tiny_ckpt, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "no_config", skip=("config.json",))
    with pytest.raises(CheckpointError, match="config.json"):
        Lisa.from_pretrained(str(ckpt), device="cpu")


def test_missing_key(tiny_ckpt, tiny_state, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "missing_key")
    dropped = "model.text_hidden_fcs.0.2.bias"
    assert dropped in tiny_state
    torch.save({k: v for k, v in tiny_state.items() if k != dropped}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing") as err:
        Lisa.from_pretrained(str(ckpt), device="cpu")
    assert dropped in str(err.value)
    assert "1 missing" in str(err.value)


@pytest.mark.parametrize("dropped", [
    "model.visual_model.image_encoder.pos_embed",
    "model.visual_model.image_encoder.blocks.1.attn.rel_pos_h",
])
def test_missing_sam_encoder_key(tiny_ckpt, tiny_state, tmp_path, dropped):
    """A key the SAM hyper-parameters are read from is missing: still a CheckpointError naming the key."""
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "missing_sam_key")
    assert dropped in tiny_state
    torch.save({k: v for k, v in tiny_state.items() if k != dropped}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        Lisa.from_pretrained(str(ckpt), device="cpu")
    assert dropped in str(err.value)


def test_unexpected_key(tiny_ckpt, tiny_state, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "unexpected_key")
    extra = "model.some_adapter.weight"
    torch.save({**tiny_state, extra: torch.zeros(3)}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="unexpected") as err:
        Lisa.from_pretrained(str(ckpt), device="cpu")
    assert extra in str(err.value)
    assert "missing" not in str(err.value)  # only the problems there are


def test_wrong_shape(tiny_ckpt, tiny_state, tmp_path):
    ckpt = copy_without_weights(tiny_ckpt, tmp_path / "wrong_shape")
    key = "model.mm_projector.bias"
    torch.save({**tiny_state, key: torch.zeros(tiny_state[key].shape[0] + 1)}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="wrong shape") as err:
        Lisa.from_pretrained(str(ckpt), device="cpu")
    assert key in str(err.value)


def test_wrong_vision_tower_path(tiny_ckpt, tmp_path):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(CheckpointError, match="vision tower") as err:
        Lisa.from_pretrained(str(tiny_ckpt), vision_tower=str(missing), device="cpu")
    assert str(missing) in str(err.value)


def test_nonexistent_local_path():
    with pytest.raises(CheckpointError, match="/nonexistent/ckpt"):
        Lisa.from_pretrained("/nonexistent/ckpt", device="cpu")


# ---------------------------------------------------------------------------------------------------- f. quantisation
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_quantization_on_cpu_is_refused(tiny_ckpt, mode):
    with pytest.raises(QuantizationError, match="CUDA") as err:
        Lisa.from_pretrained(str(tiny_ckpt), device="cpu", quantization=mode)
    assert mode in str(err.value)


def test_unknown_quantization_mode(tiny_ckpt):
    with pytest.raises(QuantizationError, match="3bit"):
        Lisa.from_pretrained(str(tiny_ckpt), device="cpu", quantization="3bit")


# ---------------------------------------------------------------------------------------------------- g. dtype
def test_bfloat16_loading_and_chat(tiny_ckpt, room_image):
    lisa = Lisa.from_pretrained(str(tiny_ckpt), device="cpu", dtype="bfloat16")
    llm = lisa.model
    assert lisa.dtype == torch.bfloat16
    assert llm.lm_head.weight.dtype == torch.bfloat16
    assert llm.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert llm.model.norm.weight.dtype == torch.bfloat16
    assert llm.model.mm_projector.weight.dtype == torch.bfloat16

    result = lisa.chat(room_image, QUESTION, max_new_tokens=2)
    assert 1 <= len(result.token_ids) <= 2
    assert len(result.masks) == len(result.scores) == result.mask_logits.shape[0]
    for mask in result.masks:
        assert mask.dtype == np.bool_ and mask.shape == room_image.shape[:2]
    # the teacher-forced path always runs SAM once: its mask must come back as a bool array too
    forced = lisa.segment(room_image, QUESTION, "Sure, it is [SEG].")
    assert len(forced.masks) == 1
    assert forced.masks[0].dtype == np.bool_ and forced.masks[0].shape == room_image.shape[:2]
    assert forced.mask_logits.dtype == np.float32
    assert np.isfinite(forced.mask_logits).all()
