"""``lisa-chat`` in-process: one-shot mode, teacher-forced mode, bad inputs, and the multi-turn REPL."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lisa_core import cli
from lisa_core.output import read_image
from lisa_core.tiny import SAMPLE_IMAGE

QUESTION = "Where can I wash my hands?"


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"cannot read {path}"
    return image


def check_outputs(out: Path, image_shape) -> dict:
    """reply.json, its mask PNGs and overlay.png are there and consistent; returns reply.json's content."""
    reply = json.loads((out / "reply.json").read_text())
    assert {"text", "token_ids", "masks"} <= set(reply)
    assert isinstance(reply["text"], str)
    assert reply["token_ids"] and all(isinstance(i, int) for i in reply["token_ids"])
    for mask in reply["masks"]:
        assert {"score", "area", "file"} <= set(mask)
        png = read_png(out / mask["file"])
        assert png.ndim == 2 and png.dtype == np.uint8  # single channel
        assert png.shape == tuple(image_shape[:2])
        assert set(np.unique(png).tolist()) <= {0, 255}
        assert mask["area"] == int(np.count_nonzero(png == 255))
    assert len({m["file"] for m in reply["masks"]}) == len(reply["masks"])
    overlay = read_png(out / "overlay.png")
    assert overlay.shape[:2] == tuple(image_shape[:2])
    return reply


def test_one_shot(tiny_ckpt, tiny_lisa, tmp_path):
    out = tmp_path / "one_shot"
    code = cli.main(["--model", str(tiny_ckpt), "--device", "cpu", "--image", str(SAMPLE_IMAGE), "--prompt", QUESTION,
                     "--out", str(out), "--max-new-tokens", "8"])
    assert code == 0
    image = read_image(SAMPLE_IMAGE)
    reply = check_outputs(out, image.shape)
    expected = tiny_lisa.chat(image, QUESTION, max_new_tokens=8)
    assert reply["token_ids"] == expected.token_ids
    assert reply["text"] == expected.text
    assert len(reply["masks"]) == len(expected.masks)


def test_teacher_forced_answer_writes_one_mask(tiny_ckpt, tiny_lisa, tmp_path):
    out = tmp_path / "answer"
    answer = "Sure, it is [SEG]."
    code = cli.main(["--model", str(tiny_ckpt), "--device", "cpu", "--image", str(SAMPLE_IMAGE), "--prompt", QUESTION,
                     "--answer", answer, "--out", str(out), "--max-new-tokens", "8"])
    assert code == 0
    image = read_image(SAMPLE_IMAGE)
    reply = check_outputs(out, image.shape)
    assert reply["text"] == answer
    assert len(reply["masks"]) == 1
    expected = tiny_lisa.segment(image, QUESTION, answer)
    png = read_png(out / reply["masks"][0]["file"])
    np.testing.assert_array_equal(png == 255, expected.masks[0])
    assert reply["masks"][0]["score"] == pytest.approx(expected.scores[0], abs=1e-6)


def test_missing_image_file(tiny_ckpt, tmp_path, capsys):
    missing = tmp_path / "no_such_image.png"
    code = cli.main(["--model", str(tiny_ckpt), "--device", "cpu", "--image", str(missing), "--prompt", QUESTION,
                     "--out", str(tmp_path / "out"), "--max-new-tokens", "8"])
    assert code != 0
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out" / "reply.json").exists()


def test_prompt_without_image(tiny_ckpt, tmp_path, capsys):
    code = cli.main(["--model", str(tiny_ckpt), "--device", "cpu", "--prompt", QUESTION,
                     "--out", str(tmp_path / "out")])
    assert code != 0
    assert "--image" in capsys.readouterr().err


def test_missing_model_dir(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    code = cli.main(["--model", str(missing), "--device", "cpu", "--image", str(SAMPLE_IMAGE), "--prompt", QUESTION,
                     "--out", str(tmp_path / "out")])
    assert code != 0
    assert str(missing) in capsys.readouterr().err


def scripted(lines):
    """A ``read`` for the REPL that plays ``lines`` then ends the input like Ctrl-D."""
    feed = iter(lines)

    def read(prompt=""):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return read


def test_repl(tiny_ckpt, tiny_lisa, tmp_path, capsys):
    out = tmp_path / "repl"
    args = cli.parse_args(["--model", str(tiny_ckpt), "--device", "cpu", "--image", str(SAMPLE_IMAGE),
                           "--out", str(out), "--max-new-tokens", "8"])
    lines = ["What is here?", ":reset", "Where can I sit?", ":image /nonexistent.png", ":quit",
             "never read: the REPL stops at :quit"]
    cli.repl(tiny_lisa, args, read=scripted(lines))
    printed = capsys.readouterr().out

    image = read_image(SAMPLE_IMAGE)
    first = check_outputs(out / "turn_001", image.shape)
    second = check_outputs(out / "turn_002", image.shape)
    assert sorted(p.name for p in out.iterdir()) == ["turn_001", "turn_002"]
    assert first["query"] == "What is here?"
    assert second["query"] == "Where can I sit?"
    # after :reset the second question is a fresh first turn: same ids as a one-shot chat
    assert second["turn"] == 1
    assert second["token_ids"] == tiny_lisa.chat(image, "Where can I sit?", max_new_tokens=8).token_ids
    assert "conversation reset" in printed
    assert "error" in printed and "/nonexistent.png" in printed


def test_repl_keeps_history_without_reset(tiny_ckpt, tiny_lisa, tmp_path):
    out = tmp_path / "repl_history"
    args = cli.parse_args(["--model", str(tiny_ckpt), "--device", "cpu", "--image", str(SAMPLE_IMAGE),
                           "--out", str(out), "--max-new-tokens", "4"])
    cli.repl(tiny_lisa, args, read=scripted(["What is here?", "Where can I sit?"]))  # ends on EOF
    assert json.loads((out / "turn_002" / "reply.json").read_text())["turn"] == 2
