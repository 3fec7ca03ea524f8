"""Synthetic indoor rooms (drawn by ``rooms.draw_room``: furniture in varied colours, textures, sizes and places,
distractors, lighting) with exact masks, and questions about them — by name ("Can you segment the chair in this
image?") or by use ("Where can I sit?").

Rooms come two ways: in memory (``SyntheticRooms``), or written to disk in the published layouts the trainer reads
(``lisa-make-rooms``): ScanNet v2 2D export scenes with ReasonSeg-format ``reason/<frame>[_<k>].json`` files (one
per object, its uses as the queries), a LLaVA-Instruct-format json of questions that need no mask ("What color is
the wall?", "Is there a bed in this room?") about those frames, and ReasonSeg folders (``*.jpg`` + LabelMe-style
``*.json``) for evaluation."""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..collate import Sample
from .. import templates
from ..templates import ANSWERS, LONG_QUESTIONS, SHORT_QUESTIONS
from .rooms import LABELS, NYU40, TARGETS, WALL_COLOURS, Room, draw_room

CLASSES = TARGETS  # class → (NYU40 id, its uses)
VQA_JSON = "rooms_vqa"  # DIR/llava_dataset/rooms_vqa.json, images relative to DIR/scannet


def question_by_name(rng: random.Random, name: str) -> str:
    return rng.choice(SHORT_QUESTIONS).format(class_name=name)


def question_by_use(rng: random.Random, name: str) -> str:
    return rng.choice(LONG_QUESTIONS).format(sent=rng.choice(CLASSES[name][1]))


def room_sample(rng: random.Random, n_classes: int = 1, **room_kwargs) -> Sample:
    """A room and up to ``n_classes`` one-question conversations about its objects (names or uses)."""
    room = draw_room(rng, **room_kwargs)
    names = rng.sample(sorted(room.masks), min(n_classes, len(room.masks)))
    conversations = [[((question_by_name if rng.random() < 0.5 else question_by_use)(rng, name),
                       rng.choice(ANSWERS))] for name in names]
    masks = np.stack([room.masks[n] for n in names]).astype(np.float32)
    return Sample(room.image, conversations, masks, source="synthetic", meta={"classes": names})


class SyntheticRooms:
    """An indexable dataset of rooms: sample ``i`` is the same for the same ``seed``."""

    def __init__(self, size: int, seed: int = 0, n_classes: int = 1, **room_kwargs):
        self.size, self.seed, self.n_classes, self.room_kwargs = size, seed, n_classes, room_kwargs

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return room_sample(random.Random(self.seed * 1_000_003 + index), self.n_classes, **self.room_kwargs)


def room_seed(seed: int, index: int) -> random.Random:
    """The random source of ReasonSeg-layout room ``index`` of split ``seed``: seeded by a string, so that no split
    shares a room with the ScanNet-layout training scenes (seeded by integers) or with another split."""
    return random.Random(f"reasonseg/{seed}/{index}")


# --- questions that need no mask ----------------------------------------------------------------------------------

def no_mask_turn(rng: random.Random, room: Room) -> tuple[str, str]:
    """A question about the room answered in words only: the wall's colour, or whether a thing is there."""
    if rng.random() < 0.5:
        question = rng.choice(("What color is the wall?", "What colour are the walls?", "What color are the walls?"))
        return question, f"The wall is {room.wall_colour}."
    name = rng.choice(sorted(CLASSES))
    question = rng.choice(("Is there a {c} in this room?", "Is there a {c} here?", "Do you see a {c}?")).format(c=name)
    return question, (f"Yes, there is a {name}." if name in room.masks else f"No, there is no {name}.")


def corpus_lines() -> list[str]:
    """Every question and answer the rooms' data can hold, for training a tokenizer with whole words for them."""
    lines = [t for name in dir(templates) if name.isupper() and isinstance(getattr(templates, name), tuple)
             for t in getattr(templates, name)]
    for name, (_, uses) in CLASSES.items():
        lines += [t.format(class_name=name, sent=u) for t in lines[:] if "{" in t for u in uses]
        lines += list(uses) + [templates.FOLLOWUP_USE_PREFIX + u[0].lower() + u[1:] for u in uses]
        lines += [f"Is there a {name} in this room? Yes, there is a {name}. No, there is no {name}."]
    lines += [f"What color is the wall? The wall is {c}." for c in WALL_COLOURS]
    return sorted(set(line for line in lines if "{" not in line))


# --- the published layouts ---------------------------------------------------------------------------------------

def polygons(mask: np.ndarray, min_points: int = 3) -> list[list[list[int]]]:
    """The outer outlines of a mask's regions as LabelMe polygons (``[[x, y], …]``)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c[:, 0].tolist() for c in contours if len(c) >= min_points]


def outline_shapes(mask: np.ndarray) -> list[dict]:
    """LabelMe shapes whose ReasonSeg rasterisation (``mask_from_shapes(...) == 1``) is exactly ``mask``: its
    outlines as "target", the holes in them (where something in front hides the object) as "ignore"."""
    outer = polygons(mask)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(filled, [np.array(p, np.int32) for p in outer], 1)
    holes = polygons(filled.astype(bool) & ~mask.astype(bool), min_points=1)  # a one-pixel hole too
    return [{"label": label, "points": p, "group_id": None, "shape_type": "polygon", "flags": {}}
            for label, group in (("target", outer), ("ignore", holes)) for p in group]


def reasonseg_annotation(room: Room, name: str, queries: list[str], sentence: bool) -> dict:
    """A ReasonSeg json asking for ``name`` with ``queries`` (its uses: sentences; or its name: a phrase)."""
    h, w = room.labels.shape
    return {"text": list(queries), "is_sentence": sentence, "shapes": outline_shapes(room.masks[name]),
            "imageHeight": h, "imageWidth": w}


def write_scannet_tsv(path: Path) -> None:
    """Label id (the index into ``rooms.LABELS``) → its names and NYU40 id, as ScanNet's combined tsv."""
    header = ["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class"]
    rows = ["\t".join(header)] + [f"{i}\t{name}\t{name}\t1\t{NYU40[name]}\t0\t{name}\t{name}"
                                  for i, name in enumerate(LABELS) if i]
    path.write_text("\n".join(rows) + "\n")


