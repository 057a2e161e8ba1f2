"""Deterministic batches whose position is just the step number.

Map-style data: the order of epoch e is a permutation drawn from (seed, e); global batch b (the
b-th step attempted, skipped ones included: `TrainState.batches`) is the one at offset
(b mod batches_per_epoch) * global_batch; process r takes micro batch j of it from slot
(j * world + r). So a resumed run continues at exactly the next unseen example with no state
beyond that counter, at any number of DataLoader workers, and with train.global_batch_size set
the same examples at any process count. Each micro batch is collated with its own generator
seeded from (seed, b, j, r): masks and noise are the same after a resume.

Streaming data (pipeline/data/streaming.py): each process reads its own share of the stream;
micro batches come from torchdata's StatefulDataLoader, whose `state_dict()` holds the stream
position of every DataLoader worker (shuffle buffer included); it is saved in the checkpoint.
The n-th micro batch of a process is collated with a generator seeded from (seed, n, rank).

DataLoaders get their own seeded generator: left to themselves they draw a seed from the
global torch RNG when iteration starts, which a resumed run would draw at another point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def batch_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (SplitMix64 over the parts)."""
    x = 0
    for p in parts:
        x = (x ^ (p + MIX[0] + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * MIX[1]) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * MIX[2]) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def generator_for(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(batch_seed(*parts))
    return g


class StepBatches(Dataset):
    """Item k = micro batch k of this process (k = step * accumulation + j), collated."""

    def __init__(
        self,
        data: Sized,
        collate: Callable[[dict, torch.Generator], dict],
        *,
        seed: int,
        micro_batch: int,
        accumulation: int,
        rank: int,
        world: int,
    ):
        self.data, self.collate = data, collate
        self.seed, self.micro, self.accum = seed, micro_batch, accumulation
        self.rank, self.world = rank, world
        self.global_batch = micro_batch * accumulation * world
        self.steps_per_epoch = len(data) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training data has {len(data)} examples, fewer than one global batch "
                f"({self.global_batch} = micro {micro_batch} x accumulation {accumulation} x "
                f"{world} processes); add data or lower train.micro_batch_size"
            )
        self._order: tuple[int, torch.Tensor] | None = None

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            perm = torch.randperm(len(self.data), generator=generator_for(self.seed, epoch, 1))
            self._order = (epoch, perm)
        return self._order[1]

    def indices(self, k: int) -> list[int]:
        step, j = divmod(k, self.accum)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = step_in_epoch * self.global_batch + (j * self.world + self.rank) * self.micro
        return self.order(epoch)[start : start + self.micro].tolist()

    def __len__(self) -> int:
        return 1 << 62  # endless: the loop stops on its own limits

    def __getitem__(self, k: int) -> dict:
        step, j = divmod(k, self.accum)
        examples = self.data[self.indices(k)]
        return self.collate(examples, generator_for(self.seed, step, j, self.rank, 2))


class _From(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        k = self.start
        while True:
            yield k
            k += 1


def micro_batches(
    batches: StepBatches, start_batch: int, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[dict]:
    """This process's micro batches from global batch `start_batch` on, endlessly."""
    loader = DataLoader(
        batches,
        batch_size=None,
        sampler=_From(start_batch * batches.accum),
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        generator=generator_for(batches.seed, 6),
    )
    return iter(loader)


def stack_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Rows of a stream -> columns (a module-level function: DataLoader workers pickle it)."""
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


class StreamBatches:
    """Micro batches from this process's stream (an endless IterableDataset with state, e.g.
    `data.streaming.BlockStream`); `state_dict()` is the exact position."""

    def __init__(
        self, stream: Any, collate: Callable, *, seed: int, micro_batch: int, rank: int,
        num_workers: int = 0, snapshot_every: int = 1, pin_memory: bool = False,
    ):  # fmt: skip
        from torchdata.stateful_dataloader import StatefulDataLoader

        if not callable(getattr(stream, "state_dict", None)):
            from pipeline.engine.launch import SetupError

            raise SetupError(
                f"the training stream ({type(stream).__name__}) has no state_dict(): it cannot be "
                "resumed, so it cannot be read by DataLoader workers or checkpointed; "
                "use data.num_workers=0 and a resumable stream"
            )
        self.collate, self.seed, self.rank = collate, seed, rank
        self.count = 0
        # workers send their stream state with a batch every `snapshot_every` batches; a
        # resume replays at most that many (the engine aligns it with the checkpoints)
        self.loader = StatefulDataLoader(
            stream, batch_size=micro_batch, collate_fn=stack_rows, num_workers=num_workers,
            prefetch_factor=4 if num_workers else None, pin_memory=pin_memory,
            snapshot_every_n_steps=snapshot_every, generator=generator_for(seed, 7),
        )  # fmt: skip
        self._it: Iterator | None = None

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.count = state["count"]
        self._it = None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.loader)
        rows = next(self._it)
        batch = self.collate(rows, generator_for(self.seed, self.count, 0, self.rank, 3))
        self.count += 1
        return batch


def eval_batches(data: Any, collate: Callable, micro_batch: int, rank: int, world: int, seed: int):
    """This process's share of the held-out set, with fixed masks so evaluations compare.

    Every process gets the same number of batches (sharded strategies such as ZeRO-3 need
    every process in every forward); the last batches wrap around to the start if needed."""
    n = len(data)
    per_process = max(1, -(-n // (world * micro_batch)))
    for i in range(per_process):
        start = (i * world + rank) * micro_batch
        idx = [(start + t) % n for t in range(micro_batch)]
        yield collate(data[idx], generator_for(seed, i, rank, 4))
