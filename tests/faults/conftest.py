"""Helpers for the fault matrix: in-process runs (fast, for everything that needs no kill) and
one small trained run folder that tests copy and then damage."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from pipeline.engine import faults
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs/mlm/tiny.yaml")


def _small_corpus() -> Path:
    """The first 40 chapters of the embedded Bible (~40k tokens): a tokenizer trains and the
    text packs in a second, for this process and for the subprocess runs alike."""
    path = Path(os.environ["PIPELINE_CACHE"]) / "faults-corpus.jsonl"
    if not path.is_file():
        from pipeline.data import embedded

        lines = Path(embedded.materialize("bible")["train"]).read_text().splitlines()[:40]
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps({"text": json.loads(x)["text"]}) + "\n" for x in lines))
        tmp.rename(path)
    return path


CORPUS = _small_corpus()
# constant learning rate: runs of different lengths take identical first steps
BASE = [
    *TINY,
    f"data.path={CORPUS}",
    "optim.schedule=constant",
    "optim.warmup_steps=0",
    "optim.warmup_ratio=0",
]


def train_args(out: Path, *overrides: str) -> list[str]:
    return ["train", RECIPE, *BASE, *overrides, "--output-dir", str(out)]


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    """`python -m pipeline ...` in this process: (exit status, last line of stderr)."""
    from pipeline.__main__ import main

    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture(autouse=True)
def _clean_process_state():
    """In-process runs must not leak signal handlers or counted faults into the next test."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    faults._fired.clear()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    faults._fired.clear()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """4 steps, checkpoints at 2 and 4 (both kept), exported: copy it before changing it."""
    from pipeline.__main__ import main

    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=2"]
    assert main(train_args(out, *args)) == 0
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out
