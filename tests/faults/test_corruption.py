"""A truncated or bit-flipped checkpoint file fails its hash check with a warning naming the
file; resume falls back to the previous checkpoint; `train.resume=required` without a valid
checkpoint is an error, never a silent start from step 0."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipeline.engine import checkpoint
from tests.conftest import metrics
from tests.faults.conftest import run_main, train_args


def flip_bit(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 7)


def fake_checkpoint(root: Path, step: int) -> Path:
    folder = root / "checkpoints" / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "optimizer.bin").write_bytes(os.urandom(2048))
    checkpoint.write_manifest(folder)
    return folder


@pytest.mark.parametrize(
    "damage,problem",
    [
        (truncate, "has 4089 bytes, manifest says 4096 (truncated?)"),
        (flip_bit, "fails its SHA-256 check (corrupted)"),
        (Path.unlink, "is missing"),
    ],
)
def test_damaged_file_named_and_previous_checkpoint_used(caplog, tmp_path, damage, problem):
    older, newer = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    damage(newer / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        assert checkpoint.latest_valid(tmp_path) == older
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping checkpoint: {newer / 'model.safetensors'} {problem}"
    ]


def test_incomplete_and_partial_folders_are_ignored(caplog, tmp_path):
    older = fake_checkpoint(tmp_path, 2)
    newer = fake_checkpoint(tmp_path, 4)
    (newer / checkpoint.MANIFEST).unlink()  # killed before the manifest was written
    partial = tmp_path / "checkpoints" / ".tmp-step-00000006"  # killed while writing
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING):
        assert checkpoint.latest_valid(tmp_path) == older
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping checkpoint: {newer} has no manifest.json (incomplete)"
    ]


def test_resume_falls_back_past_a_corrupted_checkpoint(capsys, caplog, run_copy, trained_run):
    """optimizer.bin of step 4 bit-flipped: resume from step 2, replay steps 3-4 exactly (the
    same losses as first time), and replace the bad step-4 folder by a good one."""
    bad = run_copy / "checkpoints/step-00000004/optimizer.bin"
    flip_bit(bad)
    first = {r["step"]: r["loss"] for r in metrics(run_copy)}
    caplog.set_level(logging.INFO)
    code, _ = run_main(
        capsys, train_args(run_copy, "train.max_steps=5", "train.checkpoint_every=2")
    )
    assert code == 0
    messages = [r.getMessage() for r in caplog.records]
    assert f"skipping checkpoint: {bad} fails its SHA-256 check (corrupted)" in messages
    assert f"resumed from {run_copy}/checkpoints/step-00000002 at step 2" in messages
    rows = metrics(run_copy)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 3, 4, 5]
    assert {r["step"]: r["loss"] for r in rows[4:6]} == {3: first[3], 4: first[4]}
    ckpts = run_copy / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004", "step-00000005"]
    assert checkpoint.verify(ckpts / "step-00000004") is None
    again = load_file(str(ckpts / "step-00000004/model.safetensors"))
    before = load_file(str(trained_run / "checkpoints/step-00000004/model.safetensors"))
    assert all((again[k] == before[k]).all() for k in before)


def test_resume_required_without_a_valid_checkpoint(capsys, caplog, run_copy):
    """Both checkpoints damaged: an error naming the problem, nothing trained, nothing deleted."""
    truncate(run_copy / "checkpoints/step-00000004/model.safetensors")
    flip_bit(run_copy / "checkpoints/step-00000002/rank-0.pt")
    lines_before = (run_copy / "metrics.jsonl").read_text()
    code, line = run_main(capsys, train_args(run_copy, "train.resume=required"))
    assert code == 2
    assert line == (
        f"error: train.resume=required but {run_copy}/checkpoints has no valid checkpoint"
    )
    warned = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(warned) == 2
    assert "step-00000004/model.safetensors has" in warned[0]
    assert "step-00000002/rank-0.pt fails its SHA-256" in warned[1]
    assert (run_copy / "metrics.jsonl").read_text() == lines_before
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]
