import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference_tiny"


def reference_path(*parts: str) -> Path:
    """A file of the reference's outputs (../shared/reference_tiny); the test is skipped, saying why, where the
    team's shared folder is absent (a user's fresh clone)."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path.resolve()} is not here: the reference's outputs come with the team's ../shared folder")
    return path


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

    return Lisa.from_pretrained(str(reference_path("ckpt")), vision_tower=str(reference_path("clip_tiny")),
                                device="cpu")


@pytest.fixture(scope="session")
def reference_cases() -> list[dict]:
    return json.loads(reference_path("cases.json").read_text())["cases"]


@pytest.fixture
def room_image() -> np.ndarray:
    from lisa_core.output import read_image
    from lisa_core.tiny import SAMPLE_IMAGE

    return read_image(SAMPLE_IMAGE)


@pytest.fixture(scope="session")
def make_adapter(tiny_ckpt, tmp_path_factory):
    """``make(seed, targets=("q_proj", "v_proj"), rank=8)`` → (adapter dir, merged checkpoint dir): LoRA on the tiny
    checkpoint with random non-zero LoRA and trained weights (lm_head, embed_tokens, mask decoder, text_hidden_fcs),
    written as ``lisa-export --adapter-only`` writes it, and the same weights merged as ``lisa-export`` writes them."""
    made = {}

    def make(seed: int, targets=("q_proj", "v_proj"), rank: int = 8):
        key = (seed, tuple(targets), rank)
        if key not in made:
            import torch

            from lisa_core import Lisa
            from training.export import save_adapter, save_merged
            from training.train import TrainConfig, add_lora

            out = tmp_path_factory.mktemp(f"adapter{seed}")
            lisa = Lisa.from_pretrained(str(tiny_ckpt), device="cpu")
            peft_model = add_lora(lisa.model, TrainConfig(model=str(tiny_ckpt), lora_r=rank,
                                                          lora_targets=tuple(targets)))
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for param in peft_model.parameters():
                    if param.requires_grad:  # LoRA B starts at zero: every trained tensor moves
                        param.add_(torch.randn(param.shape, generator=generator) * 0.05)
            made[key] = save_adapter(peft_model, out / "adapter"), save_merged(peft_model, tiny_ckpt, out / "merged")
        return made[key]

    return make
