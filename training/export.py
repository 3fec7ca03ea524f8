"""``lisa-export RUN_DIR OUT_DIR``: a training run's DeepSpeed checkpoint → fp32 → LoRA merged → a checkpoint in the
official LISA layout (``Lisa.from_pretrained``, the ROS node and the reference code load it). ``--adapter-only``
writes the LoRA adapter (peft format) plus the other trained weights (lm_head, embed_tokens, mask decoder,
text_hidden_fcs) instead, for switching adapters on one base model: ``Lisa.load_adapter`` / ``set_adapter``, and the
node's ``adapter`` parameter, load it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from lisa_core import Lisa
from lisa_core.adapters import TRAINED_WEIGHTS
from lisa_core.checkpoint import resolve_checkpoint, save_checkpoint

from .train import TrainConfig, TrainModule, add_lora, load_model

ADAPTER_EXTRA = TRAINED_WEIGHTS


def load_trained(run_dir: str | Path, tag: str | None = None) -> tuple[Lisa, TrainModule]:
    """Rebuild the run's model (base checkpoint + LoRA) and load its fp32 weights from the DeepSpeed checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = Path(run_dir)
    config_file = run / "train_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run} is not a lisa-train run directory (no train_config.json)")
    config = TrainConfig(**json.loads(config_file.read_text()))
    lisa = load_model(config, "cpu")
    module = TrainModule(add_lora(lisa.model, config), lisa.tokenizer.seg_token_id, None)
    state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag)
    missing, unexpected = module.load_state_dict(state, strict=False)
    trained_missing = [k for k in missing if "lora_" in k or any(x in k for x in config.trainable)]
    if trained_missing or unexpected:
        raise RuntimeError(f"checkpoint does not fit the run's model: missing {trained_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return lisa, module


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_merged(peft_model, tokenizer_dir, out_dir, dtype: torch.dtype | None = None) -> Path:
    """The LoRA merged into its base layers (in fp32), then cast to ``dtype`` if given, written in the official
    layout (this unwraps ``peft_model``)."""
    merged = peft_model.merge_and_unload()
    return save_checkpoint(merged if dtype is None else merged.to(dtype), tokenizer_dir, out_dir)


def save_adapter(peft_model, out_dir) -> Path:
    """peft's ``save_pretrained`` (the LoRA) plus ``trained_weights.safetensors``: every other trainable tensor."""
    out = Path(out_dir)
    # the embeddings go into trained_weights with the rest (peft's "auto" would look the base up on the hub and
    # could put them into adapter_model.safetensors as well)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    extra = {name: param.detach().contiguous() for name, param in peft_model.named_parameters()
             if param.requires_grad and "lora_" not in name}
    save_file(extra, str(out / ADAPTER_EXTRA))
    return out


def export_merged(run_dir, out_dir, tag: str | None = None, dtype: torch.dtype | None = None) -> Path:
    lisa, module = load_trained(run_dir, tag)
    return save_merged(module.peft_model, resolve_checkpoint(str(lisa.source_dir)), out_dir, dtype)


def export_adapter(run_dir, out_dir, tag: str | None = None) -> Path:
    _, module = load_trained(run_dir, tag)
    return save_adapter(module.peft_model, out_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lisa-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the lisa-train output directory")
    parser.add_argument("out_dir", help="where to write the checkpoint")
    parser.add_argument("--tag", help="checkpoint tag: 'best' (highest held-out gIoU), step_N (default: the latest)")
    parser.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter + trained weights only")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="cast the merged checkpoint's weights (default: as trained); the official ones are bf16")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.adapter_only and args.dtype:
        parser.error("--dtype applies to merged checkpoints only")
    try:
        if args.adapter_only:
            out = export_adapter(args.run_dir, args.out_dir, args.tag)
        else:
            out = export_merged(args.run_dir, args.out_dir, args.tag, DTYPES.get(args.dtype))
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"lisa-export: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
