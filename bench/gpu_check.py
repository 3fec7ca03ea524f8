"""GPU check: a LISA-7B-shaped model with random weights, in bf16 and in 4-bit, one query each; prints latency per
stage and peak GPU memory and writes ``bench/results/gpu_check.json``. Needs CUDA; no hub access (random weights,
CLIP-L/14-shaped tower built locally, the tiny tokenizer with its vocabulary padded to LLaMA's 32004).

Usage: python bench/gpu_check.py [--modes bf16,4bit] [--new-tokens 32] [--layers 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_7b_shaped(workdir: Path, layers: int) -> Path:
    """Write a random checkpoint with LISA-7B's shapes (official layout) plus a CLIP-L/14-shaped tower."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from lisa_core.checkpoint import save_checkpoint
    from lisa_core.model import LisaForCausalLM, SamSpec
    from lisa_core.tiny import CLIP_DIR, make_tiny, tiny_config

    tiny = make_tiny(workdir / "tiny")
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=224, patch_size=14,
                                            projection_dim=768)).half()
    out = workdir / "lisa-7b-shaped"
    clip.save_pretrained(str(out / CLIP_DIR))
    (out / CLIP_DIR / "preprocessor_config.json").write_bytes((tiny / CLIP_DIR / "preprocessor_config.json").read_bytes())
    config = tiny_config(32004, 1024, SamSpec())
    config.update(dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32))
    torch.set_default_dtype(torch.float16)
    model = LisaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        model.lm_head.weight[2] = -1  # the tokenizer's </s>: keep generating for the full length
    save_checkpoint(model, tiny, out)
    return out


def run_mode(ckpt: Path, mode: str, new_tokens: int, image) -> dict:
    from lisa_core import Lisa

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    lisa = Lisa.from_pretrained(str(ckpt), device="cuda", dtype="bfloat16" if mode == "bf16" else "float16",
                                quantization=None if mode in ("bf16", "fp16") else mode)
    load_s = time.perf_counter() - start
    question = "Where can I wash my hands? Please output segmentation mask."
    lisa.chat(image, question, max_new_tokens=4)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    session = lisa.session(image)
    first = session.chat(question, max_new_tokens=new_tokens)
    follow = session.chat("And where can I sit?", max_new_tokens=new_tokens)
    forced = lisa.segment(image, question, "Sure, it is [SEG].")
    torch.cuda.synchronize()
    report = {"mode": mode, "load_s": load_s, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
              "first_query": first.timings, "follow_up": follow.timings, "teacher_forced": forced.timings,
              "ms_per_token": 1000 * first.timings["decode"] / max(1, first.timings["decode_tokens"])}
    del lisa
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="bf16,4bit")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=32, help="LLaMA layers (7B has 32)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from lisa_core.output import read_image
    from lisa_core.tiny import SAMPLE_IMAGE

    image = read_image(SAMPLE_IMAGE)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_7b_shaped(Path(tmp), args.layers)
        for mode in args.modes.split(","):
            report = run_mode(ckpt, mode, args.new_tokens, image)
            results["runs"].append(report)
            stages = {k: round(v * 1000, 1) for k, v in report["first_query"].items() if k != "decode_tokens"}
            print(f"{mode}: load {report['load_s']:.1f} s, peak {report['peak_memory_gib']:.2f} GiB, "
                  f"{report['ms_per_token']:.1f} ms/token, first query ms {stages}, "
                  f"follow-up total {report['follow_up']['total'] * 1000:.1f} ms", flush=True)
    out = ROOT / "bench" / "results" / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
