"""data.streaming=true for the energy objectives: a `datasets` source read as an IterableDataset,
split per process (split_dataset_by_node), converted by the in-memory path's transform, held
out by its first rows, and resumed exactly (stream state, shuffle buffer, replay buffer)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.data.sources import DataError
from pipeline.ebm.data import Columns, load_stream, read_examples
from pipeline.engine.batches import StreamBatches
from tests.conftest import run_cli

N_ROWS = 60


def point_file(tmp_path: Path, n: int = N_ROWS, seed: int = 0) -> Path:
    """A parquet file of distinct 2-D points (columns u, v) and a column that is not a feature."""
    pts = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    path = tmp_path / "points.parquet"
    table = {"u": pts[:, 0], "v": pts[:, 1], "note": [f"row {i}" for i in range(n)]}
    datasets.Dataset.from_dict(table).to_parquet(str(path))
    return path


def data_cfg(path: Path, **over) -> SimpleNamespace:
    """The DataConfig fields load_stream reads."""
    base = dict(path=[str(path)], eval_path=None, name=None, split="train", image_column=None,
                feature_columns=["u", "v"], image_size=None, eval_documents=0,
                max_eval_examples=1024, shuffle_buffer=0)  # fmt: skip
    return SimpleNamespace(**{**base, **over})


def identity(rows, generator):
    return rows


def batches(stream, micro: int = 5) -> StreamBatches:
    return StreamBatches(stream, identity, seed=3, micro_batch=micro, rank=stream.rank)


def rows_of(x: torch.Tensor) -> Counter:
    return Counter(tuple(r) for r in x.tolist())


@pytest.mark.parametrize("world", [1, 2])
def test_a_streamed_epoch_yields_every_row_once(tmp_path, world):
    path = point_file(tmp_path)
    file_rows = read_examples([str(path)], "data.path", Columns(feature_columns=["u", "v"]))
    held, seen = 12, Counter()
    for rank in range(world):
        streamed = load_stream(data_cfg(path, eval_documents=held), 0, rank, world)
        it = batches(streamed.train, micro=4)
        per_process = (N_ROWS - held) // world  # 48 or 24: whole micro batches of 4
        seen += rows_of(torch.cat([next(it)["x"] for _ in range(per_process // 4)]))
        assert rows_of(streamed.eval.x) == rows_of(file_rows[:held])  # the first rows, held out
    # every training row exactly once over the processes, none of the held-out ones
    assert seen == rows_of(file_rows[held:])
    assert max(seen.values()) == 1 and len(seen) == N_ROWS - held


def test_streamed_images_get_the_in_memory_transform(tmp_path):
    """uint8 (H, W, C) arrays, divided by 255 and resized: the stream's examples, in order, are
    the in-memory reader's tensors exactly."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8)
    path = tmp_path / "images.parquet"
    datasets.Dataset.from_dict({"img": list(images), "label": list(range(20))}).to_parquet(
        str(path)
    )
    cols = dict(image_column="img", image_size=[4, 4])
    want = read_examples([str(path)], "data.path", Columns(**cols))
    streamed = load_stream(data_cfg(path, feature_columns=None, **cols), 0, 0, 1)
    it = batches(streamed.train, micro=4)
    got = torch.cat([next(it)["x"] for _ in range(5)])
    assert got.shape == (20, 3, 4, 4) and torch.equal(got, want)
    assert torch.equal(streamed.sample.x, want)  # the bounded sample is the first rows


def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "imgs"
    rng = np.random.default_rng(2)
    for i in range(8):
        (folder / ("cat" if i % 2 else "dog")).mkdir(parents=True, exist_ok=True)
        rgb = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / ("cat" if i % 2 else "dog") / f"{i}.png")
    return folder


def saved_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "saved"
    datasets.Dataset.from_parquet(str(point_file(tmp_path, n=24))).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("kind", ["imagefolder", "save_to_disk", "sklearn:digits"])
