"""The sbatch templates and slurm/common.sh without a cluster: syntax, headers and the shell logic."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
COMMON = SLURM_DIR / "common.sh"
TEMPLATES = sorted(p.name for p in SLURM_DIR.glob("*.sbatch"))
MULTI_NODE = [
    "train-multinode.sbatch",
    "train-torchrun.sbatch",
    "train-deepspeed.sbatch",
    "train-cpu.sbatch",
]
BASH = shutil.which("bash") or "/bin/bash"


def test_all_templates_exist() -> None:
    assert set(TEMPLATES) >= {"train.sbatch", *MULTI_NODE}


@pytest.mark.parametrize(
    "path",
    [*(SLURM_DIR / t for t in TEMPLATES), COMMON, REPO / "scripts" / "slurm_cluster.sh"],
    ids=lambda p: p.name,
)
def test_bash_syntax(path: Path) -> None:
    proc = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_header_and_shared_logic(template: str) -> None:
    text = (SLURM_DIR / template).read_text()
    directives = re.findall(r"^#SBATCH\s+(\S+)", text, flags=re.M)
    assert any(d.startswith("--signal=B:USR1@") for d in directives), directives
    assert "--requeue" in directives
    assert "--open-mode=append" in directives
    assert any(d.startswith("--time=") for d in directives)
    assert any(d.startswith("--nodes=") for d in directives)
    assert 'source "${PIPELINE_ROOT:-$SLURM_SUBMIT_DIR}/slurm/common.sh"' in text
    assert "pipeline_init" in text and "pipeline_run_per_node" in text
    # signal forwarding and requeue live in common.sh only
    for logic in ("trap ", "scontrol", "kill "):
        assert logic not in text, f"{template} repeats logic from common.sh: {logic!r}"


@pytest.mark.parametrize("template", MULTI_NODE)
def test_machine_rank_is_escaped_for_the_node(template: str) -> None:
    text = (SLURM_DIR / template).read_text()
    # expands on each node inside srun's bash -c, not once in the batch shell
    assert re.search(r"--(machine_rank|node_rank) \\\$SLURM_NODEID", text), template
    assert "$MAIN_ADDR" in text and "$MAIN_PORT" in text and "$SLURM_NNODES" in text


def _bash(
    script: str, env: dict[str, str] | None = None, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full_env.update(env or {})
    if path is not None:
        full_env["PATH"] = path
    return subprocess.run(
        [BASH, "-c", f"source {COMMON} && {script}"],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def _path_without_slurm(tmp_path: Path) -> str:
    """A PATH with the usual tools but no SLURM commands (as in a container)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("date", "hostname", "tr", "head", "sed", "cat", "sleep"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python").symlink_to(sys.executable)
    return str(bin_dir)


def test_requeue_without_scontrol_exits_75(tmp_path: Path) -> None:
    proc = _bash(
        "pipeline_requeue",
        env={"SLURM_JOB_ID": "123", "OUTPUT_DIR": "runs/x"},
        path=_path_without_slurm(tmp_path),
    )
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "scontrol not found" in proc.stdout
    assert "runs/x" in proc.stdout


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("gpu[03-05,07]", "gpu03"),
        ("a1,b2", "a1"),
        ("node7", "node7"),
        ("rack1-[12,14]", "rack1-12"),
    ],
)
def test_main_address_without_scontrol(tmp_path: Path, nodelist: str, first: str) -> None:
    proc = _bash(
        "_pipeline_first_host",
        env={"SLURM_JOB_NODELIST": nodelist},
        path=_path_without_slurm(tmp_path),
    )
    assert proc.stdout == first, proc.stderr


