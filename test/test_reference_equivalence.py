"""The engine reproduces the reference LISA code on ../shared/reference_tiny, case by case (fp32, CPU)."""
import json

import numpy as np
import pytest

from conftest import REFERENCE
from lisa_core.output import read_image
from lisa_core.prompt import first_turn_text

if not (REFERENCE / "cases.json").is_file():
    pytest.skip(f"the reference's outputs are not here ({REFERENCE.resolve()}: the team's ../shared/reference_tiny, "
                "absent from a fresh clone)", allow_module_level=True)
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
EXPECTED = np.load(REFERENCE / "expected_masks.npz")


def logits_bound(reference: np.ndarray) -> np.ndarray:
    """Half a float16 step at the stored value, plus 1e-5. The step is taken away from zero (``spacing(|r|)``):
    numpy's spacing of a negative power of two is the smaller step toward zero, which a value that correctly
    rounds to it can exceed (seen: ours −0.0625268 rounds to the stored −0.0625, a 2.7e-5 difference)."""
    return 0.5 * np.spacing(np.abs(reference)).astype(np.float32) + 1e-5


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_case(reference_lisa, case):
    image = read_image(REFERENCE / case["image"])
    if case["mode"] == "generate":
        prompt_ids = reference_lisa.tokenizer.encode(first_turn_text(case["text"]))
        assert prompt_ids == case["prompt_input_ids"]
        result = reference_lisa.chat(image, case["text"], max_new_tokens=case["max_new_tokens"])
        assert result.token_ids == case["generated_ids"]
    else:
        result = reference_lisa.segment(image, case["text"], case["answer"])
        assert result.token_ids == case["input_ids"]
    assert len(result.masks) == case["n_masks"]
    assert len(result.scores) == case["n_masks"]
    if case["n_masks"] == 0:
        assert case["name"] not in EXPECTED.files
        return
    expected = EXPECTED[case["name"]]
    assert result.mask_logits.shape == expected.shape == (case["n_masks"], *image.shape[:2])
    assert result.mask_logits.dtype == np.float32
    diff = np.abs(result.mask_logits - expected.astype(np.float32))
    assert (diff <= logits_bound(expected)).all(), f"max |Δlogit| {diff.max():.3g}"
    agreement = (np.stack(result.masks) == (expected > 0)).mean()
    assert agreement >= 0.999


def test_teacher_forced_fraction_positive(reference_lisa, reference_cases):
    """The reference's recorded foreground fractions follow from our masks too."""
    for case in (c for c in reference_cases if c["mode"] == "teacher_forced"):
        result = reference_lisa.segment(read_image(REFERENCE / case["image"]), case["text"], case["answer"])
        assert [m.mean() for m in result.masks] == pytest.approx(case["frac_positive"], abs=1e-3)
