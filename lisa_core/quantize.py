"""4-bit (NF4, double quantisation, fp16 compute) and 8-bit LLM weights through bitsandbytes.

As in the reference, every ``nn.Linear`` of the language side is replaced except ``lm_head``; SAM
(``visual_model``) and the CLIP tower stay unquantised. The weights are quantised when the model moves to CUDA.
"""
from __future__ import annotations

import torch
from torch import nn

MODES = ("4bit", "8bit")
SKIPPED = ("visual_model", "vision_tower", "lm_head")


class QuantizationError(RuntimeError):
    """Quantisation was asked for where it cannot run."""


def check_quantization(mode: str | None, device: torch.device) -> None:
    if mode is None:
        return
    if mode not in MODES:
        raise QuantizationError(f"quantization must be one of {MODES} or None, got {mode!r}")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise QuantizationError(
            f"{mode} quantization needs a CUDA GPU (bitsandbytes kernels); device is '{device}'"
            f"{'' if torch.cuda.is_available() else ' and this machine has no CUDA'} — load without quantization"
        )


def _quantized_linear(linear: nn.Linear, mode: str) -> nn.Module:
    import bitsandbytes as bnb

    bias = linear.bias is not None
    weight = linear.weight.data.to(torch.float16)
    if mode == "4bit":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                  compute_dtype=torch.float16, compress_statistics=True, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias,
                                    has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias:
        layer.bias = nn.Parameter(linear.bias.data.to(torch.float16), requires_grad=False)
    return layer


def quantize_linears(model: nn.Module, mode: str) -> int:
    """Replace the language side's ``nn.Linear`` layers in place; returns how many were replaced."""
    targets = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(s in name for s in SKIPPED)
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _quantized_linear(getattr(parent, child), mode))
    return len(targets)


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes linear layer (its weight is packed integers; ``in/out_features`` give the logical shape)."""
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> nn.Module:
    """A quantised layer made from float ``weight`` ``[out, in]`` and ``bias`` (quantised when moved to CUDA)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return _quantized_linear(linear, mode)
