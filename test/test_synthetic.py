"""Synthetic rooms, in memory and written in the ScanNet and ReasonSeg layouts that the trainer reads back."""
import json
import random

import cv2
import numpy as np
import pytest

from training.data.reasonseg import ReasonSeg, mask_from_shapes
from training.data.scannet import ScanNetFrames
from training.data.rooms import LABELS, TARGETS, WALL_COLOURS
from training.data.synthetic import (CLASSES, SyntheticRooms, draw_room, main, reasonseg_annotation,
                                     write_reasonseg_split, write_scannet_scenes)
from training.evaluate import reasonseg_val_items


def test_rooms_have_disjoint_objects_and_are_reproducible():
    colours, present = set(), set()
    for seed in range(40):
        room = draw_room(random.Random(seed))
        masks = list(room.masks.values())
        assert 1 <= len(masks) <= 4 and all(m.sum() >= 60 for m in masks)
        assert np.sum(masks, axis=0).max() == 1 and not (room.floor & np.logical_or.reduce(masks)).any()
        for name, mask in room.masks.items():  # a mask is exactly its label's pixels, and one instance
            assert np.array_equal(mask, room.labels == LABELS.index(name))
            assert len(np.unique(room.instances[mask])) == 1 and room.instances[mask][0] > 0
        colours.add(room.wall_colour)
        present |= set(room.masks)
    assert colours == set(WALL_COLOURS) and present == set(TARGETS)
    a, b = SyntheticRooms(5, seed=3)[4], SyntheticRooms(5, seed=3)[4]
    assert np.array_equal(a.image, b.image) and a.conversations == b.conversations


def test_a_class_is_not_one_colour():
    """The same class in different rooms differs in colour, so a model cannot find it by colour alone."""
    means = {}
    for seed in range(80):
        room = draw_room(random.Random(seed))
        for name, mask in room.masks.items():
            means.setdefault(name, []).append(room.image[mask].mean(0))
    for name in ("chair", "table", "sink", "bed", "door"):
        assert np.std(means[name], axis=0).max() > 20, name


def test_plain_rooms_are_the_benchmarks_one_colour_per_class_rooms(tmp_path):
    from training.data.rooms import PLAIN_COLOURS

    for seed in range(20):
        room = draw_room(random.Random(seed), style="plain")
        assert room.image.shape == (96, 128, 3) and 1 <= len(room.masks) <= 3 and room.wall_colour in WALL_COLOURS
        for name, mask in room.masks.items():  # each class in its one colour, its mask exactly its label, one instance
            assert (room.image[mask] == PLAIN_COLOURS[name]).all()
            assert np.array_equal(mask, room.labels == LABELS.index(name)) and len(np.unique(room.instances[mask])) == 1
    items = list(reasonseg_val_items(write_reasonseg_split(tmp_path / "val", 3, seed=5, style="plain")))
    assert len(items) == 3 and all(target.shape == (96, 128) and (target == 1).sum() >= 50 for *_, target in items)
    with pytest.raises(ValueError, match="cartoon"):
        draw_room(random.Random(0), style="cartoon")


def test_polygons_give_back_the_exact_masks():
    rng = random.Random(7)
    for _ in range(10):
        room = draw_room(rng)
        for name, mask in room.masks.items():
            annotation = reasonseg_annotation(room, name, list(CLASSES[name][1]), sentence=True)
            assert annotation["text"] == list(CLASSES[name][1]) and len(annotation["text"]) == 3
            assert np.array_equal(mask_from_shapes(annotation["shapes"], *mask.shape) == 1, mask)


def test_scannet_layout_reads_back(tmp_path):
    root = write_scannet_scenes(tmp_path, scenes=2, frames=3, seed=1)
    assert sorted(p.name for p in (root / "scene0001_00").iterdir()) == ["color", "instance-filt", "label-filt",
                                                                           "reason"]
    frames = ScanNetFrames(root, label_set="nyu40", frame_step=1, min_pixels=1, reason_rate=0.0)
    assert len(frames) == 6 and frames.summary() == "none"
    sample = frames[0]
    assert set(sample.meta["classes"]) <= set(CLASSES) and sample.masks.shape[0] == len(sample.meta["classes"])
    reasoning = ScanNetFrames(root, label_set="nyu40", frame_step=1, reason_rate=1.0)[2]
    question = reasoning.conversations[0][0][0]
    assert reasoning.source.startswith("reasonseg/") and any(use in question for _, uses in CLASSES.values()
                                                             for use in uses)
    instances = ScanNetFrames(root, mode="instance", label_set="nyu40", frame_step=1, min_pixels=1)[0]
    assert instances.masks.shape[0] == 1


def test_reasonseg_layout_and_cli(tmp_path):
    main([str(tmp_path), "--scenes", "1", "--frames", "2", "--val", "4", "--seed", "2"])
    val = tmp_path / "reason_seg" / "val"
    annotations = [json.loads(p.read_text()) for p in sorted(val.glob("*.json"))]
    assert len(annotations) == 4 and [a["is_sentence"] for a in annotations] == [True, False, True, False]
    items = list(reasonseg_val_items(val))
    assert len(items) == 4 and all((target == 1).any() for *_, target in items)
    assert items[1][2] == f" What is {annotations[1]['text'][0]} in this image? Please output segmentation mask."
    assert len(ReasonSeg(val)) == 4 and (tmp_path / "scannet" / "scene0000_00" / "reason" / "1.json").is_file()
    assert write_reasonseg_split(tmp_path / "again", 4, seed=3).is_dir()


def test_named_conversations_name_what_they_segment(tmp_path):
    """answers="named": the reply names the class whose mask is the target; follow-up turns ask for another one;
    no-mask questions (LLaVA layout) come beside the scenes, with the corpus the tokenizer is trained on."""
    main([str(tmp_path), "--scenes", "1", "--frames", "6", "--val", "1", "--seed", "4"])
    root = tmp_path / "scannet"
    frames = ScanNetFrames(root, label_set="nyu40", frame_step=1, min_pixels=80, answers="named", named_rate=1.0,
                           followup_rate=1.0, reason_rate=0.5, ignore_classes=("unlabelled", "wall", "floor",
                                                                                "rug", "cabinet", "object"))
    labels_of = {name: LABELS.index(name) for name in TARGETS}
    seen_followups = 0
    for i in range(len(frames)):
        sample = frames[i]
        turns = [turn for conversation in sample.conversations for turn in conversation]
        seen_followups += any(len(c) == 2 for c in sample.conversations)
        firsts = [c[0][1] for c in sample.conversations]
        assert 1 <= len(sample.conversations) <= 3 and len(set(firsts)) == len(firsts)  # distinct objects
        assert len(turns) == len(sample.meta["classes"]) == sample.masks.shape[0]
        for (question, answer), name, mask in zip(turns, sample.meta["classes"], sample.masks):
            assert answer.endswith(f"the {name} [SEG].")
            frame = sample.source.rsplit("/", 1)[1]
            labels = cv2.imread(str(root / "scene0000_00" / "label-filt" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
            if name in labels_of:  # the target is (nearly exactly) that class's pixels
                assert ((labels == labels_of[name]) == (mask > 0)).mean() > 0.99
    assert seen_followups >= 1
    vqa = json.loads((tmp_path / "llava_dataset" / "rooms_vqa.json").read_text())
    assert len(vqa) == 6 and all("[SEG]" not in r["conversations"][1]["value"] for r in vqa)
    corpus = (tmp_path / "corpus.txt").read_text().splitlines()
    assert "Where can I wash my hands?" in corpus and "It is the sink [SEG]." in corpus
