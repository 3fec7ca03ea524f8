"""``lisa-make-tiny OUT_DIR``: a small random LISA checkpoint in the official layout, made offline.

It holds ``config.json``, ``pytorch_model.bin``, a slow LLaMA SentencePiece tokenizer (trained here on a built-in
corpus, byte fallback, unk/bos/eos = 0/1/2) with ``[SEG]``, ``<im_start>``, ``<im_end>`` added, and a tiny CLIP
vision tower in ``OUT_DIR/clip_vision`` that ``config.vision_tower`` points to, so ``Lisa.from_pretrained(OUT_DIR)``
needs nothing else. The weights are random: it is untrained and its answers are noise.

``make_tiny_llava`` and ``make_tiny_sam_pth`` write the two starting points of LISA training from scratch in the
same tiny sizes: a LLaVA base checkpoint (LLaVA's layout: no ``[SEG]``, SAM or ``text_hidden_fcs``) and a SAM
``.pth`` in segment-anything's layout (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).
"""
from __future__ import annotations

import argparse
import io
import json
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import OFFICIAL_CONFIG_FIELDS, official_config_dict, save_checkpoint
from .model import LisaConfig, LisaForCausalLM, SamSpec, build_sam
from .preprocess import load_clip_processor
from .prompt import IM_END, IM_START, SEG_TOKEN, SYSTEM_PROMPT

CLIP_DIR = "clip_vision"
SAMPLE_IMAGE = Path(__file__).parent / "data" / "sample_room.png"
ADDED_TOKENS = (SEG_TOKEN, IM_START, IM_END)
CORPUS = [
    SYSTEM_PROMPT,
    "USER: ASSISTANT: Sure, it is [SEG]. Sure, the segmentation result is [SEG]. It is [SEG].",
    "Can you segment the {class_name} in this image? Please segment the chair in this image.",
    "What is the sink in this image? Please respond with segmentation mask. Please output segmentation mask.",
    "Where can I wash my hands? Where can I sit? What can I use to boil water? Which thing would a child play with?",
    "Please output segmentation mask and explain why. The kettle, the mug, the table, the sofa, the bed, the door.",
    "kitchen bathroom bedroom living room office window cabinet shelf refrigerator counter towel lamp plant",
    "yes no left right top bottom red green blue yellow white black small large object person robot camera",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


# What a LISA config.json has and a LLaVA base's lacks (the reference sets them when it adds SAM).
LISA_ONLY_CONFIG_FIELDS = ("out_dim", "train_mask_decoder", "vision_tower", "pretrain_mm_mlp_adapter")


def train_tokenizer(out: Path, vocab_size: int = 400, added_tokens=ADDED_TOKENS, corpus: tuple[str, ...] = ()) -> None:
    """Train a LLaMA-style SentencePiece BPE model on ``CORPUS`` (plus ``corpus``) and write the slow-tokenizer
    files, with ``added_tokens`` (if any) after the SentencePiece pieces."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4 + list(corpus)), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, add_dummy_prefix=True, hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    special = {name: {"content": text, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
               for name, text in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if added_tokens:
        (out / "added_tokens.json").write_text(json.dumps({t: size + i for i, t in enumerate(added_tokens)}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<unk>"}, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": True,
        "model_max_length": 512, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", **{k: {"__type": "AddedToken", **v} for k, v in special.items()},
    }, indent=2))


def tiny_config(vocab_size: int, clip_hidden: int, sam: SamSpec, hidden_size: int = 64, intermediate_size: int = 128,
                num_hidden_layers: int = 2, num_attention_heads: int = 4, initializer_range: float = 0.02) -> LisaConfig:
    return LisaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=False, mm_hidden_size=clip_hidden, vision_tower=CLIP_DIR,
        mm_vision_tower=CLIP_DIR, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_use_im_start_end=True, mm_use_im_patch_token=False, use_mm_proj=True, out_dim=256,
        train_mask_decoder=True, image_aspect_ratio="square", image_grid_pinpoints=None,
        freeze_mm_mlp_adapter=True, tune_mm_mlp_adapter=False, pretrain_mm_mlp_adapter=None, pretraining_tp=1,
        hidden_act="silu", initializer_range=initializer_range, sam_image_encoder=asdict(sam),
        _name_or_path="lisa-tiny-untrained",
    )


def tiny_sam_spec(img_size: int = 256, embed_dim: int = 32, depth: int = 2, num_heads: int = 2) -> SamSpec:
    return SamSpec(embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=[depth - 1],
                   window_size=8, img_size=img_size)


# Other tiny shapes in the same layout. "rooms": the embedded trained model lisa-tiny-rooms starts from this.
SHAPES = {
    "default": {},
    # SAM at 384 (24×24 image tokens, 8 px of a 192×256 room each): at 256 (16×16), chairs and lamps lost their parts.
    "rooms": {"sam_img_size": 384, "clip_patch_size": 56, "clip_hidden": 64, "vocab_size": 1000,
              "sam": {"embed_dim": 96, "depth": 4, "num_heads": 4},
              "llm": {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4}},
}


def save_tiny_clip(out: Path, patch_size: int = 14, hidden_size: int = 32):
    """A random tiny CLIP vision tower (+ processor config) in ``out/clip_vision``; returns the model.
    ``patch_size`` 14 gives CLIP-L/14's 16×16 = 256 image tokens; a larger patch gives fewer (e.g. 56: 4×4)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=3, num_attention_heads=2,
        image_size=224,
        patch_size=patch_size, projection_dim=32, hidden_act="quick_gelu",
    ))
    clip.save_pretrained(str(out / CLIP_DIR))
    load_clip_processor(None).save_pretrained(str(out / CLIP_DIR))
    return clip


