"""Engine benchmark: per-stage times of one query and of a follow-up turn, against the reference's algorithm on the
same weights (``reference_algorithm.py``), fp32 on CPU. Prints a table and writes ``bench/results/engine.json``.

Fixtures: ``reference_tiny`` (../shared, SAM encoder at 1024), ``tiny`` (lisa-make-tiny, SAM at 256) and ``mid``
(random: LLaMA hidden 1024 × 8 layers, CLIP 768 × 12 layers, SAM ViT-B at 1024).
Usage: python bench/bench_engine.py [--fixtures tiny,reference_tiny,mid] [--new-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_algorithm import reference_query  # noqa: E402

from lisa_core import Lisa  # noqa: E402
from lisa_core.model import LisaForCausalLM, SamSpec  # noqa: E402
from lisa_core.output import read_image  # noqa: E402
from lisa_core.prompt import first_turn_text, next_turn_text  # noqa: E402
from lisa_core.tiny import SAMPLE_IMAGE, make_tiny, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / ".." / "shared" / "reference_tiny"
RESULTS = ROOT / "bench" / "results"
QUESTION = "Where can I wash my hands? Please output segmentation mask."
FOLLOW_UP = "And what is on the table? Please output segmentation mask."


def load_fixture(name: str, workdir: Path) -> Lisa:
    if name == "reference_tiny":
        return Lisa.from_pretrained(str(REFERENCE / "ckpt"), vision_tower=str(REFERENCE / "clip_tiny"), device="cpu")
    tiny = make_tiny(workdir / "tiny")
    lisa = Lisa.from_pretrained(str(tiny), device="cpu")
    if name == "tiny":
        return lisa
    return mid_size(lisa)


def mid_size(tiny: Lisa, probe_image=None) -> Lisa:
    """A random mid-size LISA sharing the tiny fixture's tokenizer, made to answer ``QUESTION`` on ``probe_image``
    (default: the sample room) with a ``[SEG]``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, image_size=224, patch_size=14))
    vit_b = SamSpec(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11])
    config = tiny_config(tiny.model.config.vocab_size, 768, vit_b)
    # (head_dim too: the config computed it from the tiny sizes, and a checkpoint in the official layout carries
    # none, so a saved mid model loaded back as hidden_size / heads and failed on its 256-wide attention)
    config.update(dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                       num_key_value_heads=16, head_dim=1024 // 16))
    model = LisaForCausalLM(config)
    model.attach_vision_tower(clip)
    lisa = Lisa(model.eval(), tiny.tokenizer, tiny.clip_processor, torch.device("cpu"), "mid")
    teach_reply(lisa, read_image(SAMPLE_IMAGE) if probe_image is None else probe_image, QUESTION, MID_REPLY)
    return lisa


MID_REPLY = "Sure, it is [SEG]."  # what LISA answers: a short sentence, one mask


def teach_reply(lisa: Lisa, image, question: str, reply: str, rounds: int = 30) -> None:
    """Make greedy decoding of random weights answer ``question`` on ``image`` with ``reply`` then EOS: for each
    position where it goes astray, the ``lm_head`` row of the wanted token is pushed along that position's hidden
    state until it wins by a margin (the hidden states of a random 1024-wide model are nearly orthogonal, so the
    pushes hardly disturb each other). Benchmarks then time a LISA-like answer (one ``[SEG]``) on mid-size weights."""
    from lisa_core.prompt import first_turn_text, token_end_positions

    tokenizer, model = lisa.tokenizer, lisa.model
    target = tokenizer.encode(reply, add_bos=False) + [tokenizer.eos_token_id]
    prompt = tokenizer.encode(first_turn_text(question))
    state = lisa.image_state(image)
    with torch.no_grad():
        features = lisa.clip_features(state)
        ids = prompt + target[:-1]
        embeds = model.embed_ids(torch.tensor(ids, device=lisa.device), features)
        hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
        hidden = hidden[token_end_positions(ids, features.shape[0])][len(prompt) - 1:]  # predicting each target
        head = model.lm_head.weight
        for _ in range(rounds):
            logits = hidden @ head.T
            wrong = [k for k, t in enumerate(target) if int(logits[k].argmax()) != t]
            if not wrong:
                break
            for k in wrong:
                h, t = hidden[k], target[k]
                gap = float(logits[k].max() - logits[k, t]) + 1.0
                head[t] += gap * h / float(h @ h)
    got = lisa.chat(image, question, max_new_tokens=len(target) + 4).token_ids
    assert got == target, f"the mid model answers {tokenizer.decode(got)!r}, not {reply!r}"


def scenarios(name: str) -> dict:
    """(image, question) per scenario: the sample room, and a query that makes the fixture answer with [SEG]."""
    room = read_image(SAMPLE_IMAGE)
    if name == "reference_tiny":  # the reference fixture answers this one with a [SEG] (its case gen2)
        return {"no_mask": (room, QUESTION),
                "with_mask": (read_image(REFERENCE / "small.png"), "Can you segment the yellow box in this image?")}
    return {"with_mask": (room, QUESTION)}


def timed(fn, repeats: int):
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - start, out))
    seconds = statistics.median(t for t, _ in runs)
    return seconds, runs[-1][1]


