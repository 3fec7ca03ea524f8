"""REFER layout (refs(<splitBy>).p + instances.json) → referring samples and validation items; COCO mask decoding."""
import json
import pickle
from collections import OrderedDict

import cv2
import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import reference_path
from lisa_core.prompt import PromptTokenizer
from training.collate import collate
from training.data.coco import Interleaved, annotation_mask, polygon_counts, rle_counts_from_string, rle_decode
from training.data.refer import ReferSeg, in_split, read_refer, refer_val_items
from training.templates import ANSWERS

H, W = 48, 64
SQUARE = [[5, 5, 25, 5, 25, 25, 5, 25]]  # 20×20 pixels: rows and columns 5..24
COLUMNS = {"size": [H, W], "counts": [H * 40, H * 5, H * 19]}  # columns 40..44, all rows: 240 pixels
OUTSIDE = [[100, 100, 120, 100, 120, 120]]


def ref(ref_id, image_id, ann_id, sentences, split="train"):
    return {"ref_id": ref_id, "image_id": image_id, "ann_id": ann_id, "category_id": 1, "split": split,
            "sentences": [{"sent": s, "sent_id": ref_id * 10 + i, "tokens": s.split()}
                          for i, s in enumerate(sentences)]}


def write_refer(root, dataset="refcoco", split_by="unc", images=None, annotations=None, refs=None, layout=True):
    """A REFER folder under ``root`` (``root/refer_seg`` when ``layout``) with 48×64 images; returns that folder."""
    folder = root / "refer_seg" if layout else root
    image_dir = folder / ("images/saiapr_tc-12" if dataset == "refclef" else "images/mscoco/images/train2014")
    images = images if images is not None else {1: "COCO_train2014_000000000001.jpg",
                                                2: "COCO_train2014_000000000002.jpg",
                                                3: "COCO_train2014_000000000003.jpg"}
    annotations = annotations if annotations is not None else {10: (1, SQUARE), 11: (1, COLUMNS), 12: (1, []),
                                                               13: (1, OUTSIDE), 14: (2, SQUARE), 15: (3, OUTSIDE)}
    refs = refs if refs is not None else [
        ref(100, 1, 10, ["The Red Square ", "left box"]), ref(101, 1, 11, ["Stripe"]), ref(102, 1, 12, ["nothing"]),
        ref(103, 1, 13, ["far away"]), ref(104, 2, 14, ["lost"]), ref(105, 3, 15, ["outside only"]),
        ref(106, 1, 10, ["Val Square "], split="val"), ref(107, 1, 11, ["a stripe", "the stripe"], split="val"),
        ref(108, 3, 15, ["test one"], split="testAB")]
    for image_id, name in images.items():
        if image_id == 2:
            continue  # listed in instances.json, missing on disk
        (image_dir / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_dir / name), np.full((H, W, 3), 120, np.uint8))
    (folder / dataset).mkdir(parents=True, exist_ok=True)
    instances = {"images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in images.items()],
                 "annotations": [{"id": a, "image_id": i, "segmentation": s, "category_id": 1}
                                 for a, (i, s) in annotations.items()],
                 "categories": [{"id": 1, "name": "thing"}]}
    (folder / dataset / "instances.json").write_text(json.dumps(instances))
    (folder / dataset / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer.from_hf(AutoTokenizer.from_pretrained(str(reference_path("ckpt"))))


def test_rle_by_hand():
    # counts 5, 40, 10, 30, 15: "5"; 40 = 8 + 1·32 → "X" (8 | more) "1"; 10 → ":"; 30 - 40 = -10 → "F"; 15 - 10 → "5"
    assert rle_counts_from_string("5X1:F5") == rle_counts_from_string(b"5X1:F5") == [5, 40, 10, 30, 15]
    mask = annotation_mask({"size": [10, 10], "counts": "5X1:F5"}, 10, 10)
    assert mask.sum() == 70 and mask[5, 0] and not mask[4, 0]  # column-major: pixel 5 is row 5 of column 0
    assert mask[4, 4] and not mask[5, 4] and mask[5, 5] and not mask[5, 8]  # 44 in, 45..54 out, 55..84 in
    with pytest.raises(ValueError, match="sum"):
        rle_decode([5, 40], 10, 10)
    with pytest.raises(ValueError, match="ends inside"):
        rle_counts_from_string("X")
    with pytest.raises(ValueError, match="size"):
        annotation_mask({"size": [10, 12], "counts": "5X1:F5"}, 10, 10)


def test_uncompressed_rle_agrees_with_segment_anything():
    from segment_anything.utils.amg import rle_to_mask

    counts = [7, 3, 20, 11, 9]
    assert (rle_decode(counts, 5, 10) == rle_to_mask({"size": [5, 10], "counts": counts})).all()
    assert annotation_mask([COLUMNS], H, W).sum() == 240 and annotation_mask(COLUMNS, H, W)[:, 40:45].all()


def test_polygons_as_the_coco_toolkit_rasterises_them():
    square = annotation_mask(SQUARE, H, W)
    assert square.sum() == 400 and square[5:25, 5:25].all()  # a box polygon covers exactly its w × h pixels
    assert (annotation_mask([[5, 5, 5, 25, 25, 25, 25, 5]], H, W) == square).all()  # either orientation
    assert annotation_mask([[-5, -5, 10, -5, 10, 10, -5, 10]], H, W).sum() == 100  # clipped to the image
    assert annotation_mask([[0, 0, 20, 0, 0, 20]], H, W).sum() == 190  # pycocotools gives 190 for this triangle
    assert annotation_mask(OUTSIDE, H, W).sum() == 0 and annotation_mask([], H, W).sum() == 0
    with pytest.raises(ValueError, match="refuses"):  # 4 numbers: pycocotools takes them for a box, refused in a list
        annotation_mask([[1, 1, 9, 9]], H, W)
    assert sum(polygon_counts([5, 5, 5, 5, 25, 5, 25, 25, 5, 25], H, W)) == H * W  # a repeated point is harmless
    with pytest.raises(ValueError, match="unknown"):
        annotation_mask(["nope"], H, W)


def test_splits_and_interleaving(tmp_path):
    assert in_split("testAB", "testA") and in_split("testB", "test") and not in_split("testB", "testA")
    assert in_split("val", "val") and not in_split("train", "val")
    refer = read_refer(write_refer(tmp_path).parent, "refcoco", "testA")
    assert list(refer.refs_by_image) == [3] and refer.image_dir.name == "train2014"
    items = Interleaved([["a0", "a1", "a2"], ["b0"]])
    assert len(items) == 6 and list(items) == ["a0", "b0", "a1", "b0", "a2", "b0"]
    with pytest.raises(ValueError):
        Interleaved([["a"], []])


def test_training_samples(tmp_path, tokenizer):
    root = write_refer(tmp_path).parent
    data = ReferSeg(root, datasets=("refcoco",), num_classes_per_sample=10)
    assert len(data) == 3  # images 1, 2, 3 have train refs
    sample = data.load_item(("refcoco", 1), 0)
    assert sorted(sample.meta["sentences"]) == ["Stripe", "The Red Square", "left box"]  # stripped, case kept
    assert sorted(m.sum() for m in sample.masks) == [240, 400, 400] and sample.masks.dtype == np.float32
    for sentence, mask, turns in zip(sample.meta["sentences"], sample.masks, sample.conversations):
        question, answer = turns[0]
        assert sentence.lower() in question and "<image>" not in question and answer in ANSWERS
        assert mask.sum() == (240 if sentence == "Stripe" else 400)
    assert data.skipped["empty mask"] == 2  # the empty segmentation and the polygon outside the image
    assert data.load_item(("refcoco", 2), 0) is None and data.load_item(("refcoco", 3), 0) is None
    assert data.skipped["unreadable image (or not the annotated size)"] == 1
    assert data.skipped["no usable referring sentence"] == 1
    assert data[1].source == "refcoco/COCO_train2014_000000000001.jpg"  # images 2 and 3 skipped for the next usable
    two = ReferSeg(root, datasets="refcoco", num_classes_per_sample=2)
    first = two.load_item(("refcoco", 1), 7)
    assert first.masks.shape == (2, H, W) and first.conversations == two.load_item(("refcoco", 1), 7).conversations
    batch = collate([first, sample], tokenizer)
    assert len(batch["input_ids"]) == 5 and batch["offset"] == [0, 2, 5] and batch["masks"][1].shape == (3, H, W)


def test_datasets_are_drawn_in_turn(tmp_path):
    write_refer(tmp_path, "refclef", images={7: "25/images/25590.jpg"}, annotations={70: (7, SQUARE)},
                refs=[ref(1, 7, 70, ["man on left"])])
    write_refer(tmp_path)
    data = ReferSeg(tmp_path, datasets="refclef||refcoco")
    assert len(data) == 6 and [data.items[k][0] for k in range(4)] == ["refclef", "refcoco"] * 2
    sample = data[0]
    assert sample.source == "refclef/25/images/25590.jpg" and sample.masks.shape == (1, H, W)
    with pytest.raises(FileNotFoundError, match="refs"):
        ReferSeg(tmp_path, datasets=("refcocog",))
    with pytest.raises(ValueError, match="no refs"):
        ReferSeg(tmp_path, datasets=("refclef",), split="val")


def test_unsafe_or_broken_files_are_refused(tmp_path):
    folder = write_refer(tmp_path)
    (folder / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([OrderedDict(a=1)]))
    with pytest.raises(ValueError, match="unreadable"):
        ReferSeg(tmp_path, datasets=("refcoco",))
    (folder / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([]))
    (folder / "refcoco" / "instances.json").write_text("{broken")
    with pytest.raises(ValueError, match="unreadable"):
        ReferSeg(tmp_path, datasets=("refcoco",))


def test_validation_items(tmp_path, capsys):
    folder = write_refer(tmp_path, "refcocog", split_by="umd", layout=False)  # the reference's validation layout
    items = list(refer_val_items(folder, "refcocog", "val"))
    assert [name for name, *_ in items] == ["COCO_train2014_000000000001.jpg#106.0",
                                            "COCO_train2014_000000000001.jpg#107.0",
                                            "COCO_train2014_000000000001.jpg#107.1"]
    assert [question for _, _, question, _ in items] == [f" What is {s} in this image? Please output segmentation mask."
                                                         for s in ("val square", "a stripe", "the stripe")]
    assert [int(t.sum()) for *_, t in items] == [400, 240, 240] and items[0][3].dtype == np.uint8
    assert items[0][1].shape == (H, W, 3)
    assert [n for n, *_ in refer_val_items(tmp_path, "refcocog", "train")] == [
        "COCO_train2014_000000000001.jpg#100.0", "COCO_train2014_000000000001.jpg#100.1",
        "COCO_train2014_000000000001.jpg#101.0", "COCO_train2014_000000000001.jpg#102.0",
        "COCO_train2014_000000000001.jpg#103.0", "COCO_train2014_000000000003.jpg#105.0"]
    assert "skipped refcocog image 2" in capsys.readouterr().err
