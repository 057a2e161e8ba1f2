"""kill -9 anywhere: in the middle of writing a checkpoint and between checkpoints. Resume takes
the newest complete checkpoint, rotation (keep 1) never removed it before the new one was
complete, the partial folder is ignored and then cleaned up, and the steps replayed after a
resume give exactly the losses they gave the first time."""

from __future__ import annotations

import signal

from pipeline.engine import checkpoint
from tests.conftest import metrics, run_cli
from tests.faults.conftest import train_args

ARGS = ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=1"]


def test_kill_mid_checkpoint_then_between_checkpoints(tmp_path):
    out = tmp_path / "run"
    args = train_args(out, *ARGS, "train.export=false")
    ckpts = out / "checkpoints"

    # 1. SIGKILL while checkpoint 4 is half written (files there, no manifest)
    first = run_cli(args, check=False, PIPELINE_FAULT="mid_checkpoint@4")
    assert first.returncode == -signal.SIGKILL
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step-00000004", "step-00000002"]
    assert (ckpts / ".tmp-step-00000004/model.safetensors").is_file()
    assert checkpoint.verify(ckpts / "step-00000002") is None  # keep=1, yet it survived
    assert checkpoint.latest_valid(out).name == "step-00000002"

    # 2. resume from 2; SIGKILL right after step 5 (checkpoint 4 done, 6 not yet)
    second = run_cli(args, check=False, PIPELINE_FAULT="after_step@5")
    assert second.returncode == -signal.SIGKILL
    assert f"resumed from {ckpts}/step-00000002 at step 2" in second.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004"]  # debris removed

    # 3. resume from 4 and finish
    third = run_cli(args)
    assert f"resumed from {ckpts}/step-00000004 at step 4" in third.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000006"]
    assert checkpoint.verify(ckpts / "step-00000006") is None

    rows = metrics(out)
    # redone: 3-4 (killed before checkpoint 4 was complete) and 5 (killed before it was logged)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 3, 4, 5, 6]
    by_try = {}
    for r in rows:
        by_try.setdefault(r["step"], []).append(r["loss"])
    assert all(len(set(losses)) == 1 for losses in by_try.values()), by_try  # bitwise replay