def bench_scenario(lisa: Lisa, image, question: str, new_tokens: int, repeats: int, ref_repeats: int) -> dict:
    encode = lisa.tokenizer.encode
    lisa.chat(image, question, max_new_tokens=2)  # warm-up (allocator, kernels)

    ours_s, first = timed(lambda: lisa.chat(image, question, max_new_tokens=new_tokens), repeats)
    prompt = encode(first_turn_text(question))
    ref_s, ref = timed(lambda: reference_query(lisa, image, prompt, new_tokens), ref_repeats)
    assert ref["token_ids"] == first.token_ids, "reference algorithm and engine disagree on generated ids"

    def follow_up():
        session = lisa.session(image)
        session.chat(question, max_new_tokens=new_tokens)
        return session, session.chat(FOLLOW_UP, max_new_tokens=new_tokens)

    follow_runs = [follow_up() for _ in range(repeats)]
    second = follow_runs[-1][1]
    follow_s = statistics.median(r.timings["total"] for _, r in follow_runs)
    eos = lisa.tokenizer.eos_token_id
    conversation = prompt + first.token_ids + ([eos] if first.token_ids[-1] != eos else [])
    conversation += encode(next_turn_text(FOLLOW_UP), add_bos=False)
    ref_follow_s, ref_follow = timed(lambda: reference_query(lisa, image, conversation, new_tokens), ref_repeats)
    assert ref_follow["token_ids"] == second.token_ids, "follow-up ids differ between session and reference"
    return {
        "new_tokens": len(first.token_ids), "masks_first": len(first.masks), "masks_follow_up": len(second.masks),
        "first_query": {"ours_s": ours_s, "reference_s": ref_s, "speedup": ref_s / ours_s,
                        "ours_stages_s": first.timings},
        "follow_up": {"ours_s": follow_s, "reference_s": ref_follow_s, "speedup": ref_follow_s / follow_s,
                      "ours_stages_s": second.timings},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default="tiny,reference_tiny,mid")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs of our engine per measurement (median)")
    args = parser.parse_args(argv)
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "dtype": "float32", "new_tokens": args.new_tokens, "fixtures": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.fixtures.split(","):
            print(f"[{name}] loading…", flush=True)
            lisa = load_fixture(name, Path(tmp))
            repeats = 1 if name == "mid" else args.repeats
            report["fixtures"][name] = {}
            for scenario, (image, question) in scenarios(name).items():
                result = bench_scenario(lisa, image, question, args.new_tokens, repeats, 1)
                report["fixtures"][name][scenario] = result
                for turn in ("first_query", "follow_up"):
                    r = result[turn]
                    stages = ", ".join(f"{k} {v * 1000:.1f}" for k, v in r["ours_stages_s"].items()
                                       if k not in ("decode_tokens", "total"))
                    masks = result["masks_first" if turn == "first_query" else "masks_follow_up"]
                    print(f"[{name}/{scenario}] {turn} ({masks} masks): ours {r['ours_s']:.3f} s, reference "
                          f"{r['reference_s']:.3f} s → {r['speedup']:.1f}×  (ms: {stages})", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS / 'engine.json'}")


if __name__ == "__main__":
    main()
