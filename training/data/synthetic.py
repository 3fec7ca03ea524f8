"""Synthetic indoor rooms: a wall, a floor and furniture-like shapes (sink, table, chair, bed, window, door, lamp)
with exact masks, and questions about them — by name ("Can you segment the chair in this image?") or by use
("Where can I sit?").

Rooms come two ways: in memory (``SyntheticRooms``), or written to disk in the published layouts the trainer reads
(``lisa-make-rooms``): ScanNet v2 2D export scenes with a ReasonSeg-format ``reason/<frame>.json`` per frame, and
ReasonSeg folders (``*.jpg`` + LabelMe-style ``*.json``). The benchmark that shows training really learns uses them."""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..collate import Sample
from ..templates import ANSWERS, LONG_QUESTIONS, SHORT_QUESTIONS

# class → (BGR colour, how to ask for it by its use, its NYU40 id)
CLASSES = {
    "sink": ((235, 235, 240), "Where can I wash my hands?", 34),
    "table": ((40, 70, 120), "Where can I put my cup down?", 7),
    "chair": ((60, 140, 60), "Where can I sit?", 5),
    "bed": ((160, 80, 160), "Where can I sleep?", 4),
    "window": ((230, 200, 150), "Where does the daylight come in?", 9),
    "door": ((30, 100, 180), "How do I leave the room?", 8),
    "lamp": ((40, 220, 240), "What gives light at night?", 35),
}
BACKGROUND = {"wall": 1, "floor": 2}  # NYU40 ids of the room itself
SCANNET_IDS = {name: i + 1 for i, name in enumerate([*BACKGROUND, *CLASSES])}  # label-filt values


@dataclass
class Room:
    image: np.ndarray  # H×W×3 uint8 RGB
    masks: dict[str, np.ndarray]  # class → H×W bool, objects only, disjoint
    floor: np.ndarray  # H×W bool: floor pixels not covered by an object (the rest of the background is wall)


