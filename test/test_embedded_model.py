"""The embedded model ``lisa-tiny-rooms`` (trained by lisa-train, shipped in lisa_core/models) does the job: on rooms
it never saw in training it names what is asked for and masks it, holds a follow-up, and answers questions that
need no mask in words only. Behaviour, not plumbing: these fail on an untrained or broken model."""
import json
import random

import numpy as np
import pytest

from lisa_core import CheckpointError, Lisa
from lisa_core.checkpoint import DEFAULT_MODEL, EMBEDDED, resolve_checkpoint
from lisa_core.metrics import first_mask_iou, named_in
from lisa_core.output import DEMO_IMAGE, read_ground_truth, read_image
from training.data.rooms import TARGETS, draw_room
from training.data.synthetic import room_seed

MODEL_DIR = EMBEDDED["lisa-tiny-rooms"]
HELD_OUT = 11  # a split seed no training run uses


@pytest.fixture(scope="module")
def lisa():
    return Lisa.from_pretrained(DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="module")
def rooms():
    return [draw_room(room_seed(HELD_OUT, i)) for i in range(12)]


def iou(result, mask) -> float:
    return first_mask_iou(result.masks, mask)


def test_shipped_in_the_official_layout_within_budget():
    files = {p.relative_to(MODEL_DIR).as_posix(): p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file()}
    assert {"config.json", "pytorch_model.bin", "tokenizer.model", "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) < 21e6
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["LISAForCausalLM"] and config["torch_dtype"] == "float16"
    assert resolve_checkpoint("lisa-tiny-rooms") == MODEL_DIR


def test_missing_embedded_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(EMBEDDED, "lisa-tiny-rooms", tmp_path / "gone")
    with pytest.raises(CheckpointError, match="embedded model lisa-tiny-rooms is missing.*make embedded-model"):
        resolve_checkpoint("lisa-tiny-rooms")


def test_demo_room_where_to_wash_hands(lisa):
    image, truth = read_image(DEMO_IMAGE), read_ground_truth(DEMO_IMAGE)
    result = lisa.chat(image, "Where can I wash my hands?", max_new_tokens=24)
    assert named_in(result.text, TARGETS)[:1] == ["sink"] and "[SEG]" in result.text
    assert iou(result, truth["sink"]) >= 0.5  # now 0.64 (the table 0.53, the chair 0.84)


def test_held_out_rooms_by_name_and_by_use(lisa, rooms):
    rng = random.Random(0)
    right, ious = [], []
    for room in rooms:
        for name, mask in sorted(room.masks.items()):
            question = (f"Where is the {name}?" if rng.random() < 0.5 else rng.choice(TARGETS[name][1]))
            result = lisa.chat(room.image, question, max_new_tokens=24)
            right.append(named_in(result.text, TARGETS)[:1] == [name])
            ious.append(iou(result, mask))
    assert len(right) >= 25
    # now: every object named right, gIoU 0.85 on these 37 (bench/results/model.json: 0.83 on 200 rooms);
    # an untrained model names nothing
    assert np.mean(right) >= 0.95 and np.mean(ious) >= 0.7, (np.mean(right), np.mean(ious))


def test_follow_up_turn_in_a_session(lisa, rooms):
    right, ious = [], []
    for room in rooms:
        first, second = sorted(room.masks)[:2] if len(room.masks) > 1 else (None, None)
        if first is None:
            continue
        session = lisa.session(room.image)
        session.chat(TARGETS[first][1][0], max_new_tokens=24)
        use = TARGETS[second][1][0]
        result = session.chat("And " + use[0].lower() + use[1:], max_new_tokens=24)
        right.append(named_in(result.text, TARGETS)[:1] == [second])
        ious.append(iou(result, room.masks[second]))
    assert len(right) >= 8 and np.mean(right) >= 0.9 and np.mean(ious) >= 0.65, (right, ious)  # now 12, 100 %, 0.83


def test_questions_without_a_mask_get_words_only(lisa, rooms):
    colours_right = 0
    for room in rooms[:8]:
        wall = lisa.chat(room.image, "What color is the wall?", max_new_tokens=16)
        assert "[SEG]" not in wall.text and not wall.masks and wall.text.startswith("The wall is")
        colours_right += f"The wall is {room.wall_colour}." in wall.text
        present = sorted(room.masks)[0]
        answer = lisa.chat(room.image, f"Is there a {present} in this room?", max_new_tokens=16)
        assert "[SEG]" not in answer.text and not answer.masks, answer.text
        assert answer.text.startswith(("Yes, there is", "No, there is no")), answer.text
    # the wall's colour is read from the image; whether a thing is there is not learned yet (it answers "No",
    # the data's prior: bench/results/model.json)
    assert colours_right >= 7, colours_right
