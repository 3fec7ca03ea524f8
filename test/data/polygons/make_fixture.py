"""Writes ``cases.json`` (inputs) and ``expected.npz`` (masks) beside this file: polygon and RLE masks as the
reference LISA's loaders produce them, for ``test/test_polygons.py``.

Run it in the reference's environment (the pins of its requirements.txt, Python 3.11):

    python3 -m venv /tmp/cv48
    /tmp/cv48/bin/pip install numpy==1.24.2 opencv-python==4.8.0.74 "cython<3" setuptools wheel
    /tmp/cv48/bin/pip install --no-build-isolation --no-binary pycocotools pycocotools==2.0.6
    /tmp/cv48/bin/python test/data/polygons/make_fixture.py

``--check`` instead redraws the ReasonSeg cases with whatever OpenCV runs it (only cv2 and numpy needed) and
prints, per case, the pixels that differ from ``expected.npz``:

    /tmp/cv414/bin/python test/data/polygons/make_fixture.py --check

What the reference does, reproduced here:

* ReasonSeg (``get_mask_from_json``): "flag" shapes skipped; each shape's points cast to int32 (truncated toward
  zero), outlined (``cv2.polylines``, closed, thickness 1) then filled (``cv2.fillPoly``); shapes drawn in the order
  ``np.argsort(areas)[::-1]`` (areas: pixels of the shape drawn alone), value 255 where the label contains
  "ignore", else 1.
* REFER (``ReferSegDataset``): ``mask.frPyObjects`` on the polygon list (or the compressed RLE list, counts as
  bytes), ``mask.decode``, summed over the parts, as uint8 — 2 where two parts overlap.
* PACO-LVIS / PASCAL-Part (``SemSegDataset``): ``COCO.annToMask`` (parts merged: a union).
* the tie order: ``np.argsort`` of uint64 areas under numpy 1.24.
"""
from __future__ import annotations

import contextlib
import io
import json
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
CASES, EXPECTED = HERE / "cases.json", HERE / "expected.npz"


# --- inputs ------------------------------------------------------------------------------------------------------

