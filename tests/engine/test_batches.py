"""The data position: global batch b is a function of (seed, b) alone, split the same way at
any process count, and iteration resumes from any position with the same micro batches."""

from __future__ import annotations

import itertools

import torch

from pipeline.engine.batches import StepBatches, micro_batches


class Rows:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):
        return {"row": torch.as_tensor(idx)}


def collate(examples, generator):
    return {"row": examples["row"], "draw": torch.rand(1, generator=generator)}


def batches(world: int, rank: int, accum: int, micro: int = 4, n: int = 100) -> StepBatches:
    return StepBatches(Rows(n), collate, seed=7, micro_batch=micro, accumulation=accum,
                       rank=rank, world=world)  # fmt: skip


def test_a_global_batch_is_the_same_examples_at_any_process_count():
    one = batches(world=1, rank=0, accum=4)
    two = [batches(world=2, rank=r, accum=2) for r in range(2)]
    for b in range(30):  # several epochs of 6 global batches
        alone = [one.indices(b * 4 + j) for j in range(4)]
        # process r takes micro batch j of the global batch from slot j * world + r
        split = [two[r].indices(b * 2 + j) for j in range(2) for r in range(2)]
        assert alone == split
        flat = sum(alone, [])
        assert len(set(flat)) == 16  # no example twice in a step


def test_every_example_once_per_epoch():
    one = batches(world=1, rank=0, accum=1, micro=10, n=100)
    epoch = sum((one.indices(k) for k in range(10)), [])
    assert sorted(epoch) == list(range(100))
    assert one.indices(10) != one.indices(0)  # the next epoch is reshuffled


def test_iteration_resumes_from_any_position_with_workers():
    b = batches(world=2, rank=1, accum=3)
    straight = list(itertools.islice(micro_batches(b, 0), 30))
    for start, workers in ((4, 0), (7, 2)):
        resumed = list(itertools.islice(micro_batches(b, start, num_workers=workers), 9))
        for got, want in zip(resumed, straight[start * 3 :]):
            assert torch.equal(got["row"], want["row"])
            assert torch.equal(got["draw"], want["draw"])  # the collate generator too
