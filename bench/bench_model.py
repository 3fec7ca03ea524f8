"""Does the embedded model answer right? Scores a model (default: the embedded ``lisa-tiny-rooms``) on held-out
synthetic rooms (``room_seed``: string-seeded, no room shared with the training scenes), four ways:

- teacher-forced, the reference's validation protocol (``lisa-eval`` on a ReasonSeg folder: first query, the
  reference's val prompts, answer "[SEG]."): gIoU / cIoU;
- free chat as a user asks (``lisa.chat``, greedy): every target of every room, asked by name or by use in the
  phrasings below; the share of replies with a ``[SEG]`` (and a mask), the share naming the right object first,
  the share in the answer forms the data teaches (readable), and chat-mode gIoU (a missing mask scores 0);
- follow-ups in a session: a first question, then "And <use>?" / "What about the <name>?" about another object of
  the room: the share of second answers naming the right object, and their gIoU;
- questions needing no mask ("What color is the wall?", "Is there a … in this room?"): the share answered without
  ``[SEG]`` and the share answered right.

Writes ``bench/results/model.json`` (with per-class figures and the worst replies).

Usage: python bench/bench_model.py [--model lisa-tiny-rooms] [--rooms 200] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from lisa_core import Lisa  # noqa: E402
from lisa_core.checkpoint import DEFAULT_MODEL  # noqa: E402
from lisa_core.metrics import first_mask_iou, named_in  # noqa: E402
from training import templates  # noqa: E402
from training.data.rooms import TARGETS, WALL_COLOURS, draw_room  # noqa: E402
from training.data.synthetic import no_mask_turn, room_seed, write_reasonseg_split  # noqa: E402
from training.evaluate import evaluate_items, reasonseg_val_items  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BY_NAME = ("Can you segment the {c} in this image?", "Where is the {c}?", "Can you show me the {c}?",
           "What is {c} in this image? Please output segmentation mask.")
BY_USE = ("{u}", "{u} Please output segmentation mask.")
FOLLOW_BY_NAME = ("What about the {c}?", "And the {c}?")
ANSWER_FORMS = {a.format(class_name=c) for a in templates.NAMED_ANSWERS + templates.ANSWERS for c in TARGETS}


def readable(reply: str) -> bool:
    """The reply is one of the answer forms the data teaches (decoding puts a space after ``[SEG]``)."""
    return re.sub(r"\s+([.,?!])", r"\1", reply.strip()) in ANSWER_FORMS


def answer_row(question: str, result, name: str, mask) -> dict:
    """What one answer to a question for ``name`` got right."""
    return {"class": name, "question": question, "reply": result.text,
            "seg": "[SEG]" in result.text and len(result.masks) > 0,
            "named": (named_in(result.text, TARGETS) or [None])[0], "readable": readable(result.text),
            "iou": first_mask_iou(result.masks, mask)}


def ask(rng: random.Random, name: str) -> tuple[str, str]:
    """A question for ``name``, by name or by one of its uses; returns (question, "name" | "use")."""
    if rng.random() < 0.5:
        return rng.choice(BY_NAME).format(c=name), "name"
    return rng.choice(BY_USE).format(u=rng.choice(TARGETS[name][1])), "use"


def follow_up(rng: random.Random, name: str) -> str:
    if rng.random() < 0.5:
        return rng.choice(FOLLOW_BY_NAME).format(c=name)
    use = rng.choice(TARGETS[name][1])
    return templates.FOLLOWUP_USE_PREFIX + use[0].lower() + use[1:]


def chat_scores(lisa: Lisa, rooms, rng: random.Random, max_new_tokens: int) -> tuple[dict, list[dict]]:
    rows = []
    for index, room in tqdm(rooms, desc="free chat", disable=None):
        for name, mask in sorted(room.masks.items()):
            question, kind = ask(rng, name)
            result = lisa.chat(room.image, question, max_new_tokens=max_new_tokens)
            rows.append({"room": index, "kind": kind, **answer_row(question, result, name, mask)})
    return summarise(rows), rows


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    return {"questions": n, "seg_rate": sum(r["seg"] for r in rows) / n,
            "named_right": sum(r["named"] == r["class"] for r in rows) / n,
            "readable": sum(r["readable"] for r in rows) / n, "giou": float(np.mean([r["iou"] for r in rows])),
            "iou_at_least_0.5": sum(r["iou"] >= 0.5 for r in rows) / n}


def followup_scores(lisa: Lisa, rooms, rng: random.Random, max_new_tokens: int) -> tuple[dict, list[dict]]:
    rows = []
    for index, room in tqdm(rooms, desc="follow-ups", disable=None):
        if len(room.masks) < 2:
            continue
        first, second = rng.sample(sorted(room.masks), 2)
        session = lisa.session(room.image)
        session.chat(ask(rng, first)[0], max_new_tokens=max_new_tokens)
        question = follow_up(rng, second)
        result = session.chat(question, max_new_tokens=max_new_tokens)
        rows.append({"room": index, "first": first, **answer_row(question, result, second, room.masks[second])})
    return summarise(rows), rows


def no_mask_scores(lisa: Lisa, rooms, rng: random.Random, max_new_tokens: int) -> tuple[dict, list[dict]]:
    rows = []
    for index, room in tqdm(rooms, desc="no-mask questions", disable=None):
        question, truth = no_mask_turn(rng, room)
        result = lisa.chat(room.image, question, max_new_tokens=max_new_tokens)
        rows.append({"room": index, "question": question, "truth": truth, "reply": result.text,
                     "seg": "[SEG]" in result.text, "right": answer_right(result.text, truth),
                     "kind": "wall colour" if "colo" in question else "is there"})
    summary = {"questions": len(rows), "without_seg": sum(not r["seg"] for r in rows) / len(rows),
               "right": sum(r["right"] for r in rows) / len(rows)}
    for kind in ("wall colour", "is there"):
        part = [r for r in rows if r["kind"] == kind]
        summary[f"right_{kind.replace(' ', '_')}"] = sum(r["right"] for r in part) / max(len(part), 1)
    return summary, rows


def answer_right(reply: str, truth: str) -> bool:
    """The reply says the same as ``truth``: the same wall colour, or the same yes/no."""
    if truth.startswith("The wall is "):
        colours = [c for c in WALL_COLOURS if re.search(rf"\b{c}\b", reply)]
        return colours == [truth[len("The wall is "):-1]]
    return reply.strip().lower().startswith(truth.split(",")[0].lower())


def per_class(rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r["class"]].append(r)
    return {c: {"n": len(g), "named_right": sum(r["named"] == c for r in g) / len(g),
                "giou": float(np.mean([r["iou"] for r in g]))} for c, g in sorted(groups.items())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rooms", type=int, default=200, help="held-out rooms")
    parser.add_argument("--seed", type=int, default=7, help="held-out split (the training val split is 1)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default=str(RESULTS / "model.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    lisa = Lisa.from_pretrained(args.model, device="cpu", dtype="float32")
    rooms = [(i, draw_room(room_seed(args.seed, i))) for i in range(args.rooms)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_reasonseg_split(Path(tmp) / "held_out", args.rooms, seed=args.seed)
        teacher, _ = evaluate_items(lisa, reasonseg_val_items(folder), progress=True)
    rng = random.Random(args.seed)
    chat, chat_rows = chat_scores(lisa, rooms, rng, args.max_new_tokens)
    follow, follow_rows = followup_scores(lisa, rooms, rng, args.max_new_tokens)
    no_mask, no_mask_rows = no_mask_scores(lisa, rooms, rng, args.max_new_tokens)
    by_kind = {k: summarise([r for r in chat_rows if r["kind"] == k]) for k in ("name", "use")}
    worst = sorted(chat_rows, key=lambda r: (r["named"] == r["class"], r["iou"]))[:10]
    summary = {"model": args.model, "held_out_rooms": args.rooms, "split_seed": args.seed,
               "teacher_forced": teacher, "chat": {**chat, "by_kind": by_kind, "per_class": per_class(chat_rows)},
               "follow_up": {**follow, "per_class": per_class(follow_rows)}, "no_mask": no_mask,
               "reply_forms": dict(Counter(r["reply"] for r in chat_rows).most_common(8)),
               "worst_chat": worst, "no_mask_wrong": [r for r in no_mask_rows if not r["right"]][:8],
               "wall_s": time.perf_counter() - start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"teacher-forced gIoU {teacher['giou']:.3f} (cIoU {teacher['ciou']:.3f}) on {args.rooms} held-out rooms")
    print(f"chat: [SEG] {chat['seg_rate']:.1%}, right object named {chat['named_right']:.1%}, readable "
          f"{chat['readable']:.1%}, gIoU {chat['giou']:.3f} over {chat['questions']} questions")
    print(f"follow-up: right object named {follow['named_right']:.1%}, gIoU {follow['giou']:.3f} "
          f"over {follow['questions']} sessions")
    print(f"no mask wanted: answered without [SEG] {no_mask['without_seg']:.1%}, right {no_mask['right']:.1%}")
    print(f"written to {args.out} ({summary['wall_s']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
