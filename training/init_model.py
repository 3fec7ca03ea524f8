"""The model a LISA training run starts from: a LLaVA base checkpoint (training LISA from scratch, as the paper does)
or a LISA checkpoint (fine-tuning), with SAM taken from the checkpoint or from segment-anything's ``.pth``.

    load_for_training("liuhaotian/llava-llama-2-13b-chat-lightning-preview", "sam_vit_h_4b8939.pth")
    load_for_training("xinlai/LISA-7B-v1")                                  # its own SAM, bit-exact
    load_for_training("xinlai/LISA-7B-v1", "sam_vit_h_4b8939.pth")          # SAM replaced by the .pth

The kind of checkpoint is read from its weight names, not its config: a LISA checkpoint holds SAM
(``model.visual_model.*``) and ``model.text_hidden_fcs.*``; a LLaVA base holds neither, and has LLaVA v1's single
Linear projector ``model.mm_projector.weight``. A LLaVA base becomes a LISA model the way the reference's
``train_ds.py`` makes it (tokens added, embeddings grown, SAM and ``text_hidden_fcs`` created, config completed), so
``Lisa.save_pretrained`` writes an official-layout LISA checkpoint that ``Lisa.from_pretrained`` loads.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn

from lisa_core import checkpoint as ckpt_io
from lisa_core.checkpoint import CheckpointError, check_shapes, shapes
from lisa_core.engine import Lisa, parse_dtype
from lisa_core.model import SAM_PROMPT_DIM, LisaConfig, LisaForCausalLM, SamSpec, build_sam
from lisa_core.preprocess import load_clip_processor
from lisa_core.prompt import IM_END, IM_START, SEG_TOKEN, PromptTokenizer

log = logging.getLogger(__name__)

SAM_PREFIX = "model.visual_model."
FCS_PREFIX = "model.text_hidden_fcs."
PROJECTOR = "model.mm_projector.weight"
GROWN = ("model.embed_tokens.weight", "lm_head.weight")
# In the reference's order: [SEG] first, then the image delimiters (the official 13B: 32000, 32001, 32002).
LISA_TOKENS = (SEG_TOKEN, IM_START, IM_END)
# config.json too: transformers picks the tokenizer class from its model_type ("llava"), as it will when
# Lisa.from_pretrained loads the saved checkpoint; without it the same files split text around [SEG] differently.
STAGED_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "config.json")
# Config fields the reference's LISA model sets whatever the base said (they end up in every LISA config.json).
FIXED_LISA_FIELDS = dict(
    mm_vision_select_feature="patch", image_aspect_ratio="square", image_grid_pinpoints=None,
    tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=True, pretrain_mm_mlp_adapter=None, mm_use_im_patch_token=False,
    out_dim=SAM_PROMPT_DIM, train_mask_decoder=True, use_mm_proj=True,
)


def load_for_training(model: str, sam_checkpoint: str | None = None, vision_tower: str | None = None,
                      device="cpu", dtype="float32", use_mm_start_end: bool = True) -> Lisa:
    """``model`` (directory or hub id) as a ``Lisa`` ready for ``training.train``.

    - LLaVA base: ``sam_checkpoint`` (segment-anything ``.pth``) is required; ``use_mm_start_end`` sets whether
      prompts wrap the image in ``<im_start>``/``<im_end>`` (the reference's default, true). The tokenizer gets
      ``[SEG]``, ``<im_start>``, ``<im_end>`` either way: every official LISA tokenizer has all three, and
      ``PromptTokenizer`` requires them.
    - LISA checkpoint: its SAM is kept unless ``sam_checkpoint`` is given, which then replaces it (same sizes).
      ``use_mm_start_end`` is ignored: the checkpoint's config says.

    Raises ``CheckpointError`` for missing or unreadable files and for weights that do not fit.
    """
    ckpt = ckpt_io.resolve_checkpoint(model)
    kind = checkpoint_kind(ckpt)
    if kind == "llava" and sam_checkpoint is None:
        raise CheckpointError(
            f"{ckpt} is a LLaVA base checkpoint, which has no SAM: pass sam_checkpoint=<segment-anything .pth> "
            "(e.g. sam_vit_h_4b8939.pth)"
        )
    sam_state = read_sam_checkpoint(sam_checkpoint) if sam_checkpoint is not None else None
    if kind == "llava":
        return lisa_from_llava(ckpt, sam_state, vision_tower, torch.device(device), parse_dtype(dtype),
                               use_mm_start_end)
    lisa = Lisa.from_pretrained(str(ckpt), vision_tower=vision_tower, device=device, dtype=dtype)
    if sam_state is not None:
        replace_sam(lisa.model, sam_state, sam_checkpoint)
    return lisa


# ---------------------------------------------------------------------------------------------- what it is
def weight_names(ckpt: Path) -> set[str]:
    """The checkpoint's tensor names, without reading the tensors (safetensors headers, memory-mapped ``.bin``)."""
    names: set[str] = set()
    for file in ckpt_io.weight_files(ckpt):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as handle:
                    names.update(handle.keys())
            else:
                names.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
        except Exception as err:
            raise CheckpointError(f"cannot read weights file {file}: {err}") from err
    return names


def checkpoint_kind(ckpt: Path) -> str:
    """``"lisa"`` if the weights hold SAM or ``text_hidden_fcs``, ``"llava"`` if they hold LLaVA v1's projector."""
    names = weight_names(ckpt)
    if any(name.startswith((SAM_PREFIX, FCS_PREFIX)) for name in names):
        return "lisa"
    if PROJECTOR in names:
        return "llava"
    projector = sorted(name for name in names if "mm_projector" in name)
    hint = f"; it has {projector[:4]}, an MLP projector (LLaVA-1.5?), which LISA does not use" if projector else ""
    raise CheckpointError(
        f"{ckpt} is neither a LISA checkpoint (no {SAM_PREFIX}* SAM weights) nor a LLaVA v1 base (no {PROJECTOR}{hint})"
    )


# ---------------------------------------------------------------------------------------------- SAM
def read_sam_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A segment-anything checkpoint (``Sam.state_dict()``: ``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``), checked complete against a SAM built with the image-encoder sizes its shapes imply."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"SAM checkpoint {file} does not exist (expected a segment-anything .pth)")
    log.info("reading SAM weights %s", file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read SAM checkpoint {file}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"SAM checkpoint {file} is not a state dict of tensors")
    try:
        spec = SamSpec.from_state_dict(shapes(state), prefix="image_encoder.")
    except ValueError as err:
        raise CheckpointError(f"{file} is not a SAM checkpoint in segment-anything's layout: {err}") from None
    with init_empty_weights(include_buffers=False):
        expected = shapes(build_sam(spec).state_dict())
    check_shapes(shapes(state), expected, f"SAM checkpoint {file} is incomplete or inconsistent")
    return state


@torch.no_grad()
def replace_sam(model: LisaForCausalLM, sam_state: dict[str, torch.Tensor], source) -> None:
    """Overwrite the model's SAM with ``sam_state``, which must have exactly its keys and shapes."""
    check_shapes(shapes(sam_state), shapes(model.sam.state_dict()),
                 f"SAM checkpoint {source} does not fit the LISA checkpoint's SAM {model.sam_spec}")
    model.sam.load_state_dict(sam_state)  # copies into the existing tensors: their dtype and device stay
    log.info("SAM weights replaced from %s", source)


# ---------------------------------------------------------------------------------------------- LLaVA → LISA
def lisa_from_llava(ckpt: Path, sam_state: dict[str, torch.Tensor], vision_tower: str | None,
                    device: torch.device, dtype: torch.dtype, use_mm_start_end: bool) -> Lisa:
    """LLaVA weights + grown embeddings + SAM + fresh ``text_hidden_fcs`` → a LISA model. The tokenizer with the
    new tokens lives in a temporary directory (removed with the returned ``Lisa``) that is its ``source_dir``, so
    ``save_pretrained`` ships that tokenizer (and a tower kept inside the LLaVA checkpoint)."""
    log.info("LLaVA base checkpoint %s: adding %s, SAM and text_hidden_fcs", ckpt, ", ".join(LISA_TOKENS))
    config = ckpt_io.read_config(ckpt)
    tower_name = ckpt_io.resolve_vision_tower(ckpt, config, vision_tower)
    staging = Path(tempfile.mkdtemp(prefix="lisa-from-llava-"))
    try:
        tokenizer, n_new = stage_tokenizer(ckpt, staging)
        state = {k: v for k, v in ckpt_io.read_state_dict(ckpt).items() if ckpt_io.NOT_SAVED not in k}
        missing = [k for k in GROWN if k not in state]
        if missing:
            raise CheckpointError(f"{ckpt} has no {missing}: not a LLaMA-based LLaVA checkpoint")
        rows = state[GROWN[0]].shape[0]
        if rows != len(tokenizer) - n_new:
            raise CheckpointError(f"{ckpt}: the tokenizer has {len(tokenizer) - n_new} tokens but "
                                  f"{GROWN[0]} has {rows} rows; they must match for the new tokens to get new rows")
        for key in GROWN:
            state[key] = grow_rows(state[key], n_new)
        state.update({SAM_PREFIX + k: v for k, v in sam_state.items()})
        complete_config(config, tokenizer, state[PROJECTOR], use_mm_start_end, vision_tower)
        state.update(fresh_text_hidden_fcs(config))
        model = ckpt_io.build_model(config, state, dtype)
        del state
        log.info("loading vision tower %s", tower_name)
        model.attach_vision_tower(ckpt_io.load_vision_tower(tower_name, dtype))
        link_tower(ckpt, staging, config.vision_tower)
        model.to(device)
        processor = load_clip_processor(tower_name if Path(tower_name).is_dir() else None)
        lisa = Lisa(model, PromptTokenizer.from_hf(tokenizer), processor, device, str(ckpt), source_dir=staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    weakref.finalize(lisa, shutil.rmtree, staging, ignore_errors=True)
    log.info("LISA ready from LLaVA base %s (vocab %d → %d)", ckpt, len(tokenizer) - n_new, len(tokenizer))
    return lisa


def stage_tokenizer(ckpt: Path, staging: Path):
    """Write the base tokenizer plus the missing ``LISA_TOKENS`` to ``staging`` in the slow-LLaMA layout of the
    official checkpoints (the base's ``tokenizer.model`` and configs, ``added_tokens.json`` with the new tokens after
    the existing ones) and load it from there. Returns (tokenizer, number of tokens added).

    Loading the written files makes the tokenizer used in training the one ``save_pretrained`` ships and
    ``from_pretrained`` reads back. The files are written by hand because transformers 5's ``save_pretrained``
    writes a ``tokenizer.json`` that splits the text after an added token unlike the reference's slow tokenizer."""
    if not (ckpt / "tokenizer.model").is_file():
        raise CheckpointError(f"no tokenizer.model in {ckpt}: a LLaVA base must ship its SentencePiece model, "
                              "which LISA checkpoints keep")
    base = ckpt_io.load_tokenizer(ckpt)
    added_file = ckpt / "added_tokens.json"
    added = json.loads(added_file.read_text()) if added_file.is_file() else {}
    new = [token for token in LISA_TOKENS if token not in base.get_vocab()]
    added.update({token: len(base) + i for i, token in enumerate(new)})
    for name in STAGED_FILES:
        if (ckpt / name).is_file():
            shutil.copyfile(ckpt / name, staging / name)
    (staging / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    tokenizer = ckpt_io.load_tokenizer(staging)
    got = {token: tokenizer.convert_tokens_to_ids(token) for token in new}
    if len(tokenizer) != len(base) + len(new) or any(got[t] != added[t] for t in new):
        raise CheckpointError(f"adding {new} to the tokenizer of {ckpt} gave ids {got} and {len(tokenizer)} tokens; "
                              f"expected {[added[t] for t in new]} and {len(base) + len(new)}")
    return tokenizer, len(new)


def grow_rows(weight: torch.Tensor, n_new: int) -> torch.Tensor:
    """``[V, H]`` → ``[V + n_new, H]``, each new row the mean of the old rows.

    In ``embed_tokens`` the new inputs then lie inside the distribution the LLM was trained on; in ``lm_head`` each
    new token starts with the average logit, so at step 0 ``[SEG]`` neither dominates generation nor is out of
    reach, and the old tokens' probabilities barely move. (LLaVA initialised its own added tokens this way; the
    reference's transformers 4.31 ``resize_token_embeddings`` drew random normal(0, 0.02) rows instead.)"""
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(n_new, -1)], 0)


def complete_config(config: LisaConfig, tokenizer, projector: torch.Tensor, use_mm_start_end: bool,
                    vision_tower: str | None) -> None:
    """Give a LLaVA base's config the LISA fields (values as the reference's LISA model sets them)."""
    config.mm_vision_tower = getattr(config, "mm_vision_tower", None) or vision_tower
    config.vision_tower = config.mm_vision_tower
    if getattr(config, "mm_hidden_size", None) is None:
        config.mm_hidden_size = projector.shape[1]
    if getattr(config, "mm_vision_select_layer", None) is None:
        config.mm_vision_select_layer = -2
    config.update(dict(
        FIXED_LISA_FIELDS, vocab_size=len(tokenizer), mm_use_im_start_end=use_mm_start_end,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.unk_token_id,  # the reference pads with <unk>
    ))


def fresh_text_hidden_fcs(config: LisaConfig) -> dict[str, torch.Tensor]:
    """New ``text_hidden_fcs`` weights (hidden → hidden → ReLU → ``out_dim``) with PyTorch's default ``nn.Linear``
    init, as in the reference, which creates them after loading, out of reach of the LLaMA normal(0, 0.02) init."""
    with init_empty_weights(include_buffers=False):
        skeleton = LisaForCausalLM(config)
    fcs = skeleton.model.text_hidden_fcs.to_empty(device="cpu")
    for layer in fcs.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return {FCS_PREFIX + k: v for k, v in fcs.state_dict().items()}


def link_tower(ckpt: Path, staging: Path, tower: str | None) -> None:
    """``save_pretrained`` copies a tower that sits inside its source directory: link an in-checkpoint tower of the
    LLaVA base there, so the saved LISA checkpoint is as self-contained as the base was."""
    if tower and not Path(tower).is_absolute() and (ckpt / tower).is_dir():
        link = staging / tower
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((ckpt / tower).resolve(), target_is_directory=True)
