"""The one atomic checkpoint writer (engine and stages): manifest last, rotation after the new
one is complete, a failed write leaves the previous checkpoints intact."""

from __future__ import annotations

import errno

import pytest

from pipeline.engine import checkpoint
from pipeline.engine.checkpoint import CheckpointError, write_atomic


def writer(text: str):
    def write(tmp):
        (tmp / "state.txt").write_text(text)

    return write


def test_manifest_rotation_and_phases(tmp_path):
    root = checkpoint.checkpoints_dir(tmp_path)
    phases = []
    for step in (1, 2, 3):
        write_atomic(root, step, writer(f"s{step}"), keep=2,
                     on_phase=lambda phase, s: phases.append((phase, s)))  # fmt: skip
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [3, 2]
    assert phases[:3] == [("files", 1), ("before_manifest", 1), ("complete", 1)]
    newest = checkpoint.latest_valid(tmp_path)
    assert newest.name == "step-00000003" and checkpoint.verify(newest) is None
    assert not list(root.glob(".tmp-*"))


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    root = checkpoint.checkpoints_dir(tmp_path)
    write_atomic(root, 1, writer("good"), keep=2)

    def full_disk(tmp):
        (tmp / "half").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device; the previous"):
        write_atomic(root, 2, full_disk, keep=1)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]
    assert checkpoint.verify(root / "step-00000001") is None
    assert not list(root.glob(".tmp-*"))


def test_corruption_is_found_and_the_step_can_be_rewritten(tmp_path):
    root = checkpoint.checkpoints_dir(tmp_path)
    folder = write_atomic(root, 5, writer("v1"), keep=2)
    (folder / "state.txt").write_text("v2")  # same size, other bytes
    assert "fails its SHA-256 check" in checkpoint.verify(folder)
    assert checkpoint.latest_valid(tmp_path) is None
    write_atomic(root, 5, writer("v3"), keep=2)  # replaces the corrupted one
    assert (checkpoint.latest_valid(tmp_path) / "state.txt").read_text() == "v3"


def test_stages_use_the_same_writer(tmp_path):
    from pipeline.stages.base import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, 3, {"step": 3}, keep=1)
    save_checkpoint(tmp_path, 4, {"step": 4}, keep=1)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [4]
    assert load_checkpoint(tmp_path)["step"] == 4
