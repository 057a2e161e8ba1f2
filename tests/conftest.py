"""Shared test helpers: offline mode, a tiny masked-LM recipe, and CLI runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one data/tokenizer cache for the session, shared by every run (what users get across runs)
os.environ.setdefault("PIPELINE_CACHE", tempfile.mkdtemp(prefix="pipeline-test-cache-"))

# a BERT small enough that a CPU step takes milliseconds; dropout 0 so runs compare exactly
TINY = [
    "model.preset=tiny",
    "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2}",
    "model.dropout=0.0",
    "data.block_size=32",
    "tokenizer.vocab_size=1000",
    "train.micro_batch_size=8",
    "train.log_every=1",
    "train.eval_every=0",
    "log.progress_bar=false",
    "log.plots=false",
    "log.trackers=[]",
]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    e.update(extra)
    return e


def run_cli(args: list[str], *, launcher: str = "python", nproc: int = 1, check: bool = True,
            timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `python -m pipeline ...` as a user would, under python, accelerate or torchrun.

    On CPU, `accelerate launch --cpu --num_processes 2` starts ONE process (its simple
    launcher expects MPI); `--multi_gpu` picks the torchrun-based launcher, and the engine's
    Accelerator(cpu=True) then runs MULTI_CPU over gloo."""
    if launcher == "python":
        cmd = [sys.executable, "-m", "pipeline", *args]
    elif launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--multi_gpu", "-m", "pipeline", *args]  # fmt: skip
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), "-m", "pipeline", *args]  # fmt: skip
    else:
        raise ValueError(launcher)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir: Path, split: str = "train") -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the project's wheel, built once; its files unpacked into a folder: put that folder on
    PYTHONPATH for an install without a checkout)."""
    import zipfile

    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(ROOT), "-w", str(dist)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = dist.glob("pipeline-*.whl")
    site = tmp_path_factory.mktemp("site")
    site.chmod(0o755)  # the SLURM daemons (same machine) run jobs from it
    zipfile.ZipFile(built).extractall(site)
    return built, site
