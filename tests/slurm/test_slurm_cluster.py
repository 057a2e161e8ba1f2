"""The templates on the real local SLURM cluster (two emulated nodes, node1 and node2), with probes
in place of training: ranks and main address per node, a real gloo rendezvous, preemption with
requeue, scancel, and array jobs. Needs PIPELINE_SLURM=1 and `scripts/slurm_cluster.sh up --nodes 2`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

PROBES = Path(__file__).resolve().parent / "probes"
DRY_RUN = re.compile(r"^\[pipeline-slurm\] dry-run node=(\S+) node_id=(\d+): (.*)$", re.M)
# GPU templates on a cluster without GPUs: no GPU request, one CPU per task, GPUS_PER_NODE given.
NO_GPU = ("--gpus-per-node=0", "--cpus-per-task=1")


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path} does not exist)"


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _dry_run_lines(text: str) -> dict[str, list[str]]:
    """node name -> the launcher command as that node expanded it."""
    return {node: shlex.split(cmd) for node, _, cmd in DRY_RUN.findall(text)}


@pytest.fixture(scope="module")
def dry_runs(slurm, slurm_tmp):
    """All templates submitted at once in dry-run mode; {template: (job info, log text)}."""
    cases = {
        "train.sbatch": ("-N1",),
        "train-multinode.sbatch": ("-N2",),
        "train-torchrun.sbatch": ("-N2",),
        "train-deepspeed.sbatch": ("-N2",),
        "train-cpu.sbatch": ("-N2",),
    }
    jobs = {}
    for template, args in cases.items():
        log = slurm_tmp / f"dry-{template}.log"
        env = {
            "PIPELINE_DRY_RUN": "1",
            "GPUS_PER_NODE": "2",
            "PROCS_PER_NODE": "2",
            "CONFIG": "configs/mlm/tiny.yaml",
            "OVERRIDES": "train.max_steps=7 optim.lr=1e-3",
            "OUTPUT_DIR": str(slurm_tmp / "dry-out"),
            "DEEPSPEED_CONFIG": "configs/deepspeed/zero2.json",
        }
        extra = () if template == "train-cpu.sbatch" else NO_GPU
        jobs[template] = (slurm.submit(template, *args, *extra, "--time=2", log=log, env=env), log)
    return {t: (slurm.wait(j, log, timeout=120), _log(log)) for t, (j, log) in jobs.items()}


TRAIN_TAIL = [
    "-m",
    "pipeline",
    "train",
    "configs/mlm/tiny.yaml",
    "train.max_steps=7",
    "optim.lr=1e-3",
    "--output-dir",
]


@pytest.mark.parametrize(
    ("template", "rank_flag", "addr_flag", "nproc_flag", "nproc"),
    [
        ("train-multinode.sbatch", "--machine_rank", "--main_process_ip", "--num_processes", "4"),
        ("train-deepspeed.sbatch", "--machine_rank", "--main_process_ip", "--num_processes", "4"),
        ("train-cpu.sbatch", "--machine_rank", "--main_process_ip", "--num_processes", "4"),
        ("train-torchrun.sbatch", "--node_rank", "--master_addr", "--nproc_per_node", "2"),
    ],
)
def test_two_node_ranks_and_main_address(
    dry_runs, template, rank_flag, addr_flag, nproc_flag, nproc
) -> None:
    info, text = dry_runs[template]
    assert info["JobState"] == "COMPLETED", text
    per_node = _dry_run_lines(text)
    assert sorted(per_node) == ["node1", "node2"], text
    for node, rank in (("node1", "0"), ("node2", "1")):
        argv = per_node[node]
        assert _flag(argv, rank_flag) == rank, (node, argv)  # computed on that node
        assert _flag(argv, addr_flag) == "node1", argv  # first host of the allocation
        assert _flag(argv, nproc_flag) == nproc, argv
        assert argv[argv.index("-m", 2) :][: len(TRAIN_TAIL)] == TRAIN_TAIL, argv
    ports = {
        _flag(a, "--main_process_port" if "--main_process_port" in a else "--master_port")
        for a in per_node.values()
    }
    assert len(ports) == 1, ports
    nnodes_flag = "--nnodes" if template == "train-torchrun.sbatch" else "--num_machines"
    assert {_flag(a, nnodes_flag) for a in per_node.values()} == {"2"}
    if template == "train-deepspeed.sbatch":
        assert all(
            _flag(a, "--deepspeed_config_file") == "configs/deepspeed/zero2.json"
            for a in per_node.values()
        )
        assert all("--use_deepspeed" in a for a in per_node.values())


def test_single_node_template(dry_runs) -> None:
    info, text = dry_runs["train.sbatch"]
    assert info["JobState"] == "COMPLETED", text
    per_node = _dry_run_lines(text)
    assert list(per_node) == ["node1"], text
    argv = per_node["node1"]
    assert _flag(argv, "--num_processes") == "2" and "--multi_gpu" in argv, argv
    assert argv[argv.index("-m", 2) :][: len(TRAIN_TAIL)] == TRAIN_TAIL, argv
    assert "--machine_rank" not in argv and "--main_process_ip" not in argv, argv


def test_cpu_template_real_rendezvous_on_two_nodes(slurm, slurm_tmp) -> None:
    """The real launcher (accelerate launch, torchrun underneath) on both nodes: the processes meet
    at node1's address and all-reduce over gloo."""
    log = slurm_tmp / "rendezvous.log"
    job = slurm.submit(
        "train-cpu.sbatch",
        "-N2",
        "--time=2",
        log=log,
        env={"PIPELINE_CMD": str(PROBES / "rank_probe.py")},
    )
    info = slurm.wait(job, log, timeout=120)
    text = _log(log)
    assert info["JobState"] == "COMPLETED", text
    probes = [
        dict(kv.split("=", 1) for kv in line.split()[1:])
        for line in re.findall(r"^PROBE .*$", text, re.M)
    ]
    by_node = {p["NODE"]: p for p in probes}
    assert sorted(by_node) == ["node1", "node2"], text
    for node, rank in (("node1", "0"), ("node2", "1")):
        p = by_node[node]
        assert (p["RANK"], p["GROUP_RANK"], p["WORLD_SIZE"]) == (rank, rank, "2"), p
        assert p["MASTER_ADDR"] == "node1" and p["ACCELERATE_USE_CPU"] == "1", p
        assert p["ALLREDUCE"] == "3", p  # 1 + 2: both ranks took part


