"""Reading and writing checkpoints in the official LISA layout.

An official checkpoint is a directory (or a hub id) with ``config.json``, a slow LLaMA SentencePiece tokenizer with
``[SEG]``/``<im_start>``/``<im_end>`` added, and weights as ``pytorch_model.bin``, sharded ``pytorch_model-*.bin`` +
index, or safetensors. It holds no CLIP weights: the tower comes from ``config.vision_tower`` or an override.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file as load_safetensors
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPVisionModel

from .model import LisaConfig, LisaForCausalLM, SamSpec

log = logging.getLogger(__name__)

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)
NOT_SAVED = "vision_tower"
# config.json fields the reference (transformers 4.31) writes for a LISA checkpoint, in its order.
OFFICIAL_CONFIG_FIELDS = (
    "_name_or_path", "architectures", "bos_token_id", "eos_token_id", "freeze_mm_mlp_adapter", "hidden_act",
    "hidden_size", "image_aspect_ratio", "image_grid_pinpoints", "initializer_range", "intermediate_size",
    "max_position_embeddings", "mm_hidden_size", "mm_use_im_patch_token", "mm_use_im_start_end",
    "mm_vision_select_feature", "mm_vision_select_layer", "mm_vision_tower", "model_type", "num_attention_heads",
    "num_hidden_layers", "num_key_value_heads", "out_dim", "pad_token_id", "pretrain_mm_mlp_adapter",
    "pretraining_tp", "rms_norm_eps", "rope_scaling", "tie_word_embeddings", "torch_dtype", "train_mask_decoder",
    "transformers_version", "tune_mm_mlp_adapter", "use_cache", "use_mm_proj", "vision_tower", "vocab_size",
)


class CheckpointError(RuntimeError):
    """A checkpoint or vision tower that cannot be loaded; the message says which file or key and why."""


# Models that ship inside this package, by name: lisa-tiny-rooms (trained by lisa-train on synthetic rooms; see its
# MODEL_CARD.md) is the default wherever no model is given.
EMBEDDED = {"lisa-tiny-rooms": Path(__file__).parent / "models" / "lisa-tiny-rooms"}
DEFAULT_MODEL = "lisa-tiny-rooms"


def resolve_checkpoint(path_or_id: str) -> Path:
    """An embedded model's name (``lisa-tiny-rooms``) → its directory in this package; a local directory as is;
    otherwise download the hub repo (config, tokenizer, weights) and return its path."""
    if path_or_id in EMBEDDED:
        embedded = EMBEDDED[path_or_id]
        if not (embedded / "config.json").is_file():
            raise CheckpointError(f"the embedded model {path_or_id} is missing from this install ({embedded}); "
                                  "`make embedded-model` remakes it")
        return embedded
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    if local.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise CheckpointError(f"checkpoint '{path_or_id}' is not a directory and not a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path_or_id, allow_patterns=["*.json", "*.model", "*.bin", "*.safetensors"]))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(f"cannot download checkpoint '{path_or_id}' from the hub: {err}") from err


def weight_files(ckpt: Path) -> list[Path]:
    for index in WEIGHT_INDEXES:
        if (ckpt / index).is_file():
            shards = sorted(set(json.loads((ckpt / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (ckpt / s).is_file()]
            if missing:
                raise CheckpointError(f"{ckpt / index} names shards that are not there: {missing}")
            return [ckpt / s for s in shards]
    for name in WEIGHT_FILES:
        if (ckpt / name).is_file():
            return [ckpt / name]
    raise CheckpointError(
        f"no weights in {ckpt}: expected one of {', '.join(WEIGHT_INDEXES + WEIGHT_FILES)}"
    )


def read_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint (``.bin`` files memory-mapped, so a 7B checkpoint costs little RAM)."""
    state: dict[str, torch.Tensor] = {}
    files = weight_files(ckpt)
    for file in tqdm(files, desc="reading shards", unit="file", disable=len(files) < 2 or None):
        try:
            if file.suffix == ".safetensors":
                state.update(load_safetensors(str(file)))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
        except Exception as err:
            raise CheckpointError(f"cannot read weights file {file}: {err}") from err
    return {k: v for k, v in state.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}


def read_config(ckpt: Path) -> LisaConfig:
    file = ckpt / "config.json"
    if not file.is_file():
        raise CheckpointError(f"no config.json in {ckpt}")
    fields = json.loads(file.read_text())
    if fields.get("rope_scaling") is None:
        fields.pop("rope_scaling", None)  # transformers 5 reads rope settings from rope_parameters
    fields.pop("torch_dtype", None)
    fields.pop("transformers_version", None)
    return LisaConfig(**fields)


