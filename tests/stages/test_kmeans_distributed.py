"""2 processes (torchrun, gloo), each holding half the rows, give the centroids of 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.stages.runner import run_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
def test_two_processes_give_the_same_centroids_as_one(tmp_path, stage_cfg):
    overrides = ["stage.n_init=3", "log.plots=false"]
    one = run_stage(stage_cfg("configs/stages/kmeans.yaml", *overrides, name="one"))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pipeline", "stage", "configs/stages/kmeans.yaml",
        *overrides, "log.progress_bar=false", "train.device=cpu",
        "--output-dir", str(tmp_path / "two"),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["inertia"] == pytest.approx(one["inertia"], rel=1e-6)
    c1 = np.load(tmp_path / "one" / "outputs" / "centroids.npy")
    c2 = np.load(tmp_path / "two" / "outputs" / "centroids.npy")
    np.testing.assert_allclose(c2, c1, atol=1e-4)
    a1 = np.load(tmp_path / "one" / "outputs" / "assignments.npy")
    a2 = np.load(tmp_path / "two" / "outputs" / "assignments.npy")
    assert len(a2) == 1797 and (a1 == a2).all()
