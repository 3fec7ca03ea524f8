"""ScanNet v2 2D export layout → samples, on a small generated scene."""
import cv2
import numpy as np
import pytest

from training.data.scannet import ScanNetFrames, read_label_map

TSV = ("id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\n"
       "1\twall\twall\t1\t1\t12\twall\twall\n"
       "2\tchair\tchair\t1\t5\t4\tchair\tchair\n"
       "3\tkitchen sink\tsink\t1\t34\t0\tsink\tsink\n"
       "4\tcoffee mug\tmug\t1\t40\t0\tcup\totherprop\n")


def make_scene(root, frames=3, broken=False):
    (root / "scannetv2-labels.combined.tsv").write_text(TSV)
    scene = root / "scene0000_00"
    for sub in ("color", "label-filt", "instance-filt"):
        (scene / sub).mkdir(parents=True, exist_ok=True)
    for f in range(frames):
        labels = np.full((48, 64), 1, np.uint16)  # wall
        instances = np.zeros((48, 64), np.uint8)
        labels[10:30, 5:25], instances[10:30, 5:25] = 2, 1  # chair
        labels[5:20, 40:60], instances[5:20, 40:60] = 3, 2  # sink
        labels[40:42, 0:3], instances[40:42, 0:3] = 4, 3  # tiny mug
        color = np.full((96, 128, 3), 100, np.uint8)  # ScanNet colour frames are larger than the labels
        cv2.imwrite(str(scene / "color" / f"{f}.jpg"), color)
        cv2.imwrite(str(scene / "label-filt" / f"{f}.png"), labels)
        cv2.imwrite(str(scene / "instance-filt" / f"{f}.png"), instances)
    if broken:
        (scene / "color" / f"{frames}.jpg").write_bytes(b"not a jpeg")
        cv2.imwrite(str(scene / "label-filt" / f"{frames}.png"), np.zeros((48, 64), np.uint16))
    return root


def test_label_sets(tmp_path):
    tsv = make_scene(tmp_path) / "scannetv2-labels.combined.tsv"
    assert read_label_map(tsv, "scannet20") == {1: "wall", 2: "chair", 3: "sink"}
    assert read_label_map(tsv, "nyu40")[4] == "otherprop" and read_label_map(tsv, "scannet200")[4] == "mug"
    with pytest.raises(ValueError, match="label_set"):
        read_label_map(tsv, "coco")


def test_semantic_samples(tmp_path):
    frames = ScanNetFrames(make_scene(tmp_path), frame_step=1, min_pixels=50)
    assert len(frames) == 3
    sample = frames[0]
    assert sample.image.shape == (48, 64, 3) and sorted(sample.meta["classes"]) == ["chair", "sink"]
    for name, mask, conversation in zip(sample.meta["classes"], sample.masks, sample.conversations):
        assert mask.sum() == {"chair": 400, "sink": 300}[name]
        assert name in conversation[0][0] and "[SEG]" in conversation[0][1]


def test_instance_samples_and_filters(tmp_path):
    frames = ScanNetFrames(make_scene(tmp_path), mode="instance", label_set="scannet200", frame_step=1,
                           min_pixels=50)
    seen = {frames[i].meta["classes"][0] for i in range(3)} | {frames[i].meta["classes"][0] for i in range(3)}
    assert seen <= {"chair", "sink"}  # the 6-pixel mug is under min_pixels, walls are not asked about
    assert all(frames[i].masks.shape == (1, 48, 64) for i in range(3))


def test_broken_files_are_skipped_and_counted(tmp_path):
    frames = ScanNetFrames(make_scene(tmp_path, broken=True), frame_step=1, min_pixels=50)
    assert len(frames) == 4
    assert frames[3].meta["classes"]  # the unreadable frame 3 is skipped for the next usable one
    assert frames.skipped["unreadable image or label"] == 1 and "unreadable" in frames.summary()
    with pytest.raises(FileNotFoundError, match="scannetv2-labels"):
        ScanNetFrames(tmp_path / "nowhere")


def test_reasoning_annotation_beside_a_frame(tmp_path):
    import json

    root = make_scene(tmp_path)
    (root / "scene0000_00" / "reason").mkdir()
    (root / "scene0000_00" / "reason" / "0.json").write_text(json.dumps({
        "text": ["where can I wash my hands?"], "is_sentence": True,
        "shapes": [{"label": "target", "points": [[80, 10], [120, 10], [120, 40], [80, 40]]}]}))
    frames = ScanNetFrames(root, frame_step=1, min_pixels=50, reason_rate=1.0)
    sample = frames[0]
    assert "wash my hands" in sample.conversations[0][0][0]
    assert sample.image.shape == (96, 128, 3) and sample.masks.shape == (1, 96, 128)  # colour-frame coordinates
    assert frames[1].meta["classes"]  # frames without a reason json stay semantic
