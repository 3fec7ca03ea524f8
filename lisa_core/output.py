"""Pictures and files of a result: mask overlays, lossless mask PNGs, ``reply.json``."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .engine import LisaResult

PALETTE = np.array([(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 64, 255), (0, 220, 220)],
                   dtype=np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB; ``ValueError`` naming the file if it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image '{path}' (missing, or not an image format OpenCV reads)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


DEMO_IMAGE = Path(__file__).parent / "data" / "demo_room.png"  # a held-out synthetic room with its ground truth


def read_ground_truth(image_path: str | Path) -> dict[str, np.ndarray]:
    """Class name → H×W bool mask, from ``<stem>_labels.png`` (label ids) and ``<stem>.json`` (``{"labels": names}``)
    beside an image; empty when the image has none."""
    path = Path(image_path)
    labels_png, names_json = path.with_name(f"{path.stem}_labels.png"), path.with_suffix(".json")
    if not (labels_png.is_file() and names_json.is_file()):
        return {}
    labels = cv2.imread(str(labels_png), cv2.IMREAD_UNCHANGED)
    names = json.loads(names_json.read_text())["labels"]
    return {names[i]: labels == i for i in np.unique(labels) if 0 <= i < len(names)}


def overlay(image: np.ndarray, masks, alpha: float = 0.5) -> np.ndarray:
    """RGB image with each mask blended in its own colour and outlined."""
    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        color = PALETTE[i % len(PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    out = out.astype(np.uint8)
    for i, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in PALETTE[i % len(PALETTE)]), 2)
    return out


def write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    image = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def write_masks(out: Path, masks, scores) -> list[dict]:
    """Each H×W bool mask as ``mask_<i>.png`` (0/255, lossless); returns their index, score, area and file."""
    rows = []
    for i, (mask, score) in enumerate(zip(masks, scores)):
        name = f"mask_{i}.png"
        write_png(out / name, mask.astype(np.uint8) * 255)
        rows.append({"index": i, "score": float(score), "area": int(mask.sum()), "file": name})
    return rows


def save_result(out_dir: str | Path, image: np.ndarray, result: LisaResult, query: str = "") -> dict:
    """Write ``reply.json``, ``mask_<i>.png`` (0/255, lossless) and ``overlay.png``; return the json content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks = write_masks(out, result.masks, result.scores)
    write_png(out / "overlay.png", overlay(image, result.masks))
    reply = {"query": query, "text": result.text, "token_ids": result.token_ids, "turn": result.turn,
             "masks": masks, "overlay": "overlay.png", "image_size": list(image.shape[:2]),
             "timings_s": result.timings}
    (out / "reply.json").write_text(json.dumps(reply, indent=2) + "\n")
    return reply
