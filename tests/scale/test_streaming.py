"""Streaming at scale: local text/JSON files at 2 processes, documents split across processes
and DataLoader workers without repeats, a seeded shuffle buffer, and an exact position (shuffle
buffer and every worker included) through a checkpoint, kill -9 and resume."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from pipeline.data.packing import BlockTemplate
from pipeline.data.streaming import BlockStream
from pipeline.engine.batches import StreamBatches
from tests.conftest import TINY, metrics, run_cli

START, SEP, END = 1, 2, 3


class DigitTokenizer:
    """`"doc 17"` -> [17 + 10]: with block_size 4 every block is [start, doc, sep, end], so a
    block names the document it came from."""

    def __call__(self, texts, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [[int(t.split()[1]) + 10] for t in texts]}


def doc_stream(tmp_path: Path, n: int = 120) -> datasets.IterableDataset:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}", "other": i}) + "\n" for i in range(n)))
    return datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)


def block_stream(docs, rank: int, world: int, shuffle: int = 0) -> BlockStream:
    return BlockStream(docs, DigitTokenizer(), "text", 4, BlockTemplate(START, SEP, END),
                       shuffle_buffer=shuffle, seed=5, rank=rank, world_size=world)  # fmt: skip


def identity(rows, generator):
    return rows


def batches(stream: BlockStream, workers: int, snapshot_every: int = 1) -> StreamBatches:
    return StreamBatches(stream, identity, seed=5, micro_batch=4, rank=stream.rank,
                         num_workers=workers, snapshot_every=snapshot_every)  # fmt: skip


def doc_ids(batch) -> list[int]:
    return (batch["input_ids"][:, 1] - 10).tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_every_document_once_per_epoch_over_processes_and_workers(tmp_path, workers):
    docs = doc_stream(tmp_path, n=160)  # one file: fewer shards than processes and workers
    seen = []
    for rank in range(2):
        it = batches(block_stream(docs, rank, 2), workers)
        # 80 documents per process, 40 per worker: 10 batches of 4 from each, in turn
        seen += sum((doc_ids(next(it)) for _ in range(20)), [])
    assert sorted(seen) == list(range(160))


def test_shuffle_buffer_is_seeded_and_mixes(tmp_path):
    docs = doc_stream(tmp_path)
    one = [doc_ids(next(batches(block_stream(docs, 0, 1, shuffle=32), 0))) for _ in range(2)]
    assert one[0] == one[1]  # the same seed, the same order
    it = batches(block_stream(docs, 0, 1, shuffle=32), 0)
    first = sum((doc_ids(next(it)) for _ in range(10)), [])
    assert first != sorted(first) and len(set(first)) == 40


@pytest.mark.parametrize("workers, snapshot_every", [(0, 1), (2, 1), (2, 3)])
def test_position_resumes_exactly_with_buffer_and_workers(tmp_path, workers, snapshot_every):
    docs = doc_stream(tmp_path, n=200)
    straight = batches(block_stream(docs, 1, 2, shuffle=16), workers, snapshot_every)
    head = [next(straight) for _ in range(7)]  # 28 of the 100 documents, mid-epoch
    state = straight.state_dict()
    want = [doc_ids(next(straight)) for _ in range(30)]  # across the epoch boundary
    resumed = batches(block_stream(docs, 1, 2, shuffle=16), workers, snapshot_every)
    resumed.load_state_dict(state)
    assert resumed.count == 7 and len(head) == 7
    assert [doc_ids(next(resumed)) for _ in range(30)] == want


def text_corpus(tmp_path: Path, fmt: str) -> Path:
    """~3,000 documents of the embedded corpus as .txt (one per line) or .jsonl."""
    from pipeline.data.embedded import materialize

    rows = [
        json.loads(line) for line in Path(materialize("bible")["train"]).read_text().splitlines()
    ]
    verses = [v for r in rows[:400] for v in r["text"].split(" . ") if len(v) > 20][:3000]
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(verses) + "\n")
    else:
        path.write_text(
            "".join(json.dumps({"text": v, "n": i}) + "\n" for i, v in enumerate(verses))
        )
    return path


STREAM = [*TINY, "data.streaming=true", "train.eval_every=5", "data.eval_documents=200",
          "train.checkpoint_every=5", "data.max_eval_examples=64"]  # fmt: skip


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_local_files_stream_at_two_processes(tmp_path, fmt):
    corpus = text_corpus(tmp_path, fmt)
    out = tmp_path / "run"
    run_cli(["train", "configs/mlm/tiny.yaml", *STREAM, f"data.path={corpus}",
             "train.max_steps=10", "--output-dir", str(out)], launcher="torchrun", nproc=2)  # fmt: skip
    evals = metrics(out, "eval")
    assert [e["step"] for e in evals] == [5, 10] and evals[-1]["loss"] < evals[0]["loss"]


def test_kill_and_resume_at_two_processes_with_shuffle_and_workers_is_exact(tmp_path):
    corpus = text_corpus(tmp_path, "jsonl")
    args = ["train", "configs/mlm/tiny.yaml", *STREAM, f"data.path={corpus}", "train.max_steps=12",
            "data.shuffle_buffer=64", "data.num_workers=2"]  # fmt: skip
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run_cli([*args, "--output-dir", str(straight)], launcher="torchrun", nproc=2)
    killed = run_cli([*args, "--output-dir", str(broken)], launcher="torchrun", nproc=2,
                     check=False, PIPELINE_FAULT="after_step@8")  # fmt: skip
    assert killed.returncode != 0
    run_cli([*args, "--output-dir", str(broken)], launcher="torchrun", nproc=2)
    a = {r["step"]: r["loss"] for r in metrics(straight)}
    b = {r["step"]: r["loss"] for r in metrics(broken)}  # steps 6-8 ran twice: the last wins
    assert sorted(a) == list(range(1, 13)) and a == b


def test_bad_stream_settings_are_refused(tmp_path):
    from pipeline.config import ConfigError, load_config
    from pipeline.train_config import RunConfig

    with pytest.raises(ConfigError, match="data.shuffle_buffer must be >= 0, got -1"):
        load_config(RunConfig, None, ["data.shuffle_buffer=-1"])


def test_a_share_with_no_block_is_an_error_not_an_endless_loop(tmp_path):
    """3 documents over 2 processes x 2 workers: one reader's share is empty (the e2e run that
    held out more documents than its file had looped here for ever)."""
    docs = doc_stream(tmp_path, n=3)
    it = batches(block_stream(docs, 1, 2), 0)
    next(it)  # process 1 holds document 1 alone: it repeats, epoch after epoch
    with pytest.raises(ValueError, match="holds no block of 4 tokens"):
        next(iter(block_stream(docs.skip(3), 0, 1)))
