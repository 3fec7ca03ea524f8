"""The reference LISA chat's algorithm, rebuilt on our model stages for a fair timing on the same weights.

Per query the reference re-runs CLIP and the whole LLM over the full sequence for every generated token (no KV cache),
computes ``lm_head`` for every position, and encodes the image with SAM on every call whether or not a ``[SEG]``
appears. A follow-up question is a new query over the whole conversation (the reference keeps no state).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from segment_anything.modeling.image_encoder import Attention

from lisa_core.engine import Lisa
from lisa_core.preprocess import clip_pixels, sam_pixels
from lisa_core.prompt import seg_hidden_positions


@contextmanager
def original_sam_attention(model):
    """Run SAM's image encoder with segment-anything's own attention, as the reference does."""
    blocks = model.sam.image_encoder.blocks
    fast = [block.attn.__class__ for block in blocks]
    for block in blocks:
        block.attn.__class__ = Attention
    try:
        yield
    finally:
        for block, cls in zip(blocks, fast):
            block.attn.__class__ = cls


@torch.inference_mode()
def reference_query(lisa: Lisa, image, prompt_ids: list[int], max_new_tokens: int) -> dict:
    model, eos = lisa.model, lisa.tokenizer.eos_token_id
    start = time.perf_counter()
    clip_px = clip_pixels(lisa.clip_processor, image)
    sam_px, input_size = sam_pixels(image, model.sam.image_encoder.img_size)
    generated: list[int] = []
    hidden = None
    for _ in range(max_new_tokens):
        features = model.encode_clip(clip_px)[0]
        embeds = model.embed_ids(torch.tensor(prompt_ids + generated), features)
        hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
        generated.append(int(model.lm_head(hidden)[-1].argmax()))
        if generated[-1] == eos:
            break
    with original_sam_attention(model):
        sam_embedding = model.encode_sam(sam_px)
    n_patches = features.shape[0]
    ids = prompt_ids + generated
    positions = [p + n_patches - 1 for p in seg_hidden_positions(ids, lisa.tokenizer.seg_token_id)]
    masks = None
    if positions:
        prompts = model.seg_prompts(hidden[positions])
        masks, _ = model.decode_masks(sam_embedding, prompts, input_size, image.shape[:2])
    return {"seconds": time.perf_counter() - start, "token_ids": generated,
            "n_masks": 0 if masks is None else masks.shape[0]}