def _positions(text: str, *needles: str) -> list[int]:
    found = []
    for needle in needles:
        pos = text.find(needle)
        assert pos >= 0, f"{needle!r} not in the log:\n{text}"
        found.append(pos)
    return found


def test_usr1_before_time_limit_checkpoints_and_requeues_once(slurm, slurm_tmp) -> None:
    """--signal=B:USR1@50 with --time=1: SLURM signals the batch shell (its timing is coarse, up to
    ~30-60 s off, so only the order of events is checked); the probe, which stands in for
    training, gets USR1 on both nodes, "checkpoints" and exits 75; the job requeues itself once
    (SLURM_RESTART_COUNT=1 in the appended log), resumes and completes."""
    probe_dir = slurm_tmp / "preempt"
    probe_dir.mkdir()
    log = slurm_tmp / "preempt.log"
    env = {
        "PIPELINE_CMD": str(PROBES / "signal_probe.py"),
        "PROBE_DIR": str(probe_dir),
        "PIPELINE_SIGNAL_REPEAT": "3",
    }
    job = slurm.submit(
        "train-cpu.sbatch", "-N2", "--time=1", "--signal=B:USR1@50", log=log, env=env
    )
    info = slurm.wait(job, log, timeout=170, restarts=1)
    text = _log(log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text
    start0, start1, signal, got0, got1, requeue, restart, resumed0, resumed1, done = _positions(
        text,
        "PROBE START rank=0 restart=0",
        "PROBE START rank=1 restart=0",
        "batch shell got SIGUSR1",
        "PROBE GOT SIGUSR1 rank=0",
        "PROBE GOT SIGUSR1 rank=1",
        f"requeueing job {job}",
        f"job {job} restart 1 on",
        "PROBE START rank=0 restart=1",
        "PROBE START rank=1 restart=1",
        "done with status 0",
    )
    assert (
        signal < min(got0, got1)
        and max(got0, got1) < requeue < restart < min(resumed0, resumed1) < done
    )
    assert "restart 2" not in text and text.count("requeueing job") == 1
    assert sorted(p.name for p in probe_dir.iterdir()) == ["got-SIGUSR1-rank0", "got-SIGUSR1-rank1"]


def test_scancel_stops_the_job_without_requeue(slurm, slurm_tmp) -> None:
    """scancel sends TERM: training still gets to checkpoint, but a cancelled job stays cancelled."""
    probe_dir = slurm_tmp / "cancel"
    probe_dir.mkdir()
    log = slurm_tmp / "cancel.log"
    env = {"PIPELINE_CMD": str(PROBES / "signal_probe.py"), "PROBE_DIR": str(probe_dir)}
    job = slurm.submit("train-cpu.sbatch", "-N2", "--time=3", log=log, env=env)
    deadline = time.monotonic() + 90
    while _log(log).count("PROBE START") < 2:
        assert time.monotonic() < deadline, _log(log)
        time.sleep(0.3)
    subprocess.run(["scancel", str(job)], check=True)
    info = slurm.wait(job, log, timeout=60)
    time.sleep(1)
    text = _log(log)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", text
    assert "batch shell got SIGTERM" in text and "not requeueing" in text, text
    assert "requeueing job" not in text
    assert len(list(probe_dir.iterdir())) == 2, text  # both ranks "checkpointed"


def test_crash_on_one_node_fails_without_requeue(slurm, slurm_tmp) -> None:
    """Rank 0 fails: srun stops the other node (TERM), the job FAILS and is not requeued."""
    probe_dir = slurm_tmp / "crash"
    probe_dir.mkdir()
    log = slurm_tmp / "crash.log"
    env = {
        "PIPELINE_CMD": str(PROBES / "signal_probe.py"),
        "PROBE_DIR": str(probe_dir),
        "PROBE_CRASH_RANK": "0",
    }
    job = slurm.submit("train-cpu.sbatch", "-N2", "--time=3", log=log, env=env)
    info = slurm.wait(job, log, timeout=90)
    text = _log(log)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", text
    assert "PROBE CRASH rank=0" in text and "requeueing job" not in text, text


def test_array_task_requeues_alone(slurm, slurm_tmp) -> None:
    """Preempting one task of an array requeues that task only (not the whole array, which
    `scontrol requeue $SLURM_JOB_ID` would do for the task whose id is the array's id);
    OUTPUT_DIR='...${SLURM_ARRAY_TASK_ID}' gives each task its own run folder."""
    probe_dir = slurm_tmp / "array"
    probe_dir.mkdir()
    env = {
        "PIPELINE_CMD": str(PROBES / "signal_probe.py"),
        "PROBE_DIR": str(probe_dir),
        "PROBE_MAX_S": "15",  # the task that gets no signal finishes on its own
        "PROBE_NO_SIGNAL_STATUS": "0",
        "OUTPUT_DIR": str(slurm_tmp / "sweep" / "run-${SLURM_ARRAY_TASK_ID}"),
    }
    logs = {task: slurm_tmp / f"array-{task}.log" for task in (0, 1)}
    job = slurm.submit(
        "train-cpu.sbatch",
        "-N1",
        "--array=0-1",
        "--time=3",
        log=slurm_tmp / "array-%a.log",
        env=env,
    )
    deadline = time.monotonic() + 90
    while not all("PROBE START" in _log(log) for log in logs.values()):
        assert time.monotonic() < deadline, [_log(log) for log in logs.values()]
        time.sleep(0.3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_1"], check=True)
    infos = {
        task: slurm.wait(f"{job}_{task}", logs[task], timeout=120, restarts=task) for task in (0, 1)
    }
    texts = {task: _log(log) for task, log in logs.items()}
    assert (infos[0]["JobState"], infos[0]["Restarts"]) == ("COMPLETED", "0"), texts[0]
    assert (infos[1]["JobState"], infos[1]["Restarts"]) == ("COMPLETED", "1"), texts[1]
    assert "PROBE NO SIGNAL" in texts[0] and "requeueing" not in texts[0], texts[0]
    assert f"requeueing job {job}_1 " in texts[1] and "PROBE RESUMED" in texts[1], texts[1]
    for task, text in texts.items():
        assert f"output_dir={slurm_tmp / 'sweep' / f'run-{task}'}" in text, text