def test_every_datasets_form_streams_the_in_memory_examples(tmp_path, kind):
    """An image folder (its only image column found without data.image_column), a saved
    dataset and sklearn:digits: one streamed epoch is the in-memory reader's rows."""
    if kind == "imagefolder":
        path, cols = str(image_folder(tmp_path)), {"feature_columns": None}
    elif kind == "save_to_disk":
        path, cols = str(saved_dataset(tmp_path)), {}
    else:
        path, cols = kind, {"feature_columns": None}
    want = read_examples([path], "data.path", Columns(**{"feature_columns": ["u", "v"], **cols}))
    streamed = load_stream(data_cfg(path, **cols), 0, 0, 1)
    n = len(want) - len(want) % 4
    it = batches(streamed.train, micro=4)
    got = torch.cat([next(it)["x"] for _ in range(n // 4)])
    assert rows_of(got.flatten(1)) == rows_of(want[:n].flatten(1))


def test_dataloader_workers_split_a_process_share(tmp_path):
    """data.num_workers=2 at 2 processes: 4 readers, every row once."""
    path = point_file(tmp_path, n=48)
    seen = Counter()
    for rank in (0, 1):
        stream = load_stream(data_cfg(path), 0, rank, 2).train
        it = StreamBatches(stream, identity, seed=3, micro_batch=4, rank=rank, num_workers=2)
        seen += rows_of(torch.cat([next(it)["x"] for _ in range(6)]))
    file_rows = read_examples([str(path)], "data.path", Columns(feature_columns=["u", "v"]))
    assert seen == rows_of(file_rows)


def test_stream_position_resumes_exactly_with_a_shuffle_buffer(tmp_path):
    path = point_file(tmp_path)
    cfg = data_cfg(path, shuffle_buffer=8, eval_documents=6)
    for rank in (0, 1):
        straight = batches(load_stream(cfg, 0, rank, 2).train)
        head = torch.cat([next(straight)["x"] for _ in range(3)])  # mid-epoch, buffer full
        state = straight.state_dict()
        want = [next(straight)["x"] for _ in range(12)]  # across epoch boundaries
        resumed = batches(load_stream(cfg, 0, rank, 2).train)
        resumed.load_state_dict(state)
        assert all(torch.equal(next(resumed)["x"], w) for w in want), rank
        # the buffer shuffled: not the file order of this process's share
        assert not torch.equal(head, read_examples([str(path)], "data.path",
                               Columns(feature_columns=["u", "v"]))[6 + rank :: 2][:15])  # fmt: skip


def test_bad_streamed_sources_are_one_line_errors(tmp_path):
    path = point_file(tmp_path)
    with pytest.raises(DataError, match=r"no column 'z'; columns: u, v, note"):
        load_stream(data_cfg(path, feature_columns=["u", "z"]), 0, 0, 1)
    with pytest.raises(DataError, match=r"column 'note' is not numeric"):
        load_stream(data_cfg(path, feature_columns=["u", "note"]), 0, 0, 1)
    with pytest.raises(DataError, match=r"toy:rings is read into memory: set data.streaming=false"):
        load_stream(data_cfg("toy:rings"), 0, 0, 1)
    with pytest.raises(DataError, match=r"no rows to train on after the first"):
        load_stream(data_cfg(path, eval_documents=N_ROWS), 0, 0, 1)


def test_missing_image_column_stops_a_streamed_run_before_training(tmp_path):
    path = point_file(tmp_path)
    out = tmp_path / "run"
    proc = run_cli(["train", "configs/ebm/cd-2d.yaml", f"data.path={path}", "data.streaming=true",
                    "data.feature_columns=null", "data.image_column=image", "--output-dir",
                    str(out)], check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: {path}: no column 'image'; columns: u, v, note"), lines[-3:]
    assert not (out / "checkpoints").exists()


# --------------------------------------------------------------------------- whole runs

ARGS = [
    "train", "configs/ebm/cd-2d.yaml", "data.streaming=true", "data.feature_columns=[u, v]",
    "data.shuffle_buffer=32", "data.eval_documents=64", "model.hidden=[16, 16]",
    "objective.buffer_size=128", "objective.steps=3", "objective.grid_size=32",
    "train.micro_batch_size=32", "train.log_every=1", "train.eval_every=0",
    "train.checkpoint_every=4", "optim.schedule=constant", "optim.warmup_steps=0",
    "log.progress_bar=false", "log.plots=false", "log.trackers=[]", "train.export=false",
]  # fmt: skip


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def final_checkpoint(run_dir: Path, step: int) -> Path:
    ckpt = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    assert ckpt.name == f"step-{step:08d}"
    return ckpt


def replay_buffer(ckpt: Path, rank: int) -> torch.Tensor:
    return torch.load(ckpt / f"rank-{rank}.pt", weights_only=True)["objective"]["buffer"]["data"]


def straight_and_resumed(tmp_path: Path, args: list[str], steps: int, **launch) -> tuple:
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli([*args, f"train.max_steps={steps}", "--output-dir", str(straight)], **launch)
    run_cli([*args, f"train.max_steps={steps // 2}", "--output-dir", str(split)], **launch)
    run_cli([*args, f"train.max_steps={steps}", "train.resume=required", "--output-dir",
             str(split)], **launch)  # fmt: skip
    return straight, split


def check_bitwise(straight: Path, split: Path, steps: int, world: int) -> None:
    a, b = losses(straight), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1)) and a == b
    ck_a, ck_b = final_checkpoint(straight, steps), final_checkpoint(split, steps)
    wa, wb = load_file(str(ck_a / "model.safetensors")), load_file(str(ck_b / "model.safetensors"))
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    buffers = [replay_buffer(ck_a, r) for r in range(world)]
    for r in range(world):
        assert buffers[r].shape == (128, 2) and torch.equal(buffers[r], replay_buffer(ck_b, r)), r
    if world == 2:
        assert not torch.equal(buffers[0], buffers[1])  # each process keeps its own chains
    assert "stream" in torch.load(ck_b / "rank-0.pt", weights_only=True)  # the position is saved


def test_streamed_cd_resume_is_bitwise_exact(tmp_path):
    path = point_file(tmp_path, n=400)
    straight, split = straight_and_resumed(tmp_path, [*ARGS, f"data.path={path}"], 8)
    check_bitwise(straight, split, 8, world=1)
    log = (split / "metrics.jsonl").read_text()
    assert '"split": "eval"' in log  # evaluated on the held-out first rows


@pytest.mark.parametrize("recipe", ["nce-2d", "dsm-2d"])
def test_nce_and_dsm_train_on_a_stream(tmp_path, recipe):
    path = point_file(tmp_path, n=400)
    out = tmp_path / "run"
    run_cli(["train", f"configs/ebm/{recipe}.yaml", f"data.path={path}", "data.streaming=true",
             "data.feature_columns=[u, v]", "data.eval_documents=64", "model.hidden=[16, 16]",
             "objective.grid_size=32", "train.micro_batch_size=32", "train.max_steps=3",
             "train.log_every=1", "train.eval_every=0", "log.progress_bar=false",
             "log.plots=false", "log.trackers=[]", "train.export=false", "--output-dir",
             str(out)])  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals and np.isfinite(evals[-1]["nll"])  # the 2-D grid from the bounded sample


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_streamed_cd_resume_is_bitwise_exact(tmp_path):
    path = point_file(tmp_path, n=600)
    two = {"launcher": "torchrun", "nproc": 2}
    straight, split = straight_and_resumed(tmp_path, [*ARGS, f"data.path={path}"], 8, **two)
    check_bitwise(straight, split, 8, world=2)
