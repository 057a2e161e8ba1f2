"""Atomic, hash-checked checkpoints.

A checkpoint is written into `checkpoints/.tmp-step-N`, then `manifest.json` (every file with
its size and SHA-256) is written last and the folder is renamed to `checkpoints/step-N`. A
checkpoint counts only when its manifest exists and every hash matches, so a process killed
while writing leaves only a `.tmp-*` folder, which resume ignores and the next save removes.
Rotation deletes old checkpoints only after the new one is complete.

`write_atomic` is that protocol for any writer: the engine's collective `save` below and the
stages' single-process checkpoints both go through it (fsync'd manifest and folder, a full disk
reported as CheckpointError with the previous checkpoints intact).

Contents of an engine checkpoint: Accelerate's `save_state` (model as safetensors, optimizer;
DeepSpeed writes its own shards through the same call), `trainer_state.json` (step, data
position, tokens, scheduler...), and one `rank-K.pt` per process with its RNG states and
objective state. Our own files are read back with `torch.load(weights_only=True)`: a pickle
that would run code is refused. DeepSpeed's shard files are the exception: DeepSpeed reads them
itself with `weights_only=False` (see `deepspeed.consolidated_state_dict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    pass


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[str(f.relative_to(folder))] = {"size": f.stat().st_size, "sha256": sha256(f)}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(folder / MANIFEST)


def verify(folder: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong (naming the file)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{folder} has no {MANIFEST} (incomplete)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{manifest} is unreadable: {err}"
    for rel, meta in files.items():
        f = folder / rel
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{f} has {f.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        if sha256(f) != meta["sha256"]:
            return f"{f} fails its SHA-256 check (corrupted)"
    return None


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished-looking checkpoint, newest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def latest_valid(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose manifest and hashes check out; warns about each bad one."""
    for _, folder in list_checkpoints(run_dir):
        problem = verify(folder)
        if problem is None:
            return folder
        log.warning("skipping checkpoint: %s", problem)
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG of this process, as tensors and plain numbers (loadable with weights_only)."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
        "python": [py_version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, gauss, cached))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _no_phase(phase: str, step: int) -> None:
    pass


def write_atomic(
    root: Path,
    step: int,
    write: Callable[[Path], None],
    *,
    keep: int,
    finish: Callable[[Path], None] | None = None,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    on_phase: Callable[[str, int], None] = _no_phase,
) -> Path:
    """Write checkpoint `step` under `root` atomically; return the finished folder.

    Every process calls `write(tmp)` (its own files); the main process then calls
    `finish(tmp)` (files only it writes), writes the manifest last, renames the folder and
    removes all but the newest `keep` checkpoints. `barrier` separates the phases when several
    processes write; `on_phase` is told "files", "before_manifest" and "complete" (hooks)."""
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        write(tmp)
        on_phase("files", step)
    except OSError as err:  # disk full, quota...: the previous checkpoints stay as they are
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"saving checkpoint {final} failed: {err.strerror or err}; the previous "
            f"checkpoints in {root} are intact"
        ) from None
    barrier()
    on_phase("before_manifest", step)
    if is_main:
        if finish is not None:
            finish(tmp)
        write_manifest(tmp)
        # a folder of the same step (e.g. a corrupted one resume skipped) is replaced only now
        # that the new one is complete; a kill in between leaves a .tmp-* the next save removes
        replaced = root / f".tmp-replaced-step-{step:08d}"
        if final.exists():
            final.rename(replaced)
        tmp.rename(final)
        _fsync_dir(root)
        shutil.rmtree(replaced, ignore_errors=True)
        for _, old in list_checkpoints(root.parent)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    on_phase("complete", step)
    return final


def save(
    accelerator: Accelerator,
    run_dir: str | Path,
    step: int,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int,
    on_phase: Callable[[str, int], None] = _no_phase,
) -> Path:
    """Collective: every process calls it. Returns the finished folder."""

    def write(tmp: Path) -> None:
        accelerator.save_state(str(tmp), safe_serialization=True)
        torch.save({**rank_state, "rng": rng_state()}, tmp / f"rank-{accelerator.process_index}.pt")

    def finish(tmp: Path) -> None:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))

    return write_atomic(
        checkpoints_dir(run_dir), step, write, keep=keep, finish=finish,
        is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone,
        on_phase=on_phase,
    )  # fmt: skip


def check_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Every parameter of `module` has a value in `state` under one of its names (a tied
    parameter has several), and `state` holds nothing else but buffers: else RuntimeError."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    unset = [aliases[0] for aliases in names.values() if not any(n in state for n in aliases)]
    known = {n for aliases in names.values() for n in aliases}
    known |= {n for n, _ in module.named_buffers(remove_duplicate=False)}
    unexpected = [k for k in state if k not in known]
    if unset or unexpected:
        raise RuntimeError(
            f"weights from {source} do not fit the model: missing {unset[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def parameter_values(
    module: torch.nn.Module, state: dict[str, torch.Tensor]
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, its value in `state` under any of its names), once per parameter."""
    found: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in found and name in state:
            found[id(p)] = (p, state[name])
    return list(found.values())


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that takes tied parameters under either name (or both) and insists that
    every parameter gets a value."""
    check_full_state(module, state, source)
    module.load_state_dict(state, strict=False)


def load(accelerator: Accelerator, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model/optimizer into the prepared objects; return (trainer_state, rank_state)."""
    trainer_state = json.loads((folder / TRAINER_STATE).read_text())
    saved_world = trainer_state.get("world_size")
    if saved_world != accelerator.num_processes:
        # another process count: train.py loaded the consolidated weights before prepare
        # (engine/elastic.py); optimizer moments and per-process RNG start afresh
        return trainer_state, {}
    rng_file = folder / f"random_states_{accelerator.process_index}.pkl"
    if rng_file.is_file():  # Accelerate would skip a refused one silently: refuse it loudly
        from accelerate.utils.other import load as accelerate_load

        try:
            accelerate_load(rng_file)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{rng_file}: {_refusal(err)}") from None
    try:
        accelerator.load_state(str(folder))  # Accelerate reads its pickles with weights_only=True
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{folder}: {_refusal(err)}") from None
    rank_file = folder / f"rank-{accelerator.process_index}.pt"
    rank_state = load_tensors(rank_file)
    set_rng_state(rank_state.pop("rng"))
    return trainer_state, rank_state


def load_tensors(path: Path) -> Any:
    """torch.load that never runs pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends
        raise CheckpointError(f"{path}: {_refusal(err)}") from None


def _refusal(err: Exception) -> str:
    # torch's message spans many lines; the one naming the forbidden global is the useful one
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    why = next((line for line in lines if "GLOBAL" in line.upper()), lines[0] if lines else "")
    return f"not a plain tensor file (a pickle that could run code), refused: {why}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