def test_init_builds_the_training_command(tmp_path: Path) -> None:
    env = {
        "PIPELINE_ROOT": str(REPO),
        "VENV": "",
        "PYTHON": sys.executable,
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_JOB_NODELIST": "gpu[03-04]",
        "SLURM_NNODES": "2",
        "CONFIG": "configs/with space.yaml",
        "OVERRIDES": "train.seed=${SLURM_ARRAY_TASK_ID} optim.lr=1e-3",
        "OUTPUT_DIR": "runs/sweep-${SLURM_ARRAY_TASK_ID}",
    }
    show = 'printf "%s\\n" "$TRAIN_ARGS" "$OUTPUT_DIR" "$MAIN_ADDR" "$MAIN_PORT"'
    proc = _bash(f"pipeline_init >/dev/null && {show}", env=env, path=_path_without_slurm(tmp_path))
    assert proc.returncode == 0, proc.stderr
    train_args, output_dir, main_addr, main_port = proc.stdout.splitlines()
    assert train_args == (
        "-m pipeline train configs/with\\ space.yaml train.seed=2 optim.lr=1e-3 --output-dir runs/sweep-2"
    )
    assert output_dir == "runs/sweep-2"
    assert main_addr == "gpu03"
    assert main_port == str(10000 + 4242 % 20000)


def test_init_default_output_dir_and_custom_command(tmp_path: Path) -> None:
    env = {
        "PIPELINE_ROOT": str(REPO),
        "VENV": "",
        "PYTHON": sys.executable,
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NAME": "mlm",
        "PIPELINE_CMD": "probe.py --flag 'a b'",
    }
    proc = _bash('pipeline_init >/dev/null && printf "%s\\n" "$TRAIN_ARGS" "$OUTPUT_DIR"', env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["probe.py --flag 'a b'", "runs/mlm-77"]


def test_init_without_config_is_a_clear_error(tmp_path: Path) -> None:
    env = {"PIPELINE_ROOT": str(REPO), "VENV": "", "PYTHON": sys.executable}
    proc = _bash("pipeline_init", env=env)
    assert proc.returncode == 2
    assert "set CONFIG" in proc.stderr


LAUNCHER = """
import signal, subprocess, sys
# like accelerate/torchrun: a launcher that starts the training process and waits for it
child = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])
sys.exit(1 if child.wait() else 0)
"""
TRAINER = """
import pathlib, signal, sys, time
flag = []
signal.signal(signal.SIGUSR1, lambda s, f: flag.append(s))
pathlib.Path(sys.argv[1], "ready").write_text("")
end = time.monotonic() + 30
while not flag and time.monotonic() < end:
    time.sleep(0.02)
pathlib.Path(sys.argv[1], "checkpoint").write_text("")
sys.exit(75 if flag else 3)
"""


def test_node_exec_launcher_survives_usr1_and_reports_75(tmp_path: Path) -> None:
    """SLURM delivers a forwarded USR1 to every process of the step (seen on the cluster): the
    launcher must survive it so the trainer can checkpoint; the launcher's exit 1 becomes 75."""
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    (tmp_path / "trainer.py").write_text(TRAINER)
    cmd = f"source {COMMON} && pipeline_node_exec {sys.executable} {tmp_path}/launcher.py {tmp_path}/trainer.py {tmp_path}"
    proc = subprocess.Popen(
        [BASH, "-c", cmd], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "trainer did not start"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGUSR1)  # what slurmstepd does with a signal forwarded by srun
    out, _ = proc.communicate(timeout=30)
    assert (tmp_path / "checkpoint").exists()
    assert proc.returncode == 75, out
    assert "launcher exited with 1 after SIGUSR1: reporting 75" in out


def test_node_exec_dry_run_prints_the_command() -> None:
    proc = _bash(
        "pipeline_node_exec launcher --machine_rank 1 -m pipeline train c.yaml",
        env={"PIPELINE_DRY_RUN": "1", "SLURMD_NODENAME": "n7", "SLURM_NODEID": "1"},
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == (
        "[pipeline-slurm] dry-run node=n7 node_id=1: launcher --machine_rank 1 -m pipeline train c.yaml"
    )