def draw_shape(name: str, layer: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    if name in ("sink", "lamp"):
        cv2.ellipse(layer, (x + w // 2, y + h // 2), (w // 2, h // 3), 0, 0, 360, 1, -1)
    elif name == "table":
        cv2.rectangle(layer, (x, y), (x + w, y + h // 4), 1, -1)
        cv2.rectangle(layer, (x, y), (x + w // 8, y + h), 1, -1)
        cv2.rectangle(layer, (x + w - w // 8, y), (x + w, y + h), 1, -1)
    elif name == "chair":
        cv2.rectangle(layer, (x, y), (x + w // 4, y + h), 1, -1)
        cv2.rectangle(layer, (x, y + h // 2), (x + w, y + h // 2 + h // 5), 1, -1)
    else:
        cv2.rectangle(layer, (x, y), (x + w, y + h), 1, -1)


def draw_room(rng: random.Random, height: int = 96, width: int = 128, n_objects: int = 3,
              tries: int = 30) -> Room:
    """A room with up to ``n_objects`` distinct furniture classes at random places that do not touch."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = [rng.randint(150, 215) for _ in range(3)]
    horizon = rng.randint(height // 2, 3 * height // 4)
    image[horizon:] = [rng.randint(70, 130) for _ in range(3)]
    taken = np.zeros((height, width), np.uint8)
    masks: dict[str, np.ndarray] = {}
    for name in rng.sample(sorted(CLASSES), n_objects):
        for _ in range(tries):
            layer = np.zeros((height, width), np.uint8)
            w, h = rng.randint(width // 6, width // 3), rng.randint(height // 6, height // 3)
            draw_shape(name, layer, rng.randint(0, width - w), rng.randint(0, height - h), w, h)
            if not (layer & taken).any():
                break
        else:
            continue
        region = layer.astype(bool)
        image[region] = CLASSES[name][0][::-1]
        taken |= cv2.dilate(layer, np.ones((5, 5), np.uint8))  # keep a gap so polygons stay disjoint
        masks[name] = region
    floor = np.zeros((height, width), bool)
    floor[horizon:] = True
    for region in masks.values():
        floor &= ~region
    return Room(image, masks, floor)


def question_by_name(rng: random.Random, name: str) -> str:
    return rng.choice(SHORT_QUESTIONS).format(class_name=name)


def question_by_use(rng: random.Random, name: str) -> str:
    return rng.choice(LONG_QUESTIONS).format(sent=CLASSES[name][1])


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


# --- the published layouts ---------------------------------------------------------------------------------------

def polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """The outer outlines of a mask's regions as LabelMe polygons (``[[x, y], …]``)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c[:, 0].tolist() for c in contours if len(c) >= 3]


def reasonseg_annotation(rng: random.Random, room: Room, name: str, sentence: bool) -> dict:
    """A ReasonSeg json asking for ``name`` by its use (a sentence) or by its name (a phrase)."""
    text = CLASSES[name][1] if sentence else name
    shapes = [{"label": "target", "points": p, "group_id": None, "shape_type": "polygon", "flags": {}}
              for p in polygons(room.masks[name])]
    h, w = room.floor.shape
    return {"text": [text], "is_sentence": sentence, "shapes": shapes, "imageHeight": h, "imageWidth": w}


def write_scannet_tsv(path: Path) -> None:
    header = ["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class"]
    nyu40 = {**BACKGROUND, **{name: c[2] for name, c in CLASSES.items()}}
    rows = ["\t".join(header)] + [f"{i}\t{name}\t{name}\t1\t{nyu40[name]}\t0\t{name}\t{name}"
                                  for name, i in SCANNET_IDS.items()]
    path.write_text("\n".join(rows) + "\n")


def write_scannet_frame(scene: Path, frame: int, room: Room, rng: random.Random) -> None:
    labels = np.full(room.floor.shape, SCANNET_IDS["wall"], np.uint16)
    labels[room.floor] = SCANNET_IDS["floor"]
    instances = np.zeros(room.floor.shape, np.uint8)
    for instance, (name, mask) in enumerate(sorted(room.masks.items()), start=1):
        labels[mask], instances[mask] = SCANNET_IDS[name], instance
    cv2.imwrite(str(scene / "color" / f"{frame}.jpg"), cv2.cvtColor(room.image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(scene / "label-filt" / f"{frame}.png"), labels)
    cv2.imwrite(str(scene / "instance-filt" / f"{frame}.png"), instances)
    name = rng.choice(sorted(room.masks))
    annotation = reasonseg_annotation(rng, room, name, sentence=True)
    (scene / "reason" / f"{frame}.json").write_text(json.dumps(annotation))


def write_scannet_scenes(root: str | Path, scenes: int, frames: int, seed: int = 0, **room_kwargs) -> Path:
    """``scenes`` × ``frames`` rooms in the ScanNet v2 2D export layout, each frame with a reasoning json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_scannet_tsv(root / "scannetv2-labels.combined.tsv")
    for s in tqdm(range(scenes), desc="ScanNet-layout scenes", disable=None):
        scene = root / f"scene{s:04d}_00"
        for sub in ("color", "label-filt", "instance-filt", "reason"):
            (scene / sub).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            rng = random.Random((seed * 10_007 + s) * 100_003 + f)
            write_scannet_frame(scene, f, draw_room(rng, **room_kwargs), rng)
    return root


def write_reasonseg_split(root: str | Path, size: int, seed: int = 0, **room_kwargs) -> Path:
    """``size`` rooms as a ReasonSeg folder, one object each, asked for by use or (every other image) by name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(size), desc=f"ReasonSeg-layout {root.name}", disable=None):
        rng = random.Random(seed * 1_000_003 + i)
        room = draw_room(rng, **room_kwargs)
        name = rng.choice(sorted(room.masks))
        stem = f"room_{seed}_{i:05d}"
        cv2.imwrite(str(root / f"{stem}.jpg"), cv2.cvtColor(room.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        annotation = reasonseg_annotation(rng, room, name, sentence=i % 2 == 0)
        (root / f"{stem}.json").write_text(json.dumps(annotation))
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="lisa-make-rooms", description="Write synthetic indoor rooms in the "
                                     "ScanNet v2 2D export layout (training) and a ReasonSeg folder (evaluation).")
    parser.add_argument("out_dir", help="writes OUT/scannet and OUT/reason_seg/val")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--frames", type=int, default=50, help="frames per scene")
    parser.add_argument("--val", type=int, default=100, help="rooms in the ReasonSeg val folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    write_scannet_scenes(out / "scannet", args.scenes, args.frames, args.seed)
    write_reasonseg_split(out / "reason_seg" / "val", args.val, args.seed + 1)
    print(out)


if __name__ == "__main__":
    main()
