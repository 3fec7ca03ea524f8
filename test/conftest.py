import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference_tiny"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The embedded default: a tiny random checkpoint made offline by the factory."""
    from lisa_core.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ckpt") / "lisa-tiny")


@pytest.fixture(scope="session")
def tiny_lisa(tiny_ckpt):
    from lisa_core import Lisa

    return Lisa.from_pretrained(str(tiny_ckpt), device="cpu")


@pytest.fixture(scope="session")
def reference_lisa():
    from lisa_core import Lisa

    return Lisa.from_pretrained(str(REFERENCE / "ckpt"), vision_tower=str(REFERENCE / "clip_tiny"), device="cpu")


@pytest.fixture(scope="session")
def reference_cases() -> list[dict]:
    return json.loads((REFERENCE / "cases.json").read_text())["cases"]


@pytest.fixture
def room_image() -> np.ndarray:
    from lisa_core.output import read_image
    from lisa_core.tiny import SAMPLE_IMAGE

    return read_image(SAMPLE_IMAGE)
