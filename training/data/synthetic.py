"""Synthetic indoor rooms: a wall, a floor and furniture-like shapes (sink, table, chair, bed, window, door, lamp)
with exact masks, and questions about them — by name ("Can you segment the chair in this image?") or by use
("Where can I sit?"). Small enough to learn on a CPU; the benchmark that shows training really learns uses it."""
from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

from ..collate import Sample
from ..templates import ANSWERS, LONG_QUESTIONS, SHORT_QUESTIONS

# class → (BGR colour, how to ask for it by its use)
CLASSES = {
    "sink": ((235, 235, 240), "Where can I wash my hands?"),
    "table": ((40, 70, 120), "Where can I put my cup down?"),
    "chair": ((60, 140, 60), "Where can I sit?"),
    "bed": ((160, 80, 160), "Where can I sleep?"),
    "window": ((230, 200, 150), "Where does the daylight come in?"),
    "door": ((30, 100, 180), "How do I leave the room?"),
    "lamp": ((40, 220, 240), "What gives light at night?"),
}


@dataclass
class Room:
    image: np.ndarray  # H×W×3 uint8 RGB
    masks: dict[str, np.ndarray]  # class → H×W bool


def draw_room(rng: random.Random, height: int = 96, width: int = 128, n_objects: int = 3) -> Room:
    """A room with ``n_objects`` distinct furniture classes at random places (later ones occlude earlier ones)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = [rng.randint(150, 215) for _ in range(3)]
    horizon = rng.randint(height // 2, 3 * height // 4)
    image[horizon:] = [rng.randint(70, 130) for _ in range(3)]
    masks: dict[str, np.ndarray] = {}
    for name in rng.sample(sorted(CLASSES), n_objects):
        color, _ = CLASSES[name]
        layer = np.zeros((height, width), np.uint8)
        w, h = rng.randint(width // 6, width // 3), rng.randint(height // 6, height // 3)
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
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
        region = layer.astype(bool)
        image[region] = color[::-1]
        for other in masks.values():
            other &= ~region
        masks[name] = region
    return Room(image, {k: v for k, v in masks.items() if v.any()})


def room_sample(rng: random.Random, n_classes: int = 1, **room_kwargs) -> Sample:
    """A room and up to ``n_classes`` one-question conversations about its objects (names or uses)."""
    room = draw_room(rng, **room_kwargs)
    names = rng.sample(sorted(room.masks), min(n_classes, len(room.masks)))
    conversations = []
    for name in names:
        if rng.random() < 0.5:
            question = rng.choice(SHORT_QUESTIONS).format(class_name=name)
        else:
            question = rng.choice(LONG_QUESTIONS).format(sent=CLASSES[name][1])
        conversations.append([(question, rng.choice(ANSWERS))])
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