def star(rng, cx, cy, r_min, r_max, n) -> list[list[float]]:
    """A LabelMe-style polygon: ``n`` float points at random radii around (cx, cy), in angle order."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(r_min, r_max, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).tolist()


def box(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def shape(label, points) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


def reasonseg_cases(rng) -> list[dict]:
    cases = [
        ("ordinary_floats", 96, 128, [shape("target", star(rng, 40, 45, 10, 30, 9)),
                                      shape("target", star(rng, 80, 50, 15, 35, 14)),
                                      shape("target", star(rng, 100, 20, 4, 12, 7))]),
        ("ordinary_realistic", 480, 640, [shape(label, star(rng, cx, cy, r * 0.4, r, n)) for label, cx, cy, r, n in
                                          (("target", 320, 240, 180, 60), ("ignore", 300, 220, 60, 25),
                                           ("target", 80, 400, 120, 40), ("ignore", 600, 60, 90, 30),
                                           ("target", 500, 300, 70, 45))]),
        ("concave_and_bowtie", 64, 80, [shape("target", [[5, 5], [40, 5], [40, 12], [15, 12], [15, 40], [40, 40],
                                                         [40, 47], [5, 47]]),
                                        shape("target", [[50.2, 10.7], [75.9, 50.1], [75.1, 9.8], [49.6, 51.3]])]),
        ("border_all_sides", 64, 80, [shape("target", [[-20.5, -13.2], [95.7, -8.1], [100.2, 70.9], [-30.0, 85.3]]),
                                      shape("ignore", [[-15.3, 20.2], [18.7, 32.5], [-9.9, 44.1]]),
                                      shape("target", [[70.4, 50.6], [90.1, 55.2], [85.7, 75.3], [60.2, 70.8]])]),
        ("border_stars", 240, 320, [shape(label, star(rng, cx, cy, 30, 110, 40)) for label, cx, cy in
                                    (("target", 0, 0), ("ignore", 320, 0), ("target", 320, 240), ("target", -20, 250),
                                     ("ignore", 160, -40), ("target", 160, 250))]),
        ("border_fractions", 40, 50, [shape("target", [[-0.9, -0.2], [49.6, -0.7], [50.4, 39.99], [-1.5, 39.2]]),
                                      shape("ignore", [[-0.99, 10.5], [10.99, 10.01], [10.5, 20.999], [-0.01, 20.5]]),
                                      shape("target", [[30.5, 30.5], [49.999, 30.2], [49.2, 45.7], [31.1, 44.3]])]),
        ("border_far", 48, 64, [shape("target", [[-5000, -5000], [5000, -4000], [4000, 5000], [-4500, 4500]]),
                                shape("ignore", [[-100000, 20], [30, 10], [30, 30]]),
                                shape("target", [[10, 40], [100000, 44], [12, 47.5]])]),
        ("border_lines", 48, 64, [shape("target", [[-3, 5], [0.7, 5], [0.7, 40], [-3, 40]]),
                                  shape("ignore", [[10, 47], [50, 47], [50, 60], [10, 60]]),
                                  shape("target", [[63.4, 0], [70, 0], [70, 47.9], [63.9, 47.9]]),
                                  shape("target", [[20, -0.5], [40, -0.5], [30, -8]])]),
        ("nested_levels", 80, 80, [shape("target", box(10, 10, 70, 70)), shape("ignore", box(25, 25, 55, 55)),
                                   shape("target", box(35, 35, 45, 45)),
                                   shape("ignore", [[10, 60], [20, 60], [20, 70], [10, 70]])]),
        ("nested_floats", 96, 96, [shape("target", star(rng, 48, 48, 30, 44, 30)),
                                   shape("ignore", star(rng, 48, 48, 8, 20, 15)),
                                   shape("target", star(rng, 50, 47, 2, 6, 8)),
                                   shape("ignore", [[20.3, 40.7], [48.5, 12.2], [48.5, 40.7]])]),
        ("touching_edge", 48, 64, [shape("target", box(5, 5, 25, 25)), shape("ignore", box(25, 5, 45, 25)),
                                   shape("target", box(5.5, 30.5, 30.5, 44.5)),
                                   shape("ignore", box(30.5, 30, 60, 47))]),
        ("touching_vertex", 48, 64, [shape("target", [[5, 5], [20, 5], [20, 20]]), shape("ignore", [[20, 20], [35, 20],
                                                                                                    [35, 35]]),
                                     shape("target", [[45, 10], [52, 3], [59, 10], [52, 17]]),
                                     shape("ignore", [[52, 17], [59, 24], [52, 31], [45, 24]])]),
        ("touching_ties", 32, 80, [shape("target", box(5, 5, 25, 25)), shape("ignore", box(25, 5, 45, 25)),
                                   shape("target", box(45, 5, 65, 25))]),
        ("slivers", 48, 64, [shape("target", [[5, 5], [40, 5.5], [40, 6], [5, 6]]),
                             shape("ignore", [[5, 10], [25, 20], [45, 30]]),
                             shape("target", [[50, 2], [55.5, 45.5]]), shape("ignore", [[60.7, 40.2]]),
                             shape("target", [[2, 44], [60, 45.2], [2, 45.6]]),
                             shape("ignore", [[30, 2], [30.4, 30], [30.9, 2]])]),
        ("labels_and_flags", 40, 50, [shape("flag", box(0, 0, 49, 39)), shape("Flag", box(2, 2, 10, 10)),
                                      shape("TARGET", box(5, 5, 30, 30)), shape("Ignore region", box(10, 10, 20, 20)),
                                      shape("target_ignore_2", box(25, 25, 45, 35)),
                                      shape("person", box(35, 2, 48, 12))]),
        ("many_ties_grid", 60, 100, [shape("target" if (i + j) % 2 else "ignore", box(2 + 9 * i, 2 + 9 * j,
                                                                                      11 + 9 * i, 11 + 9 * j))
                                     for j in range(2) for i in range(10)]),
    ]
    sizes, many = (6, 9, 13), []
    for k in range(40):
        x, y, side = rng.integers(-5, 150), rng.integers(-5, 110), sizes[k % 3]
        many.append(shape(rng.choice(["target", "ignore"]), box(int(x), int(y), int(x + side), int(y + side))))
    cases.append(("many_shapes_ties", 120, 160, many))
    return [{"name": n, "height": h, "width": w, "shapes": s} for n, h, w, s in cases]


def blob(rng, height, width, n) -> np.ndarray:
    """H×W uint8 0/1, a few random ellipses: something to run-length encode."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(n):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(2, width // 3)), int(rng.integers(2, height // 3)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def coco_cases(rng) -> list[dict]:
    from pycocotools import mask as coco_mask

    def compressed(m):
        rle = coco_mask.encode(np.asfortranarray(m))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

    def uncompressed(m):
        flat = m.T.ravel().astype(np.int8)
        ends = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        counts = np.diff(ends).tolist()
        return {"size": list(m.shape), "counts": ([0] if flat[0] else []) + counts}

    flat = lambda points: [c for p in points for c in p]  # noqa: E731
    cases = [
        ("poly_border", 48, 64, [flat([[-10.5, -7.2], [70.3, -3.3], [75.8, 55.1], [-4.4, 52.9]]),
                                 flat([[-30, 20], [10.7, 24.2], [-2, 40]])]),
        ("poly_border_fractions", 40, 50, [flat([[-0.9, -0.2], [49.6, -0.7], [50.4, 39.99], [-1.5, 39.2]])]),
        ("poly_nested", 64, 64, [flat(box(5, 5, 60, 60)), flat(box(20, 20, 40, 40)),
                                 flat(star(rng, 30, 30, 3, 8, 9))]),
        ("poly_touching_edge", 48, 64, [flat(box(5, 5, 25, 25)), flat(box(25, 5, 45, 25)),
                                        flat(box(5.5, 30.5, 30.5, 44.5)), flat(box(30.5, 30, 60, 47))]),
        ("poly_touching_vertex", 48, 64, [flat([[5, 5], [20, 5], [20, 20]]), flat([[20, 20], [35, 20], [35, 35]]),
                                          flat([[45, 10], [52, 3], [59, 10], [52, 17]]),
                                          flat([[52, 17], [59, 24], [52, 31], [45, 24]])]),
        ("poly_concave_bowtie", 64, 80, [flat([[5, 5], [40, 5], [40, 12], [15, 12], [15, 40], [40, 40], [40, 47],
                                               [5, 47]]),
                                         flat([[50.2, 10.7], [75.9, 50.1], [75.1, 9.8], [49.6, 51.3]])]),
        ("poly_slivers", 48, 64, [flat([[5, 5], [40, 5.5], [40, 6], [5, 6]]), flat([[5, 10], [25, 20], [45, 30]]),
                                  flat([[2, 44], [60, 45.2], [2, 45.6]])]),
        ("poly_odd_and_short_parts", 48, 64, [flat(box(5, 5, 25, 25)) + [7.5], [30, 30, 40, 40], [50, 5]]),
        ("poly_realistic", 427, 640, [flat(star(rng, 320, 200, 60, 190, 50)), flat(star(rng, 100, 380, 20, 80, 35)),
                                      flat(star(rng, 600, 30, 20, 70, 25))]),
        ("rle_uncompressed", 48, 64, uncompressed(blob(rng, 48, 64, 3))),
        ("rle_compressed", 96, 128, compressed(blob(rng, 96, 128, 4))),
        ("rle_list_compressed", 96, 128, [compressed(blob(rng, 96, 128, 2)), compressed(blob(rng, 96, 128, 2))]),
    ]
    return [{"name": n, "height": h, "width": w, "segmentation": s} for n, h, w, s in cases]


