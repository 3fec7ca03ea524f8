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
