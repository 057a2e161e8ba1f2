"""SIGTERM / SIGINT: checkpoint at the next step boundary and exit 75 (what SLURM preemption
uses), at 1 and 2 processes; a second Ctrl-C leaves at once and corrupts nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.engine import checkpoint
from tests.conftest import ROOT, _free_port, env
from tests.faults.conftest import train_args

LONG = ["train.max_steps=100000", "train.export=false"]


def launch(args: list[str], nproc: int, log: Path, **extra: str) -> subprocess.Popen:
    if nproc == 1:
        cmd = [sys.executable, "-m", "pipeline", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), "-m", "pipeline", *args]  # fmt: skip
    with open(log, "w") as fh:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env(**extra), stdout=fh, stderr=subprocess.STDOUT
        )


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300, poll=0.2):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} while waiting for {what}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(x)["step"] for x in lines if x.endswith("}")]


def worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of the torchrun worker with RANK=rank."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no worker with RANK={rank} under {launcher_pid}")


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_checkpoints_at_step_boundary_and_exits_75(tmp_path, nproc):
    """At 2 processes only rank 1 is signalled: the all-reduced flag stops both at the same
    step. The checkpoint is the last step done: no step is lost."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(train_args(out, *LONG, "train.checkpoint_every=1000"), nproc, log)
    try:
        wait_for(lambda: len(logged_steps(out)) >= 3, proc, "3 logged steps")
        target = proc.pid if nproc == 1 else worker_of_rank(proc.pid, 1)
        os.kill(target, signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        proc.kill()
    text = log.read_text()
    last = logged_steps(out)[-1]
    assert f"stopped by {'SIGTERM' if nproc == 1 else 'another process'} at step {last}; " in text
    if nproc == 1:
        assert proc.returncode == 75
    else:  # torchrun reports the workers' status: both left with 75
        assert proc.returncode != 0 and text.count("exitcode  : 75") >= 1, text[-3000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"step-{last:08d}"]
    folder = out / "checkpoints" / ckpts[0]
    assert checkpoint.verify(folder) is None
    assert json.loads((folder / "trainer_state.json").read_text())["step"] == last
    assert sorted(p.name for p in folder.glob("rank-*.pt")) == [
        f"rank-{r}.pt" for r in range(nproc)
    ]


def test_second_ctrl_c_exits_at_once_and_corrupts_nothing(tmp_path):
    """First Ctrl-C: a checkpoint starts at the next boundary (stalled half written for 5 s by
    the fault hook); second Ctrl-C during that write: exit 130 at once. Every finished
    checkpoint still verifies, the half-written one is a .tmp-* folder that resume ignores.

    Training holds after step 4 until the first signal (fault point hold), so it stops at step 4
    or 5, before the regular checkpoint 6: the only checkpoint that can be in progress after
    checkpoint 3 is the stop checkpoint, so the second Ctrl-C cannot arrive before the first is
    handled (two signals close together would reach the Python handler once)."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    args = train_args(out, *LONG, "train.checkpoint_every=3")
    proc = launch(args, 1, log, PIPELINE_FAULT="stall_checkpoint@*,hold@4")
    ckpts = out / "checkpoints"
    try:
        wait_for(lambda: (ckpts / "step-00000003").is_dir(), proc, "checkpoint 3")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: any(ckpts.glob(".tmp-step-*")), proc, "the stop checkpoint", poll=0.05)
        started = time.time()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        took = time.time() - started
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert took < 4.0  # did not wait for the stalled write (5 s) to finish
    assert "second interrupt: exiting now without a checkpoint" in log.read_text()
    partial = list(ckpts.glob(".tmp-step-*"))
    assert len(partial) == 1 and not (partial[0] / checkpoint.MANIFEST).exists()
    finished = [p for p in ckpts.iterdir() if p.name.startswith("step-")]
    assert finished and all(checkpoint.verify(p) is None for p in finished)
    assert checkpoint.latest_valid(out) == max(finished)


def test_a_stop_signal_during_a_stuck_step_exits_75_after_the_grace(tmp_path):
    """The batch of step 4 never comes (fault point stall_data: the loader sleeps, deaf to the
    flag), so the step boundary where the stop is acted on is never reached. After
    train.stop_grace_s the process exits 75 anyway (SLURM requeues), keeping checkpoint 2, and
    the resume from it gives the straight run's losses."""
    from tests.conftest import metrics, run_cli

    args = ["train.max_steps=6", "train.checkpoint_every=2", "train.stop_grace_s=3"]
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = launch(train_args(out, *args), 1, log, PIPELINE_FAULT="stall_data@4")
    try:
        wait_for(lambda: len(logged_steps(out)) >= 3, proc, "3 logged steps")
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.time() - started
    finally:
        proc.kill()
    text = log.read_text()
    assert proc.returncode == 75, text[-3000:]
    assert 3.0 <= took < 20.0, took  # the grace, not the stall's 120 s
    assert "did not end within train.stop_grace_s=3 s" in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]

    run_cli(train_args(out, *args))  # the requeued job: resumes from checkpoint 2
    straight = tmp_path / "straight"
    run_cli(train_args(straight, *args))
    a = {r["step"]: r["loss"] for r in metrics(straight)}
    b = {r["step"]: r["loss"] for r in metrics(out)}  # a replayed step's last line wins
    assert sorted(a) == list(range(1, 7)) and a == b
