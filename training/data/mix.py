"""The training stream: datasets by name, built from a config entry, and mixed by weight.

Names and where each looks by default (``dataset_dir`` laid out as the reference's ``--dataset_dir``):

    sem_seg     SemSeg        DIR (ade20k/, cocostuff/, coco/, vlpart/, mapillary/)
    refer_seg   ReferSeg      DIR/refer_seg (REFER layout) + DIR/images
    vqa         LlavaInstruct DIR/llava_dataset/llava_instruct_150k.json + DIR/coco/train2017
    reason_seg  ReasonSeg     DIR/reason_seg/ReasonSeg/<split> (+ explanatory/train.json when present)
    scannet     ScanNetFrames DIR/scannet (ScanNet v2 2D export layout)
    synthetic   SyntheticRooms  (in memory)

An entry's other keys are the dataset's keyword arguments; ``weight`` is its share of the stream; ``type`` (default:
the entry's name) lets two entries of one kind be mixed, e.g. ``scannet`` and ``new_class: {type: scannet, …}``.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path


def reason_seg_options(options: dict, dataset_dir: Path) -> dict:
    folder = dataset_dir / "reason_seg" / "ReasonSeg"
    options = {"root": folder / options.pop("split", "train"), **options}
    explanatory = folder / "explanatory" / "train.json"
    if "explanatory_json" not in options and explanatory.is_file():
        options["explanatory_json"] = explanatory
    return options


def build_dataset(name: str, options: dict, dataset_dir: str | Path = "dataset"):
    """The dataset ``name`` with keyword arguments ``options`` (``weight`` ignored); ``root`` defaults under
    ``dataset_dir`` as listed in this module's docstring."""
    from .reasonseg import ReasonSeg
    from .refer import ReferSeg
    from .scannet import ScanNetFrames
    from .semseg import SemSeg
    from .synthetic import SyntheticRooms
    from .vqa import LlavaInstruct

    dataset_dir = Path(dataset_dir)
    options = {k: v for k, v in options.items() if k != "weight"}
    name = options.pop("type", name)
    factories = {
        "sem_seg": (SemSeg, lambda o: {"root": dataset_dir, **o}),
        "refer_seg": (ReferSeg, lambda o: {"root": dataset_dir, **o}),
        "vqa": (LlavaInstruct, lambda o: {"root": dataset_dir, **o}),
        "reason_seg": (ReasonSeg, lambda o: reason_seg_options(o, dataset_dir)),
        "scannet": (ScanNetFrames, lambda o: {"root": dataset_dir / "scannet", **o}),
        "synthetic": (SyntheticRooms, lambda o: o),
    }
    if name not in factories:
        raise ValueError(f"unknown dataset '{name}' (available: {', '.join(factories)})")
    factory, with_defaults = factories[name]
    try:
        return factory(**with_defaults(options))
    except TypeError as err:  # an option the dataset does not take
        raise ValueError(f"dataset '{name}': {err}") from None


class Mixture:
    """Sample ``k`` of the training stream: a source drawn by weight, then an item, both from ``k`` and the seed —
    so a resumed run sees exactly the samples it would have seen."""

    def __init__(self, sources: dict, seed: int, dataset_dir: str | Path = "dataset"):
        if not sources:
            raise ValueError("no training datasets configured")
        self.sources = {name: build_dataset(name, opts, dataset_dir) for name, opts in sources.items()}
        self.weights = [float(opts.get("weight", 1.0)) for opts in sources.values()]
        self.seed = seed

    def __getitem__(self, k: int):
        rng = random.Random(self.seed * 7_919 + k)
        dataset = rng.choices(list(self.sources.values()), self.weights)[0]
        return dataset[rng.randrange(len(dataset))]

    def skipped_counts(self) -> dict[str, Counter]:
        """Per source, the samples this process has skipped so far, by reason."""
        return {name: Counter(source.skipped) for name, source in self.sources.items() if hasattr(source, "skipped")}
