"""LLaVA-Instruct-150k as published: ``ROOT/llava_dataset/llava_instruct_150k.json``, a list of ``{"id", "image",
"conversations": [{"from": "human"|"gpt", "value"}, …]}``, images from ``ROOT/coco/train2017``. Multi-turn
conversations without masks, keeping the model's chat ability while it learns to segment.

The first human turn carries ``<image>`` (before or after its text). As the reference does, the token is taken out
and the image put before the question; here the prompt format places it (``lisa_core.prompt.first_turn_text``
writes ``<image>\\n`` before the first question), so questions hold no ``<image>``: one in a later turn is dropped
too, the model has one image. A conversation that opens with the assistant loses that turn (as in the
reference), an unanswered last question is dropped; turns that do not alternate, a missing image or a malformed
record are skipped and counted.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from lisa_core.prompt import IMAGE_PLACEHOLDER

from ..collate import Sample
from . import SkippingDataset


def conversation_turns(messages: list[dict]) -> list[tuple[str, str]]:
    """LLaVA ``conversations`` → ``[(question, answer), …]``; ValueError when speakers do not alternate."""
    if messages and messages[0]["from"] != "human":
        messages = messages[1:]
    turns = []
    for i in range(0, len(messages) - 1, 2):
        question, answer = messages[i], messages[i + 1]
        if question["from"] != "human" or answer["from"] != "gpt":
            raise ValueError(f"turn {i // 2}: {question['from']} then {answer['from']}, not human then gpt")
        text = question["value"]
        if IMAGE_PLACEHOLDER in text:
            text = text.replace(IMAGE_PLACEHOLDER, "").strip()
        turns.append((text, answer["value"]))
    return turns


class LlavaInstruct(SkippingDataset):
    """``json_path`` and ``image_dir`` default to the reference's layout under ``root``
    (``llava_dataset/<vqa_data>.json``, ``coco/train2017``); relative ones are taken under ``root``."""

    def __init__(self, root: str | Path, vqa_data: str = "llava_instruct_150k", json_path: str | Path | None = None,
                 image_dir: str | Path | None = None):
        super().__init__()
        root = Path(root)
        json_path = root / json_path if json_path else root / "llava_dataset" / f"{vqa_data}.json"
        self.image_dir = root / image_dir if image_dir else root / "coco" / "train2017"
        try:
            self.items = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"unreadable {json_path}: {err}") from err
        if not isinstance(self.items, list) or not self.items:
            raise ValueError(f"{json_path} holds no records (a json list is expected)")

    def load_item(self, record, index: int) -> Sample | None:
        try:
            image_name, turns = record["image"], conversation_turns(record["conversations"])
        except (KeyError, TypeError, IndexError, ValueError) as err:
            self.skipped[f"malformed conversation ({type(err).__name__})"] += 1
            return None
        if not turns:
            self.skipped["no answered question"] += 1
            return None
        bgr = cv2.imread(str(self.image_dir / image_name), cv2.IMREAD_COLOR)
        if bgr is None:
            self.skipped["unreadable image"] += 1
            return None
        return Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), [turns], np.zeros((0, *bgr.shape[:2]), np.float32),
                      source=f"llava/{record.get('id', image_name)}", meta={"id": record.get("id")})