def adversary(n: int) -> list[int]:
    """McIlroy's adversary ("A killer adversary for quicksort", 1999) run against numpy's own argsort: values that
    drive its introsort into the heapsort fallback."""
    gas, values, state = n, [n] * n, {"solid": 0, "candidate": 0}

    class Probe:
        def __init__(self, i):
            self.i = i

        def __lt__(self, other):
            x, y = self.i, other.i
            if values[x] == gas and values[y] == gas:
                values[x if x == state["candidate"] else y] = state["solid"]
                state["solid"] += 1
            if values[x] == gas:
                state["candidate"] = x
            elif values[y] == gas:
                state["candidate"] = y
            return values[x] < values[y]

        def __gt__(self, other):
            return other < self

        def __eq__(self, other):
            return values[self.i] == values[other.i]

    probes = np.empty(n, object)
    probes[:] = [Probe(i) for i in range(n)]
    np.argsort(probes)
    return values


def argsort_cases(rng) -> list[dict]:
    cases = [{"name": f"random_{k}", "values": rng.integers(0, 1 + k // 4, 1 + k).tolist()} for k in range(0, 80, 3)]
    for n in (40, 64, 100):
        killer, low = adversary(n), int(0.6 * n)
        cases.append({"name": f"killer_{n}", "values": killer})
        cases.append({"name": f"killer_{n}_ties", "values": [v if v < low else low + (v - low) // 3 for v in killer]})
    return cases


# --- the reference's masks ---------------------------------------------------------------------------------------

def draw(mask: np.ndarray, points, value: int) -> None:
    polygon = np.array([points], dtype=np.int32)
    cv2.polylines(mask, polygon, True, value, 1)
    cv2.fillPoly(mask, polygon, value)


def reasonseg_reference(case: dict, order: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """The reference's ReasonSeg mask of ``case`` (H×W uint8) and its drawing order (indices into the shapes that
    are not flags); ``order`` given: drawn in that order instead of numpy's."""
    height, width = case["height"], case["width"]
    kept = [s for s in case["shapes"] if s["label"].lower() != "flag"]
    areas = []
    for s in kept:
        alone = np.zeros((height, width), np.uint8)
        draw(alone, s["points"], 1)
        areas.append(alone.sum())
        assert areas[-1] > 0, f"{case['name']}: a shape outside the image (the project refuses those)"
    order = [int(k) for k in np.argsort(areas)[::-1]] if order is None else order
    mask = np.zeros((height, width), np.uint8)
    for k in order:
        draw(mask, kept[k]["points"], 255 if "ignore" in kept[k]["label"].lower() else 1)
    return mask, order


def refer_reference(case: dict) -> np.ndarray | None:
    """The reference's REFER mask (H×W uint8, the parts summed), or None where its loader does not take the case."""
    from pycocotools import mask as coco_mask

    segmentation, height, width = case["segmentation"], case["height"], case["width"]
    if not isinstance(segmentation, list):
        return None
    if isinstance(segmentation[0], list):
        rles = coco_mask.frPyObjects(segmentation, height, width)
    elif all(isinstance(p["counts"], str) for p in segmentation):
        rles = [{"size": p["size"], "counts": p["counts"].encode()} for p in segmentation]
    else:
        return None
    return np.sum(coco_mask.decode(rles), axis=2).astype(np.uint8)


def ann_to_mask(case: dict) -> np.ndarray | None:
    """``COCO.annToMask`` of the case as a one-annotation dataset (H×W uint8), None if it raises."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
    api.dataset = {"images": [{"id": 1, "height": case["height"], "width": case["width"]}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": case["segmentation"]}],
                   "categories": [{"id": 1, "name": "thing"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    try:
        return api.annToMask(api.loadAnns(1)[0])
    except Exception:  # what the reference's SemSegDataset catches (it then draws another image)
        return None


# --- main -------------------------------------------------------------------------------------------------------

def versions() -> dict:
    import pycocotools

    return {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            "pycocotools": getattr(pycocotools, "__version__", None) or _installed("pycocotools")}


def _installed(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def make() -> None:
    rng = np.random.default_rng(20240611)
    reasonseg, coco, argsort = reasonseg_cases(rng), coco_cases(rng), argsort_cases(rng)
    arrays = {}
    for case in reasonseg:
        arrays[f"reasonseg.{case['name']}"], case["order"] = reasonseg_reference(case)
    for case in coco:
        for kind, mask in (("refer", refer_reference(case)), ("annToMask", ann_to_mask(case))):
            if mask is not None:
                arrays[f"{kind}.{case['name']}"] = mask
    for case in argsort:
        arrays[f"argsort.{case['name']}"] = np.argsort(np.array(case["values"], np.uint64))
    sections = {"reasonseg": reasonseg, "coco": coco, "argsort": argsort}
    lines = [f' "made_with": {json.dumps(versions())}'] + [
        f' "{key}": [\n' + ",\n".join(f"  {json.dumps(case, separators=(',', ':'))}" for case in cases) + "\n ]"
        for key, cases in sections.items()]
    CASES.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    np.savez_compressed(EXPECTED, **arrays)
    print(f"{len(reasonseg)} ReasonSeg, {len(coco)} COCO, {len(argsort)} argsort cases with {versions()}")


def check() -> int:
    """Pixels of the ReasonSeg cases the running OpenCV draws differently; 1 if any differ."""
    cases, expected = json.loads(CASES.read_text()), np.load(EXPECTED)
    print(f"OpenCV {cv2.__version__} against {cases['made_with']['opencv']}:")
    total = 0
    for case in cases["reasonseg"]:
        mask, _ = reasonseg_reference(case, case["order"])
        differ = int((mask != expected[f"reasonseg.{case['name']}"]).sum())
        total += differ
        print(f"  {case['name']:<22} {case['height']}x{case['width']:<5} {differ:6d} pixels differ")
    print(f"  total {total}")
    return int(total > 0)


if __name__ == "__main__":
    sys.exit(check() if "--check" in sys.argv[1:] else make())
