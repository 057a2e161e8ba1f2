"""Real training through slurm/train-cpu.sbatch on the local two-node cluster: a tiny masked-LM
run on two nodes (world size 2, gloo) that finishes and exports, and the same run preempted
with USR1, requeued and resumed to the same losses. Needs PIPELINE_SLURM=1.

Knobs for CI (environment): PIPELINE_SLURM_TRAIN_CONFIG (default configs/mlm/tiny.yaml),
PIPELINE_SLURM_TRAIN_STEPS (default 12).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = os.environ.get("PIPELINE_SLURM_TRAIN_CONFIG", "configs/mlm/tiny.yaml")
STEPS = int(os.environ.get("PIPELINE_SLURM_TRAIN_STEPS", "12"))
PREEMPT_AFTER = max(2, STEPS // 4)  # send USR1 once this step is logged
# every step logged, so a repeated or lost step shows; no evaluation or checkpoint in between
OVERRIDES = (
    f"train.max_steps={STEPS} train.log_every=1 train.eval_every=0 train.checkpoint_every={10 * STEPS} "
    "train.seed=7 train.micro_batch_size=8 data.block_size=32 tokenizer.vocab_size=1000 "
    "log.progress_bar=false log.plots=false log.trackers=[]"
)


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path} does not exist)"


def _metrics(run_dir: Path, split: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == split]


@pytest.fixture(scope="module")
def runs(slurm, slurm_tmp):
    """Submitted together (they run one after the other on the two 1-CPU nodes): an
    uninterrupted two-node run and the same run that the preemption test interrupts."""
    jobs = {}
    for name in ("straight", "preempted"):
        run_dir = slurm_tmp / f"train-{name}"
        log = slurm_tmp / f"train-{name}.log"
        env = {
            "CONFIG": CONFIG,
            "OVERRIDES": OVERRIDES,
            "OUTPUT_DIR": str(run_dir),
            "PROCS_PER_NODE": "1",
        }
        if name == "preempted":  # hold after this step until USR1 arrives, however fast training is
            env["PIPELINE_FAULT"] = f"hold@{PREEMPT_AFTER}"
        job = slurm.submit("train-cpu.sbatch", "-N2", "--time=10", log=log, env=env)
        jobs[name] = (job, run_dir, log)
    return jobs


def test_two_node_cpu_training_finishes_and_exports(slurm, runs) -> None:
    job, run_dir, log = runs["straight"]
    info = slurm.wait(job, log, timeout=300)
    text = _log(log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", text
    run_info = json.loads((run_dir / "run_info.json").read_text())
    assert run_info["num_processes"] == 2, run_info  # world size 2 across node1 and node2
    assert run_info["distributed_type"] == "MULTI_CPU", run_info
    steps = [r["step"] for r in _metrics(run_dir, "train")]
    assert steps == list(range(1, STEPS + 1)), steps

    # the export loads in stock transformers, without this project
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        "path = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForMaskedLM.from_pretrained(path).eval()\n"
        "ids = tok('In the beginning God created the heaven and the earth.', return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    logits = model(**ids).logits\n"
        "assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()\n"
        "print('EXPORT OK', tuple(logits.shape))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run_dir / "export")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and "EXPORT OK" in proc.stdout, proc.stdout + proc.stderr


def test_preempted_run_requeues_resumes_and_matches(slurm, runs) -> None:
    """USR1 to the batch shell (what --signal=B:USR1@N delivers) in the middle of training: all
    ranks checkpoint and exit 75, the job requeues itself (SLURM_RESTART_COUNT=1), resumes from
    the checkpoint and ends with the same losses as the uninterrupted run, step by step."""
    job, run_dir, log = runs["preempted"]
    sent: list[int] = []

    def preempt_once(info: dict[str, str]) -> None:
        if sent or info.get("JobState") != "RUNNING":
            return
        logged = _metrics(run_dir, "train")
        if logged and logged[-1]["step"] >= PREEMPT_AFTER:
            # exactly the delivery of --signal=B:USR1@N: to the batch shell only
            subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], check=True)
            sent.append(logged[-1]["step"])

    info = slurm.wait(job, log, timeout=420, restarts=1, tick=preempt_once)
    text = _log(log)
    assert sent, (
        f"training finished before it could be preempted; raise PIPELINE_SLURM_TRAIN_STEPS\n{text}"
    )
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text
    assert "batch shell got SIGUSR1" in text and f"requeueing job {job}" in text, text
    assert f"job {job} restart 1 on" in text, text  # the requeued run, appended to the same log

    preempted = _metrics(run_dir, "train")
    steps = [r["step"] for r in preempted]
    assert steps == list(range(1, STEPS + 1)), f"steps repeated or lost: {steps}"
    stopped = re.search(r"stopped by SIGUSR1 at step (\d+)", text)
    assert stopped and int(stopped.group(1)) < STEPS, text  # it really stopped in the middle

    straight_job, straight_dir, straight_log = runs["straight"]
    slurm.wait(straight_job, straight_log, timeout=300)
    straight = _metrics(straight_dir, "train")
    assert [r["loss"] for r in preempted] == [r["loss"] for r in straight]
    assert _metrics(run_dir, "eval")[-1]["loss"] == _metrics(straight_dir, "eval")[-1]["loss"]