def write_image(path: Path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def write_scannet_frame(scene: Path, frame: int, room: Room) -> None:
    """Colour, labels, instances and one reason json per object (``<frame>.json``, ``<frame>_1.json``, …)."""
    write_image(scene / "color" / f"{frame}.jpg", room.image)
    cv2.imwrite(str(scene / "label-filt" / f"{frame}.png"), room.labels.astype(np.uint16))
    cv2.imwrite(str(scene / "instance-filt" / f"{frame}.png"), room.instances)
    for k, name in enumerate(sorted(room.masks)):
        annotation = reasonseg_annotation(room, name, list(CLASSES[name][1]), sentence=True)
        (scene / "reason" / (f"{frame}.json" if k == 0 else f"{frame}_{k}.json")).write_text(json.dumps(annotation))


def write_scannet_scenes(root: str | Path, scenes: int, frames: int, seed: int = 0, **room_kwargs) -> Path:
    """``scenes`` × ``frames`` rooms in the ScanNet v2 2D export layout, each object with a reasoning json; beside
    ``root``, ``llava_dataset/rooms_vqa.json``: a question needing no mask per frame (LLaVA-Instruct format, images
    relative to ``root``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_scannet_tsv(root / "scannetv2-labels.combined.tsv")
    records = []
    for s in tqdm(range(scenes), desc="ScanNet-layout scenes", disable=None):
        scene = root / f"scene{s:04d}_00"
        for sub in ("color", "label-filt", "instance-filt", "reason"):
            (scene / sub).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            rng = random.Random((seed * 10_007 + s) * 100_003 + f)
            room = draw_room(rng, **room_kwargs)
            write_scannet_frame(scene, f, room)
            question, answer = no_mask_turn(rng, room)
            records.append({"id": f"{scene.name}_{f}", "image": f"{scene.name}/color/{f}.jpg", "conversations": [
                {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
    vqa = root.parent / "llava_dataset" / f"{VQA_JSON}.json"
    vqa.parent.mkdir(parents=True, exist_ok=True)
    vqa.write_text(json.dumps(records))
    return root


def write_reasonseg_split(root: str | Path, size: int, seed: int = 0, **room_kwargs) -> Path:
    """``size`` rooms as a ReasonSeg folder, one object each, asked for by one of its uses or (every other image)
    by name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(size), desc=f"ReasonSeg-layout {root.name}", disable=None):
        rng = room_seed(seed, i)
        room = draw_room(rng, **room_kwargs)
        name = rng.choice(sorted(room.masks))
        sentence = i % 2 == 0
        stem = f"room_{seed}_{i:05d}"
        write_image(root / f"{stem}.jpg", room.image)
        annotation = reasonseg_annotation(room, name, [rng.choice(CLASSES[name][1]) if sentence else name], sentence)
        (root / f"{stem}.json").write_text(json.dumps(annotation))
    return root


DEMO_SEED = 1005  # a held-out room with a sink, a table, a chair, a window and a lamp (no training room has it)


def write_demo_room(image_path: str | Path) -> Path:
    """The demo's camera image and its ground truth beside it: ``<stem>_labels.png`` (ids into ``rooms.LABELS``)
    and ``<stem>.json`` (``{"labels": LABELS, "seed": …}``)."""
    room = draw_room(random.Random(DEMO_SEED), targets=(5, 5), distractors=(2, 2),
                     include=("sink", "table", "chair", "window", "lamp"))
    path = Path(image_path)
    cv2.imwrite(str(path), cv2.cvtColor(room.image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(path.with_name(f"{path.stem}_labels.png")), room.labels.astype(np.uint8))
    path.with_suffix(".json").write_text(json.dumps({"labels": list(LABELS), "seed": DEMO_SEED}) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="lisa-make-rooms", description="Write synthetic indoor rooms in the "
                                     "ScanNet v2 2D export layout (training, with reasoning jsons and no-mask "
                                     "questions) and a ReasonSeg folder (evaluation).")
    parser.add_argument("out_dir", help="writes OUT/scannet, OUT/llava_dataset, OUT/reason_seg/val and OUT/corpus.txt "
                        "(the sentences the data holds, for lisa-make-tiny --corpus)")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--frames", type=int, default=50, help="frames per scene")
    parser.add_argument("--val", type=int, default=100, help="rooms in the ReasonSeg val folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    write_scannet_scenes(out / "scannet", args.scenes, args.frames, args.seed)
    write_reasonseg_split(out / "reason_seg" / "val", args.val, args.seed + 1)
    (out / "corpus.txt").write_text("\n".join(corpus_lines()) + "\n")
    print(out)


if __name__ == "__main__":
    main()
