"""Streamed corpora (larger than memory or disk) as packed blocks, resumable exactly.

    documents (Hub or local, streamed)  -> this process's share (split_dataset_by_node)
      -> this DataLoader worker's share  -> tokenize + pack (datasets map, batched)
      -> seeded shuffle buffer           -> blocks

Each (process, DataLoader worker) pair reads its own share of the stream, split in one call of
`split_dataset_by_node` over processes x workers: by whole shards when their number divides
evenly, else every (processes x workers)-th document (a single local file), so no document is
trained on twice and tokenizing and packing run in the workers either way. (Two nested splits
would be wrong: datasets composes an example split of a split by rank blocks, and left to
itself it stops the workers beyond the shard count.) The position is exact: the stream's own
`state_dict()` (datasets re-runs a half-consumed map batch and skips what was yielded) plus
the shuffle buffer's contents and generator, all in `state_dict()`, which torchdata's
StatefulDataLoader collects from every worker into the checkpoint. `ShardStream` is that
machinery for any row stream; `BlockStream` packs text blocks with it and the energy
objectives' `ExampleStream` (pipeline/ebm/data.py) converts points and images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.data._utils.worker as torch_worker
from transformers import PreTrainedTokenizerBase

from pipeline.data.packing import BlockTemplate, tokenize_and_pack_fn

PACK_BATCH_STREAM = 1000  # documents per tokenize+pack call while streaming


def stream_columns(ds: Any) -> list[str]:
    """A stream's columns. Streamed local files often have no features until read
    (`column_names` is None): the first row says."""
    if ds.column_names:
        return list(ds.column_names)
    first = next(iter(ds.take(1)), None)
    return list(first) if first else []


def packed_documents(
    docs: Any, tokenizer: PreTrainedTokenizerBase, column: str, block_size: int,
    template: BlockTemplate, columns: list[str] | None = None,
) -> Any:  # fmt: skip
    """An IterableDataset of blocks from an IterableDataset of documents (every document
    column, `columns` or read off the stream, is dropped: blocks are all that is left)."""
    return docs.map(
        tokenize_and_pack_fn(tokenizer, column, block_size, template),
        batched=True,
        batch_size=PACK_BATCH_STREAM,
        remove_columns=stream_columns(docs) if columns is None else columns,
    )


@contextlib.contextmanager
def _outside_worker() -> Iterator[None]:
    """Hide the DataLoader worker from datasets while an iterator starts: it decides on its first
    step whether to split the stream by worker, and this share is already the worker's own."""
    saved = torch_worker._worker_info
    torch_worker._worker_info = None
    try:
        yield
    finally:
        torch_worker._worker_info = saved


