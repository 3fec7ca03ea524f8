"""LLaVA-Instruct-150k json → multi-turn conversations without masks, the image placeholder written once."""
import json

import cv2
import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import reference_path
from lisa_core.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer, conversation_prefixes
from training.collate import IGNORE_INDEX, collate
from training.data.vqa import LlavaInstruct, conversation_turns

RECORDS = [
    {"id": "a", "image": "000000000001.jpg", "conversations": [
        {"from": "human", "value": "What is on the table?\n<image>"}, {"from": "gpt", "value": "A cup."},
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "Red."}]},
    {"id": "b", "image": "000000000002.jpg", "conversations": [
        {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image>\nDescribe the room. "},
        {"from": "gpt", "value": "A small kitchen."}, {"from": "human", "value": "Anything else?"}]},
    {"id": "c", "image": "000000000404.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing."}]},
    {"id": "d", "image": "000000000001.jpg", "conversations": [
        {"from": "human", "value": "<image>\nOne"}, {"from": "human", "value": "Two"}]},
    {"id": "e", "image": "000000000001.jpg"},
    {"id": "f", "image": "000000000001.jpg", "conversations": [{"from": "human", "value": "<image>\nAlone"}]},
]


def write_llava(root, records=RECORDS):
    (root / "llava_dataset").mkdir(parents=True, exist_ok=True)
    (root / "llava_dataset" / "llava_instruct_150k.json").write_text(json.dumps(records))
    (root / "coco" / "train2017").mkdir(parents=True, exist_ok=True)
    for name in ("000000000001.jpg", "000000000002.jpg"):
        cv2.imwrite(str(root / "coco" / "train2017" / name), np.full((30, 40, 3), 70, np.uint8))
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer.from_hf(AutoTokenizer.from_pretrained(str(reference_path("ckpt"))))


def test_turns():
    assert conversation_turns(RECORDS[0]["conversations"]) == [("What is on the table?", "A cup."),
                                                                 ("What colour is it?", "Red.")]
    assert conversation_turns(RECORDS[1]["conversations"]) == [("Describe the room.", "A small kitchen.")]
    with pytest.raises(ValueError, match="human then gpt"):
        conversation_turns(RECORDS[3]["conversations"])
    text = conversation_prefixes(conversation_turns(RECORDS[0]["conversations"]), use_im_start_end=False)[-1][1]
    assert text.endswith("USER: <image>\nWhat is on the table? ASSISTANT: A cup.</s>"
                         "USER: What colour is it? ASSISTANT: Red.</s>")  # the reference's llava_v1 text
    assert text.count("<image>") == 1


def test_samples_and_skips(tmp_path, tokenizer):
    data = LlavaInstruct(write_llava(tmp_path))
    assert len(data) == 6
    a, b = data.load_item(RECORDS[0], 0), data.load_item(RECORDS[1], 1)
    assert a.conversations == [[("What is on the table?", "A cup."), ("What colour is it?", "Red.")]]
    assert a.masks.shape == (0, 30, 40) and a.image.shape == (30, 40, 3) and a.source == "llava/a"
    assert [data.load_item(r, 0) for r in RECORDS[2:]] == [None] * 4
    assert data.skipped == {"unreadable image": 1, "malformed conversation (ValueError)": 1,
                            "malformed conversation (KeyError)": 1, "no answered question": 1}
    assert data[2].source == "llava/a"  # c, d, e, f unusable: wraps round to the first record
    batch = collate([a, b], tokenizer)
    assert [ids.count(IMAGE_TOKEN_INDEX) for ids in batch["input_ids"]] == [1, 1]
    supervised = [tokenizer.hf.decode([t for t in labels if t != IGNORE_INDEX]) for labels in batch["labels"]]
    assert "A cup." in supervised[0] and "Red." in supervised[0] and "table" not in supervised[0]
    assert batch["masks"][0].shape == (0, 30, 40)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        LlavaInstruct(tmp_path)
    (tmp_path / "llava_dataset").mkdir()
    (tmp_path / "llava_dataset" / "llava_instruct_150k.json").write_text("[{")
    with pytest.raises(ValueError, match="unreadable"):
        LlavaInstruct(tmp_path)
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ValueError, match="no records"):
        LlavaInstruct(tmp_path, json_path=tmp_path / "other.json")
