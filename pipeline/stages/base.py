"""The stage interface and the run-folder plumbing every stage shares.

A stage is a class registered with `@register("stage", NAME)` whose `run(cfg, run_dir)` returns
its final metrics. What a downstream stage may read goes into `RUN_DIR/outputs/`, which is
written like a checkpoint: into `outputs.tmp/`, then `manifest.json` (hashes) last, then
renamed. A stage's outputs count only when that manifest checks out, so a chain can skip a
completed stage and never reads a half-written one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from pipeline.data.sources import DataError
from pipeline.engine import checkpoint
from pipeline.engine.metrics import MetricsLog
from pipeline.stages import arrays
from pipeline.stages.dist import Comm
from pipeline.stages.schema import StageRunConfig

OUTPUTS = "outputs"


class Stage:
    """`run(cfg, run_dir) -> metrics`: a single-node experiment on the shared plumbing."""

    Config: ClassVar[type]

    def __init__(self, comm: Comm):
        self.comm = comm

    def run(self, cfg: StageRunConfig, run_dir: Path) -> dict[str, float]:
        raise NotImplementedError


def metrics_log(run_dir: Path, comm: Comm) -> MetricsLog:
    """metrics.jsonl on the main process (no trackers for stages)."""
    return MetricsLog(run_dir, SimpleNamespace(trackers=None), enabled=comm.is_main)


# --------------------------------------------------------------------------- outputs/


def begin_outputs(run_dir: Path) -> Path:
    tmp = run_dir / (OUTPUTS + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_outputs(run_dir: Path) -> Path:
    tmp, final = run_dir / (OUTPUTS + ".tmp"), run_dir / OUTPUTS
    checkpoint.write_manifest(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def outputs_problem(run_dir: Path) -> str | None:
    """None when RUN_DIR/outputs is complete and intact."""
    return checkpoint.verify(Path(run_dir) / OUTPUTS)


def upstream(run_dir: str | Path, mmap: bool = False) -> arrays.ArrayData:
    """The features an upstream stage left in its run folder, or a DataError saying why not."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"input={str(run_dir)!r}: no such run folder; run the upstream stage first")
    problem = outputs_problem(run_dir)
    if problem is not None:
        raise DataError(
            f"input={str(run_dir)!r} has no complete outputs ({problem}); "
            "the upstream stage did not finish: run it first"
        )
    if not (run_dir / OUTPUTS / "features.npy").is_file():
        raise DataError(f"input={str(run_dir)!r}: its outputs hold no features.npy to read")
    return arrays.load_outputs(run_dir / OUTPUTS, mmap=mmap)


def load_data(cfg: StageRunConfig) -> arrays.ArrayData:
    """`input` (an upstream run folder) when set, else `data.path`; checked and scaled."""
    if cfg.input:
        data = upstream(cfg.input, mmap=cfg.data.mmap)
        if cfg.data.max_examples is not None:
            data.x = data.x[: cfg.data.max_examples]
            data.labels = None if data.labels is None else data.labels[: cfg.data.max_examples]
        arrays.check(data)
        arrays.scale(data, cfg.data.scale)
        return data
    return arrays.load(cfg.data, cfg.train.seed)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """The engine's atomic writer (tmp folder, fsync'd manifest last, rename; older ones removed
    after the new one is in; a full disk leaves the previous ones intact), one process."""

    def write(tmp: Path) -> None:
        torch.save({**state, "rng": checkpoint.rng_state()}, tmp / "state.pt")

    return checkpoint.write_atomic(checkpoint.checkpoints_dir(run_dir), step, write, keep=keep)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest valid checkpoint's state (RNG restored), or None."""
    folder = checkpoint.latest_valid(run_dir)
    if folder is None:
        return None
    state = checkpoint.load_tensors(folder / "state.pt")
    checkpoint.set_rng_state(state.pop("rng"))
    return state
