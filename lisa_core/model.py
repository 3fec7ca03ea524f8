"""The LISA network: LLaMA + CLIP vision tower + Linear projector + ``text_hidden_fcs`` + SAM.

Module names are the official checkpoints' parameter names (``model.layers.*``, ``model.mm_projector``,
``model.visual_model.*``, ``model.text_hidden_fcs.0.*``, ``lm_head``), so a checkpoint loads with no key
mapping. The CLIP tower lives at ``model.vision_tower`` and is not part of a saved checkpoint (the official ones do
not contain it). Construction is driven by the config alone; no I/O here (see ``checkpoint.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn
from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlamaModel

from .preprocess import upscale_mask_logits
from .prompt import IMAGE_TOKEN_INDEX

SAM_PROMPT_DIM = 256
SAM_PATCH = 16


class LisaConfig(LlamaConfig):
    """LLaMA config plus the LLaVA/LISA fields of the official ``config.json`` (kept as extra attributes):
    ``mm_hidden_size``, ``vision_tower``, ``mm_vision_select_layer``, ``mm_use_im_start_end``, ``out_dim`` …
    plus ``sam_image_encoder`` (a ``SamSpec`` dict), which the loader fills from the weights' shapes."""

    model_type = "llava"


@dataclass
class SamSpec:
    """SAM image-encoder hyper-parameters (ViT-H by default)."""

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    window_size: int = 14
    img_size: int = 1024
    mlp_ratio: float = 4.0

    @classmethod
    def from_state_dict(cls, shapes: dict[str, tuple], prefix: str = "model.visual_model.image_encoder.") -> "SamSpec":
        """Read the encoder's hyper-parameters from parameter shapes (``{key: shape}``)."""
        try:
            embed_dim = shapes[prefix + "patch_embed.proj.weight"][0]
            img_size = shapes[prefix + "pos_embed"][1] * SAM_PATCH
            depth = 1 + max(int(k[len(prefix):].split(".")[1]) for k in shapes if k.startswith(prefix + "blocks."))
            rel = [shapes[f"{prefix}blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
            hidden = shapes[prefix + "blocks.0.mlp.lin1.weight"][0]
        except (KeyError, ValueError) as err:
            raise ValueError(f"the checkpoint has no complete SAM image encoder under '{prefix}': {err}") from None
        grid = img_size // SAM_PATCH
        global_blocks = [i for i, s in enumerate(rel) if s[0] == 2 * grid - 1]
        windowed = [s[0] for s in rel if s[0] != 2 * grid - 1]
        window = (windowed[0] + 1) // 2 if windowed else grid
        if depth - 1 not in global_blocks:
            raise ValueError(f"the SAM image encoder's last block ({depth - 1}) is not a global-attention block, "
                             f"as it is in every SAM: blocks look missing from '{prefix}'")
        return cls(embed_dim, depth, embed_dim // rel[0][1], global_blocks, window, img_size, hidden / embed_dim)


class SdpaRelPosAttention(Attention):
    """segment-anything's image-encoder attention computed by ``scaled_dot_product_attention`` in chunks of query
    rows, with the decomposed relative-position terms as the additive mask. Same maths and parameters as
    ``Attention`` (outputs agree to ~2e-6). The fused kernel skips the separate score, bias-add and softmax passes
    and the chunks keep the bias small (``QUERY_CHUNK`` × L instead of L × L per head): 1.7× less time for the
    tiny encoder on this CPU, and far less peak memory for ViT-H's global blocks."""

    QUERY_CHUNK = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` → ``[B, H, W, C]``."""
        b, h, w, _ = x.shape
        n = b * self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, n, h * w, -1).unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            r_q = q.reshape(n, h, w, -1)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h)).reshape(n, h * w, h)
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w)).reshape(n, h * w, w)
            chunks = []
            for start in range(0, h * w, self.QUERY_CHUNK):
                rows = slice(start, start + self.QUERY_CHUNK)
                bias = (rel_h[:, rows, :, None] + rel_w[:, rows, None, :]).flatten(2)  # [n, rows, h·w]
                chunks.append(F.scaled_dot_product_attention(q[:, rows], k, v, attn_mask=bias, scale=self.scale))
            out = torch.cat(chunks, 1)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def build_sam(spec: SamSpec) -> Sam:
    """A segment-anything ``Sam`` with the given image encoder and the standard prompt encoder / mask decoder."""
    grid = spec.img_size // SAM_PATCH
    encoder = ImageEncoderViT(
        depth=spec.depth, embed_dim=spec.embed_dim, img_size=spec.img_size, mlp_ratio=spec.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.num_heads, patch_size=SAM_PATCH,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(spec.global_attn_indexes),
        window_size=spec.window_size, out_chans=SAM_PROMPT_DIM,
    )
    for block in encoder.blocks:
        block.attn.__class__ = SdpaRelPosAttention  # same parameters, faster forward
    prompt = PromptEncoder(embed_dim=SAM_PROMPT_DIM, image_embedding_size=(grid, grid),
                           input_image_size=(spec.img_size, spec.img_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=SAM_PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=256,
        transformer=TwoWayTransformer(depth=2, embedding_dim=SAM_PROMPT_DIM, mlp_dim=2048, num_heads=8),
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def input_dtype(linear: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """The dtype to feed ``linear``: its weights' dtype, or ``fallback`` when they are quantised integers."""
    return linear.weight.dtype if linear.weight.is_floating_point() else fallback


class LisaModel(LlamaModel):
    """``LlamaModel`` with LISA's extra modules under the same ``model.`` prefix."""

    def __init__(self, config: LisaConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.mm_projector = nn.Linear(config.mm_hidden_size, hidden)
        self.visual_model = build_sam(SamSpec(**getattr(config, "sam_image_encoder", None) or {}))
        out_dim = getattr(config, "out_dim", SAM_PROMPT_DIM)
        self.text_hidden_fcs = nn.ModuleList([nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim), nn.Dropout(0.0),
        )])
        self.vision_tower: CLIPVisionModel | None = None


class LisaForCausalLM(LlamaForCausalLM):
    """The full network. Stages, each with its shapes:

    - ``encode_clip``: ``[B, 3, 224, 224]`` → projected patch features ``[B, P, H]``
    - ``embed_ids``: token ids with one ``-200`` + features ``[P, H]`` → input embeddings ``[1, L - 1 + P, H]``
    - ``encode_sam``: ``[B, 3, S, S]`` → SAM image embedding ``[B, 256, S/16, S/16]``
    - ``decode_masks``: image embedding + ``[SEG]`` hidden states ``[n, H]`` → logits ``[n, h, w]`` + IoU ``[n]``
    """

    config_class = LisaConfig
    _tied_weights_keys = {}

    def __init__(self, config: LisaConfig):
        super().__init__(config)
        self.model = LisaModel(config)
        self.post_init()

    @property
    def sam(self) -> Sam:
        return self.model.visual_model

    @property
    def sam_spec(self) -> SamSpec:
        return SamSpec(**getattr(self.config, "sam_image_encoder", None) or {})

    def attach_vision_tower(self, tower: CLIPVisionModel) -> None:
        if tower.config.hidden_size != self.config.mm_hidden_size:
            raise ValueError(
                f"vision tower hidden size {tower.config.hidden_size} does not match the checkpoint's "
                f"mm_hidden_size {self.config.mm_hidden_size}: wrong vision tower for this checkpoint"
            )
        tower.requires_grad_(False)
        self.model.vision_tower = tower

    @torch.no_grad()
    def encode_clip(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 224, 224]`` → ``[B, P, H]``: the selected CLIP layer's patch tokens, projected."""
        tower = self.model.vision_tower
        if tower is None:
            raise RuntimeError("no vision tower attached: load the model with Lisa.from_pretrained")
        out = tower(pixels.to(tower.device, tower.dtype), output_hidden_states=True)
        features = out.hidden_states[getattr(self.config, "mm_vision_select_layer", -2)]
        if getattr(self.config, "mm_vision_select_feature", "patch") == "patch":
            features = features[:, 1:]
        projector = self.model.mm_projector
        return projector(features.to(input_dtype(projector, tower.dtype)))

    def embed_ids(self, ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """``[L]`` ids (at most one ``-200``) + ``[P, H]`` → ``[1, L', H]`` with the features spliced in."""
        embed = self.model.embed_tokens
        image_at = (ids == IMAGE_TOKEN_INDEX).nonzero()
        if len(image_at) == 0:
            return embed(ids).unsqueeze(0)
        if len(image_at) > 1 or image_features is None:
            raise ValueError("a turn can carry exactly one image")
        i = int(image_at[0])
        parts = [embed(ids[:i]), image_features.to(embed.weight.dtype), embed(ids[i + 1:])]
        return torch.cat(parts, 0).unsqueeze(0)

    def encode_sam(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` (normalised, padded) → ``[B, 256, S/16, S/16]``. No gradient unless the encoder's weights
        are being trained (the paper freezes it, as the reference's ``get_visual_embs``; a training config may list
        ``image_encoder``)."""
        encoder = self.sam.image_encoder
        weight = encoder.patch_embed.proj.weight
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight.requires_grad):
            return encoder(pixels.to(weight.device, weight.dtype))

    def seg_prompts(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, H]`` final-norm hidden states → ``[n, 256]`` SAM prompt embeddings."""
        fcs = self.model.text_hidden_fcs[0]
        return fcs(hidden.to(input_dtype(fcs[0], hidden.dtype)))

    def decode_masks(self, image_embedding: torch.Tensor, prompts: torch.Tensor,
                     input_size, original_size) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, 256, h, w]`` + ``[n, 256]`` → (``[n, H, W]`` float32 logits, ``[n]`` predicted IoU).

        The ``[SEG]`` embedding is the only sparse prompt, ``no_mask_embed`` the dense one, single-mask output.
        """
        sam = self.sam
        dtype = sam.mask_decoder.iou_token.weight.dtype
        n = prompts.shape[0]
        grid = image_embedding.shape[-2:]
        sparse = prompts.to(dtype).unsqueeze(1)
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *grid)
        image_pe = sam.prompt_encoder.get_dense_pe().to(dtype)
        low_res, iou = sam.mask_decoder(
            image_embeddings=image_embedding.to(dtype), image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False,
        )
        logits = upscale_mask_logits(low_res, sam.image_encoder.img_size, input_size, original_size)
        return logits, iou[:, 0].float()

