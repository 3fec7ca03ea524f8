"""Run-time LoRA adapters on the engine: ``lisa-export --adapter-only`` output loaded on the base model, switched back
and forth against the merged exports of the same weights, and bad adapters refused with the model left as it was."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lisa_core import AdapterError, Lisa, StaleSessionError
from lisa_core.adapters import ADAPTER_CONFIG, TRAINED_WEIGHTS

pytest.importorskip("peft", reason="peft is not installed")

QUESTION = "Where can I wash my hands?"
ANSWER = "Sure, it is [SEG]."
LORA_FILE = "adapter_model.safetensors"


def outputs(lisa, image) -> dict:
    """What an adapter changes: teacher-forced mask logits (LLM, text_hidden_fcs, mask decoder), the LLM's logits over
    that conversation (embed_tokens, LoRA, lm_head) and a greedy reply with its masks (KV-cache decoding)."""
    seg = lisa.segment(image, QUESTION, ANSWER)
    with torch.inference_mode():
        features = lisa.clip_features(lisa.image_state(image))
        embeds = lisa.model.embed_ids(torch.tensor(seg.token_ids), features)
        logits = lisa.model.lm_head(lisa.model.model(inputs_embeds=embeds).last_hidden_state)[0].float().numpy()
    chat = lisa.chat(image, QUESTION, max_new_tokens=6)
    return {"masks": seg.mask_logits, "logits": logits, "reply": np.array(chat.token_ids),
            "chat_masks": chat.mask_logits, "adapter": (seg.adapter, chat.adapter)}


def assert_same(got, expected):
    for key in ("masks", "logits", "reply", "chat_masks"):
        assert np.array_equal(got[key], expected[key]), key


def assert_close(got, expected, tol=1e-4):
    assert np.array_equal(got["reply"], expected["reply"])
    for key in ("masks", "logits", "chat_masks"):
        assert got[key].shape == expected[key].shape, key
        assert not got[key].size or abs(got[key] - expected[key]).max() < tol, key


def assert_differ(a, b):
    assert abs(a["masks"] - b["masks"]).max() > 1e-3 and abs(a["logits"] - b["logits"]).max() > 1e-3


def plain_linear(lisa) -> bool:
    """No peft layer left anywhere."""
    return not hasattr(lisa.model, "peft_config") and not any("lora_" in n for n, _ in lisa.model.named_modules())


@pytest.fixture
def lisa(tiny_ckpt):
    return Lisa.from_pretrained(str(tiny_ckpt), device="cpu")


def test_adapters_equal_their_merged_exports_and_the_base_comes_back_exactly(lisa, make_adapter, room_image,
                                                                             tmp_path):
    adapter_a, merged_a = make_adapter(1)
    adapter_b, merged_b = make_adapter(2, targets=("q_proj", "k_proj", "v_proj", "o_proj"), rank=4)
    expected_a = outputs(Lisa.from_pretrained(str(merged_a), device="cpu"), room_image)
    expected_b = outputs(Lisa.from_pretrained(str(merged_b), device="cpu"), room_image)
    base = outputs(lisa, room_image)
    assert base["adapter"] == (None, None)

    assert lisa.load_adapter(adapter_a, "a") == "a" and lisa.active_adapter is None
    assert_same(outputs(lisa, room_image), base)  # loaded, not active: exactly the base
    version = lisa.weights_version
    lisa.set_adapter("a")
    got_a = outputs(lisa, room_image)
    assert_close(got_a, expected_a)
    assert_differ(got_a, base)
    assert got_a["adapter"] == ("a", "a")

    # b wraps layers a does not (k_proj, o_proj): they must stay off while a is active
    assert lisa.load_adapter(adapter_b) == "adapter"  # the directory's name by default
    assert lisa.adapters == {"a": adapter_a, "adapter": adapter_b}
    assert_same(outputs(lisa, room_image), got_a)
    lisa.set_adapter("adapter")
    got_b = outputs(lisa, room_image)
    assert_close(got_b, expected_b)
    assert_differ(got_b, got_a)
    lisa.set_adapter("a")
    assert_same(outputs(lisa, room_image), got_a)
    lisa.set_adapter(None)
    assert_same(outputs(lisa, room_image), base)
    lisa.set_adapter("adapter")
    assert_same(outputs(lisa, room_image), got_b)
    assert lisa.weights_version == version + 5
    lisa.set_adapter("adapter")  # already active: nothing changes
    assert lisa.weights_version == version + 5
    with pytest.raises(AdapterError, match="no adapter named 'c' is loaded"):
        lisa.set_adapter("c")
    with pytest.raises(AdapterError, match="already loaded"):
        lisa.load_adapter(adapter_a, "a")
    with pytest.raises(ValueError, match="adapters are loaded"):
        lisa.save_pretrained(tmp_path / "saved")

    lisa.delete_adapter("adapter")  # the active one: the base model becomes active
    assert lisa.active_adapter is None and lisa.adapters == {"a": adapter_a}
    assert_same(outputs(lisa, room_image), base)
    lisa.set_adapter("a")
    assert_same(outputs(lisa, room_image), got_a)
    lisa.delete_adapter("a")
    assert plain_linear(lisa) and lisa.adapters == {}
    assert_same(outputs(lisa, room_image), base)
    saved = Lisa.from_pretrained(str(lisa.save_pretrained(tmp_path / "saved")), device="cpu")
    assert_same(outputs(saved, room_image), base)


def test_sessions_belong_to_the_weights_they_were_opened_on(lisa, make_adapter, room_image):
    adapter, merged = make_adapter(1)
    session = lisa.session(room_image)
    session.chat(QUESTION, max_new_tokens=4)
    lisa.set_adapter(lisa.load_adapter(adapter))
    with pytest.raises(StaleSessionError, match="opened on the base model .* switched to adapter 'adapter'"):
        session.chat("And where can I sit?", max_new_tokens=4)
    with pytest.raises(StaleSessionError):
        session.add_turn("And where can I sit?", "There.")
    assert len(session.turns) == 1  # refused before touching anything
    session.reset()  # now it belongs to the adapter: the same two turns as on the merged export
    reference = Lisa.from_pretrained(str(merged), device="cpu").session(room_image)
    for text in (QUESTION, "And where can I sit?"):
        got, expected = session.chat(text, max_new_tokens=4), reference.chat(text, max_new_tokens=4)
        assert got.token_ids == expected.token_ids and got.adapter == "adapter" and got.turn == expected.turn
        assert got.mask_logits.shape == expected.mask_logits.shape
        assert not got.masks or abs(got.mask_logits - expected.mask_logits).max() < 1e-4
    lisa.set_adapter(None)
    with pytest.raises(StaleSessionError, match="switched to the base model"):
        session.chat("And now?")


def other_base_adapter(lisa, out):
    """An adapter made the same way for another base: a wider LLM (hidden 96) with the same vocabulary."""
    from lisa_core.model import LisaForCausalLM
    from lisa_core.tiny import tiny_config, tiny_sam_spec
    from training.export import save_adapter
    from training.train import TrainConfig, add_lora

    config = tiny_config(lisa.model.config.vocab_size, lisa.model.config.mm_hidden_size, tiny_sam_spec(),
                         hidden_size=96)
    return save_adapter(add_lora(LisaForCausalLM(config), TrainConfig()), out)


def test_bad_adapters_are_refused_and_change_nothing(lisa, make_adapter, room_image, tmp_path):
    good, _ = make_adapter(1)
    lisa.set_adapter(lisa.load_adapter(good, "a"))
    before, version = outputs(lisa, room_image), lisa.weights_version

    def variant(name, edit=None):
        path = tmp_path / name
        shutil.copytree(good, path)
        if edit:
            edit(path)
        return path

    def edit_tensors(file, change):
        def edit(path):
            tensors = load_file(str(path / file))
            change(tensors)
            save_file(tensors, str(path / file))
        return edit

    def edit_config(**fields):
        def edit(path):
            config = json.loads((path / ADAPTER_CONFIG).read_text())
            config.update(fields)
            (path / ADAPTER_CONFIG).write_text(json.dumps(config))
        return edit

    def rename(file, old, new):
        return edit_tensors(file, lambda tensors: tensors.update({new: tensors.pop(old)}))

    def put(file, key, make):
        return edit_tensors(file, lambda tensors: tensors.update({key: make(tensors)}))

    lora_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    embed = "base_model.model.model.embed_tokens.weight"
    cases = {
        "is not a directory": tmp_path / "missing",
        "lacks trained_weights.safetensors": variant("no_extras", lambda p: (p / TRAINED_WEIGHTS).unlink()),
        "lacks adapter_config.json": variant("no_config", lambda p: (p / ADAPTER_CONFIG).unlink()),
        "lacks adapter_model.safetensors or adapter_model.bin": variant("no_lora", lambda p: (p / LORA_FILE).unlink()),
        "only LoRA adapters are supported": variant("ia3", edit_config(peft_type="IA3")),
        "targets no module of this model": variant("no_targets", edit_config(target_modules=["x_proj"])),
        r"does not fit this model: its LoRA weights .*wrong shapes": other_base_adapter(lisa, tmp_path / "other"),
        r"LoRA weights .*1 missing .*1 unexpected .*x_proj": variant(
            "lora_name", rename(LORA_FILE, lora_a, lora_a.replace("q_proj", "x_proj"))),
        "not LoRA weights under peft's names": variant(
            "lora_prefix", rename(LORA_FILE, lora_a, lora_a.removeprefix("base_model.model."))),
        r"trained_weights.safetensors: 1 unexpected .*text_hidden_fcs.7": variant(
            "extra_name", put(TRAINED_WEIGHTS, "base_model.model.model.text_hidden_fcs.7.weight",
                              lambda tensors: torch.zeros(2))),
        r"trained_weights.safetensors: 1 with wrong shapes .*embed_tokens": variant(
            "extra_shape", put(TRAINED_WEIGHTS, embed, lambda tensors: torch.cat([tensors[embed],
                                                                                 torch.zeros(1, 64)]))),
        "not under peft's 'base_model.model.' names": variant(
            "extra_prefix", rename(TRAINED_WEIGHTS, "base_model.model.lm_head.weight", "lm_head.weight")),
    }
    for message, path in cases.items():
        with pytest.raises(AdapterError, match=message):
            lisa.check_adapter(path)
        with pytest.raises(AdapterError, match=message):
            lisa.load_adapter(path)
    assert lisa.adapters == {"a": good} and lisa.active_adapter == "a" and lisa.weights_version == version
    assert_same(outputs(lisa, room_image), before)
    assert lisa.check_adapter(good).extra_shapes  # the good one still checks


def test_a_failure_inside_peft_is_undone(lisa, make_adapter, room_image, monkeypatch):
    from peft import PeftModel

    good, _ = make_adapter(1)
    base = outputs(lisa, room_image)

    def broken(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(PeftModel, "load_adapter", broken)
    with pytest.raises(AdapterError, match="could not be loaded: disk went away"):
        lisa.load_adapter(good)
    assert plain_linear(lisa) and lisa.adapters == {}
    assert_same(outputs(lisa, room_image), base)
    monkeypatch.undo()
    lisa.set_adapter(lisa.load_adapter(good, "a"))
    with_a = outputs(lisa, room_image)
    monkeypatch.setattr(PeftModel, "load_adapter", broken)
    with pytest.raises(AdapterError, match="disk went away"):
        lisa.load_adapter(good, "b")
    assert lisa.adapters == {"a": good} and lisa.active_adapter == "a"
    assert_same(outputs(lisa, room_image), with_a)


def test_quantised_layers_are_swapped_whole(lisa, make_adapter, room_image, monkeypatch):
    """bitsandbytes only runs on CUDA: a stand-in class of the same name checks the module swap on the CPU."""
    from torch import nn

    from lisa_core import quantize

    class Linear4bit(nn.Linear):  # is_quantized() goes by the class name
        pass

    def fake_quantized(linear, mode):
        layer = Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.load_state_dict(linear.state_dict())
        return layer

    monkeypatch.setattr(quantize, "_quantized_linear", fake_quantized)
    fcs = lisa.model.model.text_hidden_fcs[0]
    for i in (0, 2):
        fcs[i] = fake_quantized(fcs[i], "4bit")
    quantised = Lisa(lisa.model, lisa.tokenizer, lisa.clip_processor, lisa.device, quantization="4bit")
    originals = (fcs[0], fcs[2])
    base = outputs(quantised, room_image)
    adapter, merged = make_adapter(1)
    quantised.set_adapter(quantised.load_adapter(adapter))
    assert isinstance(fcs[0], Linear4bit) and fcs[0] is not originals[0]
    assert_close(outputs(quantised, room_image), outputs(Lisa.from_pretrained(str(merged), device="cpu"), room_image))
    quantised.set_adapter(None)
    assert (fcs[0], fcs[2]) == originals
    assert_same(outputs(quantised, room_image), base)
