"""``lisa-chat``: ask LISA about an image, one-shot or in a multi-turn REPL; writes masks, overlay, reply.json."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .checkpoint import DEFAULT_MODEL
from .engine import Lisa
from .output import read_image, save_result

REPL_HELP = "commands: ':image PATH' new image (new conversation), ':reset' forget the conversation, ':quit'"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lisa-chat", description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint directory, hub id (e.g. xinlai/LISA-7B-v1) or "
                   f"embedded model name (default: {DEFAULT_MODEL}, trained on synthetic rooms)")
    p.add_argument("--vision-tower", help="CLIP vision tower (dir or hub id); default: the checkpoint's config")
    p.add_argument("--image", help="image file (required with --prompt; the REPL asks if missing)")
    p.add_argument("--prompt", help="question; one-shot mode. Without it: a multi-turn REPL")
    p.add_argument("--answer", help="teacher-forced answer containing [SEG] (the reference's validation mode)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="default fp32")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--load-in-4bit", action="store_true", help="NF4 LLM weights via bitsandbytes (CUDA only)")
    q.add_argument("--load-in-8bit", action="store_true", help="int8 LLM weights via bitsandbytes (CUDA only)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default 512")
    p.add_argument("--out", required=True, help="output directory for reply.json, mask PNGs and overlay.png")
    return p.parse_args(argv)


def run_once(lisa: Lisa, args) -> dict:
    image = read_image(args.image)
    if args.answer:
        result = lisa.segment(image, args.prompt, args.answer)
    else:
        result = lisa.chat(image, args.prompt, max_new_tokens=args.max_new_tokens)
    return save_result(args.out, image, result, args.prompt)


def repl(lisa: Lisa, args, read=input) -> None:
    print(REPL_HELP)
    session, image, turn_dir = None, None, 0
    if args.image:
        image = read_image(args.image)
        session = lisa.session(image)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            return
        if line in (":quit", ":q"):
            return
        try:
            if line.startswith(":image"):
                image = read_image(line[len(":image"):].strip())
                session = lisa.session(image)
                print("new image; conversation started afresh")
            elif line == ":reset":
                session and session.reset()
                print("conversation reset")
            elif not line:
                continue
            elif session is None:
                print("no image yet: ':image PATH' first")
            else:
                result = session.chat(line, max_new_tokens=args.max_new_tokens)
                turn_dir += 1
                folder = Path(args.out) / f"turn_{turn_dir:03d}"
                reply = save_result(folder, image, result, line)
                print(f"lisa> {result.text}\n      {len(result.masks)} mask(s) → {folder}")
                for m in reply["masks"]:
                    print(f"      mask {m['index']}: score {m['score']:.3f}, area {m['area']} px")
        except ValueError as err:
            print(f"error: {err}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.prompt and not args.image:
        print("lisa-chat: --prompt needs --image", file=sys.stderr)
        return 2
    if args.answer and not args.prompt:
        print("lisa-chat: --answer needs --prompt (the teacher-forced mode is one-shot)", file=sys.stderr)
        return 2
    quantization = "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else None
    try:
        lisa = Lisa.from_pretrained(args.model, vision_tower=args.vision_tower, device=args.device,
                                    dtype=args.precision, quantization=quantization)
        if not args.prompt:
            repl(lisa, args)
            return 0
        reply = run_once(lisa, args)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"lisa-chat: {err}", file=sys.stderr)
        return 1
    print(f"reply: {reply['text']}")
    for m in reply["masks"]:
        print(f"mask {m['index']}: score {m['score']:.3f}, area {m['area']} px → {Path(args.out) / m['file']}")
    print(f"overlay → {Path(args.out) / 'overlay.png'}; reply → {Path(args.out) / 'reply.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