def resolve_vision_tower(ckpt: Path, config: LisaConfig, override: str | None) -> str:
    """The vision tower to load: the override, else ``config.vision_tower`` (relative to the checkpoint if there)."""
    name = override or getattr(config, "vision_tower", None) or getattr(config, "mm_vision_tower", None)
    if not name:
        raise CheckpointError(f"{ckpt}/config.json names no vision_tower and none was given")
    inside = ckpt / name
    return str(inside) if not override and inside.is_dir() else name


def load_vision_tower(name: str, dtype: torch.dtype) -> CLIPVisionModel:
    try:
        return CLIPVisionModel.from_pretrained(name, dtype=dtype)
    except Exception as err:
        raise CheckpointError(
            f"cannot load the CLIP vision tower '{name}' (pass vision_tower=<dir or hub id> to override): {err}"
        ) from err


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def check_shapes(got: dict[str, tuple], expected: dict[str, tuple], what: str) -> None:
    """Raise ``CheckpointError`` starting with ``what`` and naming the missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if tuple(got[k]) != tuple(expected[k]))
    problems = [f"{len(keys)} {label} {listing}" for keys, label, listing in (
        (missing, "missing", missing[:5]), (unexpected, "unexpected", unexpected[:5]),
        (wrong, "with wrong shapes (got, expected)", [(k, tuple(got[k]), tuple(expected[k])) for k in wrong[:5]]),
    ) if keys]
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")


def build_model(config: LisaConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> LisaForCausalLM:
    """Build the network without allocating, then assign every checkpoint tensor; all keys must match."""
    try:
        spec = SamSpec.from_state_dict(shapes(state))
    except ValueError as err:
        raise CheckpointError(f"checkpoint does not match the LISA layout: {err}") from err
    config.sam_image_encoder = asdict(spec)
    with init_empty_weights(include_buffers=False):
        model = LisaForCausalLM(config)
    expected = {k: v for k, v in shapes(model.state_dict()).items() if NOT_SAVED not in k}
    check_shapes(shapes(state), expected, "checkpoint does not match the LISA layout")
    tensors = tqdm(state.items(), total=len(state), desc="loading weights", unit="tensor", disable=None)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors}, strict=False, assign=True)
    model.to(dtype)
    # segment-anything builds its positional grid in float32; keep its random matrix there too.
    model.sam.prompt_encoder.pe_layer.float()
    model.config.use_cache = True
    return model.eval()


def load_tokenizer(ckpt: Path):
    if not any((ckpt / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"no tokenizer (tokenizer.model / tokenizer.json) in {ckpt}")
    with warnings.catch_warnings():  # it parses config.json as transformers' own "llava" type: rope_scaling noise
        warnings.filterwarnings("ignore", message=".*rope_scaling.*", category=FutureWarning)
        return AutoTokenizer.from_pretrained(str(ckpt))


def official_config_dict(config: LisaConfig, dtype: torch.dtype) -> dict:
    """``config.json`` as the reference writes it (transformers 4.31 field names)."""
    fields = config.to_dict()
    fields.update(
        architectures=["LISAForCausalLM"], model_type="llava", torch_dtype=str(dtype).replace("torch.", ""),
        transformers_version=fields.get("transformers_version", "4.31.0"), rope_scaling=None, use_cache=False,
        mm_vision_tower=getattr(config, "mm_vision_tower", config.vision_tower),
    )
    return {k: fields.get(k) for k in OFFICIAL_CONFIG_FIELDS}


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def save_checkpoint(model: LisaForCausalLM, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``config.json``, ``pytorch_model.bin`` (no vision tower) and the tokenizer files copied from
    ``tokenizer_dir``, in the official layout; a vision tower kept inside ``tokenizer_dir`` is copied along."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = model.model.embed_tokens.weight.dtype
    state = {k: v.contiguous() for k, v in model.state_dict().items() if NOT_SAVED not in k}
    # Write then rename: a loaded model may still memory-map the old file, which must stay intact.
    tmp = out / "pytorch_model.bin.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "pytorch_model.bin")
    (out / "config.json").write_text(json.dumps(official_config_dict(model.config, dtype), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
        "pad_token_id": model.config.pad_token_id,
    }, indent=2) + "\n")
    source_dir = Path(tokenizer_dir)
    for name in TOKENIZER_FILES:
        source = source_dir / name
        if source.is_file() and source.resolve() != (out / name).resolve():
            shutil.copyfile(source, out / name)
    tower = getattr(model.config, "vision_tower", None)
    if tower and (source_dir / tower).is_dir() and (source_dir / tower).resolve() != (out / tower).resolve():
        shutil.copytree(source_dir / tower, out / tower, dirs_exist_ok=True)  # a tower shipped inside the checkpoint
    return out
