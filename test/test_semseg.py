"""Semantic / part segmentation layouts (ADE20K, COCO-Stuff, Mapillary, PACO-LVIS, PASCAL-Part) → samples."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from conftest import reference_path
from lisa_core.prompt import PromptTokenizer
from training.collate import collate
from training.data.semseg import SemSeg, ade20k_labels, paco_name, pascal_part_name
from training.templates import ANSWERS

H, W = 40, 50
SQUARE = [[5, 5, 25, 5, 25, 25, 5, 25]]  # 400 pixels


def image(path, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 100, np.uint8))


def label_png(path, label, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette:  # Mapillary's labels are palette PNGs: colours on disk, class indices in the file
        picture = picture.convert("P")
        picture.putpalette([200, 10, 10, 10, 200, 10] + [0] * 762)
    picture.save(path)


def write_ade20k(root):
    (root / "ade20k_classes.json").write_text(json.dumps(["wall", "building", "sky"]))
    label = np.zeros((H, W), np.uint8)  # 0: "other", ignored
    label[0:10, :] = 1  # wall: 500
    label[20:30, 0:20] = 3  # sky: 200
    label[35:40, 0:2] = 200  # beyond the class list: ignored
    image(root / "ade20k/images/training/ADE_train_00000001.jpg")
    label_png(root / "ade20k/annotations/training/ADE_train_00000001.png", label)
    image(root / "ade20k/images/training/ADE_train_00000002.jpg")  # no annotation png
    image(root / "ade20k/images/training/ADE_train_00000003.jpg", size=(H + 1, W))  # label of another size
    label_png(root / "ade20k/annotations/training/ADE_train_00000003.png", label)


def write_cocostuff(root):
    (root / "cocostuff_classes.txt").write_text("0: unlabeled\n1: person\n2: wall-other\n3: car\n")
    label = np.full((H, W), 255, np.uint8)
    label[0:10, 0:10] = 0  # person: 100
    label[10:20, :] = 1  # wall-other: has "-", left unlabelled
    label[30:35, 0:10] = 2  # car: 50
    label_png(root / "cocostuff/train2017/000000000009.png", label)
    image(root / "coco/train2017/000000000009.jpg")
    label_png(root / "cocostuff/train2017/000000000010.png", np.full((H, W), 1, np.uint8))  # only wall-other
    image(root / "coco/train2017/000000000010.jpg")


def write_mapillary(root):
    (root / "mapillary").mkdir(parents=True, exist_ok=True)
    (root / "mapillary/config_v2.0.json").write_text(json.dumps({"labels": [{"readable": "Road"},
                                                                           {"readable": "Traffic Light"}]}))
    label = np.zeros((H, W), np.uint8)
    label[:, 45:] = 1  # traffic light: 200
    label_png(root / "mapillary/training/v2.0/labels/m1.png", label, palette=True)
    image(root / "mapillary/training/images/m1.jpg")


def coco_json(path, categories, annotations, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": name, "height": H, "width": W} for i, name in images.items()],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "segmentation": s}
                        for k, (i, c, s) in enumerate(annotations)],
        "categories": [{"id": i, "name": n} for i, n in categories.items()]}))


def write_paco(root):
    coco_json(root / "vlpart/paco/annotations/paco_lvis_v1_train.json",
              {1: "trash_can_(bin):lid_(cover)", 2: "mug_(cup)", 3: "a:b:c"},
              [(1, 1, SQUARE), (1, 2, {"size": [H, W], "counts": [H * 40, H * 5, H * 5]}), (1, 3, SQUARE),
               (2, 2, [[100, 100, 120, 100, 120, 120]])],
              {1: "train2017/000000000001.jpg", 2: "train2017/000000000002.jpg", 3: "train2017/000000000003.jpg"})
    for i in (1, 2, 3):
        image(root / f"coco/train2017/00000000000{i}.jpg")


def write_pascal_part(root):
    coco_json(root / "vlpart/pascal_part/train.json", {5: "dog:head"}, [(1, 5, SQUARE)], {1: "2008_000001.jpg"})
    image(root / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/2008_000001.jpg")


@pytest.fixture
def root(tmp_path):
    for write in (write_ade20k, write_cocostuff, write_mapillary, write_paco, write_pascal_part):
        write(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer.from_hf(AutoTokenizer.from_pretrained(str(reference_path("ckpt"))))


def check_questions(sample):
    assert len(sample.conversations) == len(sample.masks) == len(sample.meta["classes"])
    for name, turns in zip(sample.meta["classes"], sample.conversations):
        assert name.lower() in turns[0][0] and turns[0][1] in ANSWERS


def test_names_and_label_rules():
    assert paco_name("trash_can_(bin):lid_(cover)") == ("trash_can", "lid") and paco_name("mug_(cup)") == "mug"
    assert paco_name("a:b:c") is None and pascal_part_name("dog:head") == ("dog", "head")
    assert pascal_part_name("dog") is None
    assert ade20k_labels(np.array([0, 1, 150, 255], np.uint8)).tolist() == [255, 0, 149, 255]


def test_ade20k(root):
    data = SemSeg(root, sources=["ade20k"], num_classes_per_sample=3)
    assert len(data) == 2 and data.skipped["no image or label file"] == 1
    sample = data.load_item(("ade20k", 0), 0)
    assert sorted(sample.meta["classes"]) == ["sky", "wall"]
    assert {c: int(m.sum()) for c, m in zip(sample.meta["classes"], sample.masks)} == {"wall": 500, "sky": 200}
    assert sample.ignore.sum() == H * W - 500 - 200 and sample.image.shape == (H, W, 3)
    check_questions(sample)
    assert data.load_item(("ade20k", 1), 0) is None
    assert data.skipped["unreadable image or label (or sizes differ)"] == 1
    one = SemSeg(root, sources="ade20k", num_classes_per_sample=1, seed=3)
    assert one.load_item(("ade20k", 0), 5).masks.shape == (1, H, W)
    assert one.load_item(("ade20k", 0), 5).meta == one.load_item(("ade20k", 0), 5).meta  # index-seeded


def test_class_files_by_path_or_under_root(root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("utils") / "names.json"
    (root / "ade20k_classes.json").rename(elsewhere)
    with pytest.raises(FileNotFoundError, match="ade20k_classes.json"):
        SemSeg(root, sources=["ade20k"])
    assert SemSeg(root, sources=["ade20k"], ade20k_classes=str(elsewhere)).load_item(("ade20k", 0), 0) is not None
    (root / "utils").mkdir()
    elsewhere.rename(root / "utils" / "ade20k_classes.json")
    assert len(SemSeg(root, sources=["ade20k"])) == 2


def test_cocostuff_leaves_dash_classes_unlabelled(root):
    data = SemSeg(root, sources=["cocostuff"], num_classes_per_sample=3)
    sample = data.load_item(("cocostuff", 0), 0)
    assert sorted(sample.meta["classes"]) == ["car", "person"]
    assert {c: int(m.sum()) for c, m in zip(sample.meta["classes"], sample.masks)} == {"person": 100, "car": 50}
    assert sample.ignore[10:20].all() and sample.ignore.sum() == H * W - 150
    assert data.load_item(("cocostuff", 1), 0) is None and data.skipped["no labelled class"] == 1


def test_mapillary_palette_labels(root):
    sample = SemSeg(root, sources=["mapillary"], num_classes_per_sample=3).load_item(("mapillary", 0), 0)
    assert {c: int(m.sum()) for c, m in zip(sample.meta["classes"], sample.masks)} == {"road": 1800,
                                                                                      "traffic light": 200}


def test_part_datasets(root, tokenizer):
    data = SemSeg(root, sources=["paco_lvis", "pascal_part"], num_classes_per_sample=3)
    assert data.skipped["image without annotations"] == 1  # PACO image 3
    assert len(data) == 4 and [data.items[k][0] for k in range(2)] == ["paco_lvis", "pascal_part"]
    names = set()
    for index in range(12):
        sample = data.load_item(("paco_lvis", 1), index)
        assert sorted(int(m.sum()) for m in sample.masks) == [200, 400]  # RLE columns 40..44, square
        check_questions(sample)
        names |= set(sample.meta["classes"])
    assert names == {"mug", "trash_can lid", "the lid of the trash_can"}
    assert data.skipped["category without a usable name"] == 12  # "a:b:c"
    assert data.load_item(("paco_lvis", 2), 0) is None and data.skipped["empty mask"] == 1
    part = data.load_item(("pascal_part", 1), 0)
    assert part.meta["classes"][0] in ("dog head", "the head of the dog") and part.masks[0].sum() == 400
    batch = collate([sample, part], tokenizer)
    assert batch["offset"] == [0, 2, 3] and [m.shape[0] for m in batch["masks"]] == [2, 1]


def test_all_sources_in_turn_and_bad_setups(root):
    data = SemSeg(root, num_classes_per_sample=2)
    assert [data.items[k][0] for k in range(5)] == ["ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary"]
    assert all(data[k].masks.shape[0] >= 1 for k in range(len(data)))
    with pytest.raises(ValueError, match="unknown source"):
        SemSeg(root, sources=["partimagenet"])
    (root / "vlpart/pascal_part/train.json").write_text("{not json")
    with pytest.raises(ValueError, match="pascal_part"):
        SemSeg(root, sources=["pascal_part"])
