"""The trainer's micro-batches: the same samples in the same order whether DataLoader workers build them or the
training process does, and the samples the workers skip are still counted."""
from collections import Counter

import numpy as np
import pytest
import torch

from test_scannet import make_scene
from training.data.mix import Mixture
from training.train import MicroBatches, TrainConfig, micro_batch_loader


@pytest.fixture
def micro_batches(tiny_lisa, tmp_path):
    (tmp_path / "scannet").mkdir()
    make_scene(tmp_path / "scannet", frames=6, broken=True)  # frame 3 is unreadable
    config = TrainConfig(micro_batch=2, workers=2)
    data = Mixture({"scannet": {"frame_step": 1, "min_pixels": 50}}, seed=0, dataset_dir=tmp_path)
    return lambda: MicroBatches(data, first=0, count=6, config=config, lisa=tiny_lisa, rank=1, world=2)


def test_workers_build_the_same_batches_and_report_their_skips(micro_batches):
    in_process = list(micro_batch_loader(micro_batches(), workers=0))
    from_workers = list(micro_batch_loader(micro_batches(), workers=2))
    for a, b in zip(in_process, from_workers, strict=True):
        assert a["input_ids"] == b["input_ids"] and a["image_sizes"] == b["image_sizes"]
        assert torch.equal(a["clip_pixels"], b["clip_pixels"])
        assert all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"], strict=True))

    def total(batches):  # what the trainer sums
        return sum((b["skipped"]["scannet"] for b in batches), Counter())

    # the in-process pass left its counts in the data the workers are forked from: they report only their own
    assert total(in_process) == total(from_workers) and total(in_process)["unreadable image or label"] >= 1


def test_rank_takes_every_world_th_sample(micro_batches, tiny_lisa):
    batches = micro_batches()
    # rank 1 of 2, micro-batch 2: batch j holds stream samples (2j + i) * 2 + 1
    expected = [batches.data[(2 * 1 + i) * 2 + 1] for i in range(2)]
    batch = batches[1]
    assert [m.shape for m in batch["masks"]] == [(len(s.masks), *s.image.shape[:2]) for s in expected]
    assert all(np.array_equal(m.numpy(), s.masks) for m, s in zip(batch["masks"], expected, strict=True))


def test_a_plain_for_loop_over_the_micro_batches_ends_at_their_count(micro_batches):
    batches = micro_batches()
    assert len(list(batches)) == len(batches) == 6  # an evaluation loop iterates it directly
    with pytest.raises(IndexError, match="micro-batch 6 of 6"):
        batches[6]
