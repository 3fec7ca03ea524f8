"""Model stages that have no reference case of their own."""
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from lisa_core.model import SamSpec, SdpaRelPosAttention, build_sam


@pytest.mark.parametrize("chunk", [64, 1024])
def test_sdpa_attention_matches_segment_anything(monkeypatch, chunk):
    """Windowed and global blocks, with query chunks that do and do not divide the sequence (20×20 = 400)."""
    torch.manual_seed(0)
    encoder = build_sam(SamSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], window_size=8,
                                img_size=320)).image_encoder.eval()
    for block in encoder.blocks:  # random relative-position tables (they are zero-initialised)
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    monkeypatch.setattr(SdpaRelPosAttention, "QUERY_CHUNK", chunk)
    x = torch.randn(1, 3, 320, 320)
    with torch.inference_mode():
        fast = encoder(x)
        for block in encoder.blocks:
            assert isinstance(block.attn, SdpaRelPosAttention)
            block.attn.__class__ = Attention
        original = encoder(x)
    assert fast.shape == (1, 256, 20, 20)
    assert torch.allclose(fast, original, atol=1e-5), (fast - original).abs().max()


@pytest.mark.parametrize("mode, weight_dtype", [("4bit", torch.uint8), ("8bit", torch.int8)])
def test_quantize_linears_replaces_the_language_side(tiny_ckpt, room_image, mode, weight_dtype):
    """The module swap behind ``quantization=``. ``from_pretrained`` refuses it without CUDA; bitsandbytes 0.50 can
    still quantise and run these layers on the CPU, which is what this test uses."""
    import bitsandbytes as bnb

    from lisa_core import Lisa
    from lisa_core.quantize import quantize_linears

    question, answer = "Where can I wash my hands?", "Sure, it is [SEG]."
    full = Lisa.from_pretrained(str(tiny_ckpt), device="cpu", dtype="float16")
    expected = full.segment(room_image, question, answer)
    quantized = Lisa.from_pretrained(str(tiny_ckpt), device="cpu", dtype="float16")
    layers = quantized.model.config.num_hidden_layers
    assert quantize_linears(quantized.model, mode) == 7 * layers + 1 + 2  # q/k/v/o/gate/up/down, projector, fcs
    quantized.model.to("cpu")  # bitsandbytes quantises on the move
    target = bnb.nn.Linear4bit if mode == "4bit" else bnb.nn.Linear8bitLt
    assert isinstance(quantized.model.model.layers[0].self_attn.q_proj, target)
    assert quantized.model.model.layers[0].mlp.down_proj.weight.dtype == weight_dtype
    assert type(quantized.model.lm_head) is torch.nn.Linear
    assert not any(isinstance(m, target) for m in quantized.model.sam.modules())
    assert not any(isinstance(m, target) for m in quantized.model.model.vision_tower.modules())
    result = quantized.segment(room_image, question, answer)
    assert len(result.masks) == 1
    assert (result.masks[0] == expected.masks[0]).mean() > 0.9
