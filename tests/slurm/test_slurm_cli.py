"""`python -m pipeline slurm submit`: the exact --print output and the exact sbatch call (a fake
sbatch, no cluster), a bad config refused before submission, and (PIPELINE_SLURM=1) a tiny run
submitted through the cpu template on the local cluster that finishes and exports."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]

# a 2-node GPU job; the model override has blanks, which the template would split: it is
# passed on as compact JSON (same YAML value)
GPU_ARGS = [
    "slurm",
    "submit",
    "configs/mlm/tiny.yaml",
    "train.max_steps=20",
    "model.overrides={hidden_size: 64, num_hidden_layers: 2}",
    "--nodes",
    "2",
    "--gpus-per-node",
    "4",
    "--partition",
    "gpu",
    "--time",
    "01:00:00",
    "--signal-seconds",
    "300",
    "--output-dir",
    "runs/two-node",
]
GPU_VARIABLES = {
    "CONFIG": "configs/mlm/tiny.yaml",
    "OVERRIDES": 'train.max_steps=20 model.overrides={"hidden_size":64,"num_hidden_layers":2}',
    "OUTPUT_DIR": "runs/two-node",
    "GPUS_PER_NODE": "4",
    "PIPELINE_ROOT": str(REPO),
    "PYTHON": sys.executable,
}
GPU_SBATCH = [
    "sbatch",
    "--parsable",
    "--export=ALL",
    "--nodes=2",
    "--gpus-per-node=4",
    "--partition=gpu",
    "--time=01:00:00",
    "--signal=B:USR1@300",
    f"--output={REPO}/slurm-%x-%j.out",
    "slurm/train-multinode.sbatch",
]


@pytest.fixture
def at_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PYTHON", raising=False)


@pytest.fixture
def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `sbatch` first on PATH that records its arguments and environment, answers job 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch-call.json"
    script = bin_dir / "sbatch"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}},"
        f" open({str(record)!r}, 'w'))\n"
        "print('4242')\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_print_two_node_gpu_is_exact(at_repo, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*GPU_ARGS, "--print"]) == 0
    out = capsys.readouterr().out
    template = (REPO / "slurm" / "train-multinode.sbatch").read_text()
    expected = (
        f"# not submitted (--print); the submission, run from {REPO}:\n"
        "CONFIG=configs/mlm/tiny.yaml \\\n"
        "OVERRIDES='train.max_steps=20 "
        'model.overrides={"hidden_size":64,"num_hidden_layers":2}\' \\\n'
        "OUTPUT_DIR=runs/two-node \\\n"
        "GPUS_PER_NODE=4 \\\n"
        f"PIPELINE_ROOT={REPO} \\\n"
        f"PYTHON={shlex.quote(sys.executable)} \\\n"
        "sbatch --parsable --export=ALL --nodes=2 --gpus-per-node=4 --partition=gpu "
        f"--time=01:00:00 --signal=B:USR1@300 --output={REPO}/slurm-%x-%j.out "
        "slurm/train-multinode.sbatch\n"
        "\n"
        "# slurm/train-multinode.sbatch (options on the sbatch command line win over its "
        "#SBATCH lines):\n"
        f"{template}"
    )
    assert out == expected
    # the node rank stays escaped: it expands on each node, not in the batch shell
    assert "--machine_rank \\$SLURM_NODEID" in out


def test_submit_runs_exactly_the_printed_command(
    at_repo, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # stale template variables in the submitting shell must not reach the job
    monkeypatch.setenv("PIPELINE_CMD", "probe.py")
    monkeypatch.setenv("PROCS_PER_NODE", "8")
    assert main(GPU_ARGS) == 0
    out = capsys.readouterr().out
    call = json.loads(fake_sbatch.read_text())
    assert ["sbatch", *call["argv"]] == GPU_SBATCH
    assert call["cwd"] == str(REPO)
    assert {k: call["env"].get(k) for k in GPU_VARIABLES} == GPU_VARIABLES
    assert "PIPELINE_CMD" not in call["env"] and "PROCS_PER_NODE" not in call["env"]
    assert out == (
        "submitted job 4242 (slurm/train-multinode.sbatch, 2 nodes)\n"
        f"log: {REPO}/slurm-pipeline-multinode-4242.out\n"
        f"run folder: {REPO}/runs/two-node\n"
    )


def test_cpu_array_defaults(at_repo, fake_sbatch: Path, capsys) -> None:
    """No GPUs picks the cpu template; array placeholders pass validation with a sample task id
    and reach the job unexpanded; no --output-dir leaves OUTPUT_DIR to the template."""
    args = ["slurm", "submit", "configs/mlm/tiny.yaml", "train.seed=${SLURM_ARRAY_TASK_ID}"]
    assert main([*args, "--gpus-per-node", "0", "--procs-per-node", "2", "--array", "0-3"]) == 0
    out = capsys.readouterr().out
    call = json.loads(fake_sbatch.read_text())
    assert call["argv"][-1] == "slurm/train-cpu.sbatch"
    assert "--array=0-3" in call["argv"] and not any("gpus" in a for a in call["argv"])
    assert call["env"]["OVERRIDES"] == "train.seed=${SLURM_ARRAY_TASK_ID}"
    assert call["env"]["PROCS_PER_NODE"] == "2" and "OUTPUT_DIR" not in call["env"]
    assert f"log: {REPO}/slurm-pipeline-cpu-4242_%a.out\n" in out
    assert f"run folder: {REPO}/runs/pipeline-cpu-4242_<array task>\n" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.max_stepz=5", "optim.lr=fast"], "unknown key train.max_stepz"),
        (["data.path=two words.txt"], "has blanks the sbatch templates cannot pass on"),
        (["--template", "train", "--nodes", "2"], "the train template runs on one node"),
        (["--template", "deepspeed"], "needs engine.strategy=deepspeed"),
        (["train.seed=${SLURM_ARRAY_TASK_ID}"], "only set in array jobs: add --array"),
    ],
)
def test_bad_config_or_options_fail_before_submission(
    at_repo, fake_sbatch: Path, capsys, extra: list[str], message: str
) -> None:
    argv = ["slurm", "submit", "configs/mlm/tiny.yaml", "--gpus-per-node", "1", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not fake_sbatch.exists(), "sbatch was called for an invalid submission"


def test_missing_sbatch_is_a_clear_error(
    at_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = ["slurm", "submit", "configs/mlm/tiny.yaml", "--template", "cpu"]
    assert main(argv) == 2
    assert "`sbatch` not found on PATH" in capsys.readouterr().err


def test_submit_cpu_template_tiny_run_finishes_and_exports(slurm, slurm_tmp: Path) -> None:
    """The real thing: submit through the CLI, wait with the suite's helper, load the export."""
    run_dir = slurm_tmp / "cli-run"
    overrides = [*TINY, "train.max_steps=4", "train.checkpoint_every=100", "train.seed=3"]
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "slurm",
        "submit",
        "configs/mlm/tiny.yaml",
        *overrides,
        "--template",
        "cpu",
        "--time",
        "10",
        "--output-dir",
        str(run_dir),
        "--log",
        str(slurm_tmp / "cli-%j.log"),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=slurm.base_env(), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"^submitted job (\d+) .*\nlog: (.+)\nrun folder: (.+)$", proc.stdout, re.M)
    assert match, proc.stdout
    job = int(match.group(1))
    slurm.submitted.append(job)  # cancelled at the end if still running
    log = Path(match.group(2))
    assert log == slurm_tmp / f"cli-{job}.log" and Path(match.group(3)) == run_dir

    info = slurm.wait(job, log, timeout=300)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", text
    steps = [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("split") == "train"
    ]
    assert steps == [1, 2, 3, 4], text

    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "export")
    model = AutoModelForMaskedLM.from_pretrained(run_dir / "export").eval()
    assert model.config.hidden_size == 64  # the override with blanks reached the job
    with torch.no_grad():
        logits = model(
            **tok("In the beginning God created the heaven.", return_tensors="pt")
        ).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_submit_from_a_pip_install_runs_in_the_submitting_folder(
    slurm, slurm_tmp: Path, wheel
) -> None:
    """Installed from the wheel (no checkout on sys.path), submitted from a folder of the
    user's: the job finishes, its log and run folder are there, the package folder stays clean."""
    _, site = wheel
    user = slurm_tmp / "user"
    user.mkdir()
    env = {**slurm.base_env(), "PYTHONPATH": str(site)}  # reaches the job: --export=ALL
    overrides = [*TINY, "train.max_steps=2", "train.checkpoint_every=100"]
    cmd = [sys.executable, "-m", "pipeline", "slurm", "submit", "mlm/tiny", *overrides,
           "--template", "cpu", "--time", "10"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=user, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = int(re.search(r"^submitted job (\d+) ", proc.stdout, re.M).group(1))
    slurm.submitted.append(job)
    log, run_dir = user / f"slurm-pipeline-cpu-{job}.out", user / "runs" / f"pipeline-cpu-{job}"
    assert proc.stdout.splitlines()[1:] == [f"log: {log}", f"run folder: {run_dir}"]
    info = slurm.wait(job, log, timeout=300)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", text
    assert f"-m pipeline train {site}/pipeline/_recipes/configs/mlm/tiny.yaml" in text
    assert (run_dir / "export" / "config.json").is_file(), text
    assert sorted(p.name for p in (site / "pipeline" / "_recipes").iterdir()) == [
        "configs",
        "slurm",
    ]