class ShardStream(torch.utils.data.IterableDataset):
    """Endless examples of this process's (and DataLoader worker's) share of a row stream
    (`rows`: the whole stream; the share is taken here), epoch after epoch, through an optional
    seeded shuffle buffer; each example is `{key: tensor}`. Its own iterator: the stateful
    loader saves `state_dict()` of the object iterated. Subclasses say what a share becomes
    (`_prepare`, e.g. tokenized and packed) and how a row becomes a tensor (`_example`): text
    blocks (BlockStream) and energy-model examples (pipeline/ebm/data.py) share the sharding,
    the shuffle buffer and the exact position."""

    key = "x"

    def __init__(
        self, rows: Any, *, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> None:  # fmt: skip
        self.docs = rows
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self._state: dict[str, Any] | None = None  # loaded, applied at the next __iter__
        self._source: Any = None
        self._it: Any = None

    # ---- what subclasses define
    def _prepare(self, share: Any) -> Any:
        """The IterableDataset iterated for a share of the rows (its state is the position)."""
        return share

    def _example(self, row: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def _empty_message(self, worker: int, workers: int) -> str:
        return (
            f"data: the training stream of process {self.rank} (DataLoader worker {worker} of "
            f"{workers}) holds no example: fewer rows are left than readers (processes x "
            "data.num_workers) after data.eval_documents are held out"
        )

    # ---- the worker's share
    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _open(self, epoch: int, source_state: dict | None) -> None:
        from datasets.distributed import split_dataset_by_node

        worker, workers = self._worker()
        # share r + N * w of N x W: the union over this process's workers is exactly its share
        docs = self.docs
        if self.world_size * workers > 1:
            docs = split_dataset_by_node(
                docs, rank=self.rank + self.world_size * worker,
                world_size=self.world_size * workers,
            )  # fmt: skip
        docs.set_epoch(epoch)  # a shuffled Hub stream reshuffles its shards per epoch
        self._source = self._prepare(docs)
        if source_state is not None:
            self._source.load_state_dict(source_state)
        self._it = iter(self._source)
        self._first = workers > 1  # start the iterator outside the worker (see _next_block)
        self.epoch = epoch

    def __iter__(self) -> ShardStream:
        state, self._state = self._state, None
        self._start(state)
        return self

    def _start(self, state: dict[str, Any] | None) -> None:
        worker, _ = self._worker()
        self.generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.rank * 10_007 + worker) & 0x7FFFFFFF
        )
        self.buffer: list[torch.Tensor] = []
        if not state:
            self._open(0, None)
            return
        self._open(state["epoch"], state["source"])
        self.generator.set_state(state["generator"])
        self.buffer = list(state["buffer"])

    def _next_block(self) -> torch.Tensor:
        empty_passes = 0
        while True:
            try:
                if self._first:
                    self._first = False
                    with _outside_worker():
                        row = next(self._it)
                else:
                    row = next(self._it)
                return self._example(row)
            except StopIteration:
                # a share with no example would loop over its empty epochs for ever
                empty_passes += 1
                if empty_passes > 1:
                    raise ValueError(self._empty_message(*self._worker())) from None
                self._open(self.epoch + 1, None)  # next epoch of the stream

    def __next__(self) -> dict[str, torch.Tensor]:
        if not self.shuffle_buffer:
            return {self.key: self._next_block()}
        while len(self.buffer) < self.shuffle_buffer:  # fill once, then swap one in one out
            self.buffer.append(self._next_block())
        i = int(torch.randint(len(self.buffer), (1,), generator=self.generator))
        out, self.buffer[i] = self.buffer[i], self._next_block()
        return {self.key: out}

    # ---- exact position
    def _empty_buffer(self) -> torch.Tensor:
        return torch.zeros(0)

    def state_dict(self) -> dict[str, Any]:
        if self._source is None:  # not iterated yet: the state it would start from
            return dict(self._state or {})
        buffer = torch.stack(self.buffer) if self.buffer else self._empty_buffer()
        return {
            "epoch": self.epoch,
            "source": self._source.state_dict(),
            "generator": self.generator.get_state(),
            "buffer": buffer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: now when already iterating (the loader may restore the
        iterator it just created), else at the next `__iter__`."""
        if self._it is None:
            self._state = state
        else:
            self._start(state)


class BlockStream(ShardStream):
    """Endless packed blocks of this process's (and DataLoader worker's) share of a document
    stream: each share is tokenized and packed (`packed_documents`) as it is read."""

    key = "input_ids"

    def __init__(
        self,
        docs: Any,
        tokenizer: PreTrainedTokenizerBase,
        column: str,
        block_size: int,
        template: BlockTemplate,
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            docs, shuffle_buffer=shuffle_buffer, seed=seed, rank=rank, world_size=world_size
        )
        self.tokenizer, self.column = tokenizer, column
        self.block_size, self.template = block_size, template
        self.columns = stream_columns(docs)  # here, in the training process (see _outside_worker)

    def _prepare(self, share: Any) -> Any:
        return packed_documents(
            share, self.tokenizer, self.column, self.block_size, self.template, self.columns
        )

    def _example(self, row: dict[str, Any]) -> torch.Tensor:
        return torch.as_tensor(row["input_ids"], dtype=torch.int32)

    def _empty_buffer(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.int32)

    def _empty_message(self, worker: int, workers: int) -> str:
        return (
            f"data: the training stream of process {self.rank} (DataLoader worker "
            f"{worker} of {workers}) holds no block of {self.block_size} tokens: "
            "fewer documents are left than readers (processes x data.num_workers) "
            "after data.eval_documents are held out, or too few tokens; lower "
            "data.eval_documents, data.num_workers or data.block_size"
        )


def materialize(stream: Any, limit: int) -> Any:
    """The first `limit` blocks of a stream as a map-style dataset (held-out evaluation)."""
    import datasets

    rows = [row["input_ids"] for _, row in zip(range(limit), stream)]
    return datasets.Dataset.from_dict({"input_ids": rows}).with_format("torch") if rows else None
