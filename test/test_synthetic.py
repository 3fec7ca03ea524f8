"""Synthetic rooms, in memory and written in the ScanNet and ReasonSeg layouts that the trainer reads back."""
import json
import random

import numpy as np

from training.data.reasonseg import ReasonSeg, mask_from_shapes
from training.data.scannet import ScanNetFrames
from training.data.synthetic import (CLASSES, SyntheticRooms, draw_room, main, reasonseg_annotation,
                                     write_reasonseg_split, write_scannet_scenes)
from training.evaluate import reasonseg_val_items


def test_rooms_have_disjoint_objects_and_are_reproducible():
    for seed in range(20):
        room = draw_room(random.Random(seed))
        masks = list(room.masks.values())
        assert 1 <= len(masks) <= 3 and all(m.any() for m in masks)
        assert np.sum(masks, axis=0).max() == 1 and not (room.floor & np.logical_or.reduce(masks)).any()
    a, b = SyntheticRooms(5, seed=3)[4], SyntheticRooms(5, seed=3)[4]
    assert np.array_equal(a.image, b.image) and a.conversations == b.conversations


def test_polygons_give_back_the_exact_masks():
    rng = random.Random(7)
    for _ in range(10):
        room = draw_room(rng)
        for name, mask in room.masks.items():
            annotation = reasonseg_annotation(rng, room, name, sentence=True)
            assert annotation["text"] == [CLASSES[name][1]]
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
    assert reasoning.source.startswith("reasonseg/") and any(use in question for _, use, _ in CLASSES.values())
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
