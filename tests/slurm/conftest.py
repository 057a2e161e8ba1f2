"""Fixtures for the tests that run the sbatch templates on a real local SLURM cluster.

The cluster is started outside pytest (it needs root and installs packages):

    scripts/slurm_cluster.sh up --nodes 2      # two emulated nodes, node1 and node2
    PIPELINE_SLURM=1 pytest tests/slurm

Without PIPELINE_SLURM=1 the cluster tests are skipped, with that reason. With PIPELINE_SLURM=1 a
missing or broken cluster is an error, never a skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBES = Path(__file__).resolve().parent / "probes"
NODES = ("node1", "node2")
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
SKIP_REASON = (
    "SLURM cluster tests are off: start the local cluster with "
    "`scripts/slurm_cluster.sh up --nodes 2` (root) and set PIPELINE_SLURM=1"
)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Slurm:
    """Submit templates to the local cluster and wait for them."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PIPELINE_ROOT=str(REPO),
            PYTHON=sys.executable,  # the interpreter running the tests, venv or not
            VENV="",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        for key in ("PIPELINE_CMD", "PIPELINE_DRY_RUN", "CONFIG", "OVERRIDES", "OUTPUT_DIR"):
            env.pop(key, None)
        return env

    def submit(
        self,
        template: str,
        *sbatch_args: str,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> int:
        """sbatch slurm/TEMPLATE with extra sbatch options and environment; returns the job id."""
        full_env = self.base_env()
        full_env.update(env or {})
        cmd = ["sbatch", "--parsable", f"--output={log}", *sbatch_args, f"slurm/{template}"]
        proc = _run(cmd, cwd=REPO, env=full_env, timeout=30)
        if proc.returncode != 0:
            pytest.fail(f"{shlex.join(cmd)} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
        job_id = int(proc.stdout.strip().split(";")[0])
        self.submitted.append(job_id)
        return job_id

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job` as a dict (accounting is off: this is the only record)."""
        proc = _run(["scontrol", "-o", "show", "job", str(job_id)], timeout=30)
        fields: dict[str, str] = {}
        for token in proc.stdout.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        return fields

    def wait(
        self,
        job_id: int | str,
        log: Path,
        timeout: float = 120,
        restarts: int = 0,
        tick: Callable[[dict[str, str]], None] | None = None,
    ) -> dict[str, str]:
        """Wait until the job is finished (after at least `restarts` requeues)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if tick is not None:
                tick(info)
            state = info.get("JobState", "")
            if state in FINAL_STATES and int(info.get("Restarts", "0")) >= restarts:
                return info
            time.sleep(0.5)
        _run(["scancel", str(job_id)])
        pytest.fail(
            f"job {job_id} not finished after {timeout:.0f} s (state {info.get('JobState')},"
            f" restarts {info.get('Restarts')}); its log:\n{read(log)}",
            pytrace=False,
        )

    def cancel_leftovers(self) -> None:
        for job_id in self.submitted:
            if self.job(job_id).get("JobState") not in FINAL_STATES:
                _run(["scancel", str(job_id)])


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"


def _cluster_problem() -> str | None:
    """None when node1 and node2 are up and usable, else what is wrong."""
    for tool in ("sbatch", "sinfo", "scontrol", "srun"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    try:
        proc = _run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=20)
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out (slurmctld not answering)"
    if proc.returncode != 0:
        return f"`sinfo` failed: {proc.stderr.strip()}"
    states = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    missing = [n for n in NODES if n not in states]
    if missing:
        return f"nodes {missing} not in the cluster (sinfo: {states}); the tests need two nodes"
    bad = {
        n: s
        for n, s in states.items()
        if n in NODES and s.rstrip("*~#") not in ("idle", "mixed", "allocated", "completing")
    }
    if bad:
        return f"nodes not usable: {bad}"
    return None


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    """The running local cluster (node1, node2). Skips (clear reason) unless PIPELINE_SLURM=1;
    with PIPELINE_SLURM=1 a cluster that is not up fails the tests."""
    if os.environ.get("PIPELINE_SLURM") != "1":
        pytest.skip(SKIP_REASON)
    problem = _cluster_problem()
    if problem is not None:
        pytest.fail(
            f"PIPELINE_SLURM=1 but the local SLURM cluster is not ready: {problem}.\n"
            "Start it with `scripts/slurm_cluster.sh up --nodes 2`; logs are under "
            f"{os.environ.get('SLURM_CI_ROOT', '/tmp/pipeline-slurm')}/log",
            pytrace=False,
        )
    cluster = Slurm()
    yield cluster
    cluster.cancel_leftovers()


@pytest.fixture(scope="session")
def slurm_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder the SLURM daemons (root, same machine) can write into."""
    path = tmp_path_factory.mktemp("slurm")
    path.chmod(0o777)
    return path