def make_tiny(out_dir: str | Path, seed: int = 0, sam_img_size: int = 256, clip_patch_size: int = 14,
              llm: dict | None = None, vocab_size: int = 400, sam: dict | None = None, clip_hidden: int = 32,
              corpus: tuple[str, ...] = (), seg_likely: bool = True) -> Path:
    """Write the tiny checkpoint to ``out_dir`` and return its path. The defaults give the same files every time
    (tests rely on it); ``clip_patch_size`` (image tokens = (224 / patch)²), ``clip_hidden``, ``llm``
    (``tiny_config`` keywords: ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``initializer_range``), ``sam`` (``tiny_sam_spec`` keywords: ``embed_dim``, ``depth``,
    ``num_heads``), ``vocab_size`` (SentencePiece pieces; 800 gives whole words for the built-in corpus) and
    ``corpus`` (more tokenizer training text) make other tiny shapes in the same layout (``SHAPES``).
    ``seg_likely`` makes the untrained model emit ``[SEG]`` (see ``make_seg_likely``); a start for training
    needs no such tweak."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_tokenizer(out, vocab_size, corpus=corpus)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    clip = save_tiny_clip(out, clip_patch_size, clip_hidden)
    model = LisaForCausalLM(tiny_config(len(tokenizer), clip.config.hidden_size,
                                        tiny_sam_spec(sam_img_size, **(sam or {})), **(llm or {})))
    save_checkpoint(model, out, out)
    if seg_likely:
        make_seg_likely(out)
    return out


def make_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random LLaVA base checkpoint in LLaVA v1's layout (``llava-llama-2-13b-chat-lightning-preview``):
    ``config.json`` without the LISA fields (``mm_vision_tower`` only, ``mm_use_im_start_end`` false),
    ``pytorch_model.bin`` with the LLaMA and ``model.mm_projector`` weights only, and the tokenizer without
    ``[SEG]``/``<im_start>``/``<im_end>`` (vocab = the SentencePiece pieces). The CLIP tower is in ``clip_vision``."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_tokenizer(out, added_tokens=())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    clip = save_tiny_clip(out)
    model = LisaForCausalLM(tiny_config(len(tokenizer), clip.config.hidden_size, tiny_sam_spec()))
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("model.visual_model.", "model.text_hidden_fcs."))}
    torch.save(state, out / "pytorch_model.bin")
    fields = official_config_dict(model.config, torch.float32)
    fields.update(_name_or_path="llava-tiny-untrained", architectures=["LlavaLlamaForCausalLM"], use_cache=True,
                  mm_use_im_start_end=False, freeze_mm_mlp_adapter=False)
    llava = {k: fields[k] for k in OFFICIAL_CONFIG_FIELDS if k not in LISA_ONLY_CONFIG_FIELDS}
    (out / "config.json").write_text(json.dumps(llava, indent=2) + "\n")
    return out


def make_tiny_sam_pth(path: str | Path, seed: int = 0, img_size: int = 256) -> Path:
    """A random tiny SAM saved as segment-anything's ``sam_vit_h_4b8939.pth`` is: ``Sam.state_dict()``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_sam(tiny_sam_spec(img_size)).state_dict(), path)
    return path


@torch.no_grad()
def make_seg_likely(out: Path) -> None:
    """Like the reference fixture: set the ``[SEG]`` row of ``lm_head`` to 1.05 × the row of the token the random
    model generates most often on the sample image, so greedy decoding emits ``[SEG]`` and masks get made."""
    from .engine import Lisa
    from .output import read_image

    lisa = Lisa.from_pretrained(str(out), device="cpu")
    probe = lisa.chat(read_image(SAMPLE_IMAGE), "Where can I wash my hands?", max_new_tokens=24)
    favourite = max(set(probe.token_ids), key=probe.token_ids.count)
    head = lisa.model.lm_head.weight
    head[lisa.tokenizer.seg_token_id] = 1.05 * head[favourite]
    lisa.save_pretrained(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="lisa-make-tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the checkpoint to (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    parser.add_argument("--sam-img-size", type=int,
                        help="SAM encoder input size; 1024 is the real size (default: the shape's; 256 for 'default', "
                             "which keeps tests fast)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default",
                        help="network sizes: 'default' (tests), 'rooms' (the start of the embedded lisa-tiny-rooms)")
    parser.add_argument("--corpus", help="a text file (one sentence a line) the tokenizer is trained on as well")
    parser.add_argument("--untouched", action="store_true",
                        help="keep the random [SEG] row as drawn (for a start of training)")
    args = parser.parse_args(argv)
    corpus = tuple(Path(args.corpus).read_text().splitlines()) if args.corpus else ()
    shape = dict(SHAPES[args.shape])
    if args.sam_img_size:
        shape["sam_img_size"] = args.sam_img_size
    print(make_tiny(args.out_dir, args.seed, corpus=corpus, seg_likely=not args.untouched, **shape))


if __name__ == "__main__":
    main()
