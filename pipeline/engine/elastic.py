"""Resume at a different process count: consolidated weights + a fresh optimizer.

Same process count: exact resume (checkpoint.load restores everything, ZeRO shards included).
Another process count (e.g. 2 -> 1, or 8 -> 16 after a requeue on a different allocation):
  restored   model weights (full fp32, consolidated from ZeRO shards when there are shards),
             step, token count, elapsed time, LR schedule, data position (the step number);
  fresh      optimizer moments (AdamW restarts its averages; the LR stays on schedule) and
             per-process RNG / stream positions (they do not map onto another layout).
With train.global_batch_size set, step s trains on the same examples at any process count;
without it the global batch follows the process count and a warning says so. Streaming data
cannot change its process count (each process's stream position belongs to its shard).

Why not DeepSpeed's universal checkpoint: it needs an offline conversion of every checkpoint
(ds_to_universal) and a second load path per ZeRO stage; one consolidated-weights path works for
DDP and ZeRO 1/2/3 alike and keeps the Adam restart explicit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.engine.checkpoint import CheckpointError, load_full_state, load_tensors

log = logging.getLogger(__name__)


def saved_world_size(folder: Path) -> int | None:
    return json.loads((folder / "trainer_state.json").read_text()).get("world_size")


def full_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint: Accelerate's model.safetensors, else ZeRO shards."""
    weights = folder / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        return load_file(str(weights))
    from pipeline.engine.deepspeed import consolidated_state_dict

    return consolidated_state_dict(folder)


def needs_weights_only(folder: Path | None, world: int) -> bool:
    return folder is not None and saved_world_size(folder) != world


def load_weights(
    module: nn.Module, folder: Path, world: int, global_batch_set: bool,
    load: Callable[[nn.Module, dict[str, torch.Tensor], str], None] = load_full_state,
) -> None:  # fmt: skip
    """Before accelerator.prepare: load the checkpoint's weights into the module as built
    (`load`: the strategy's, which writes into ZeRO-3 partitions)."""
    saved = saved_world_size(folder)
    check_rank_state(folder)
    load(module, full_weights(folder), str(folder))
    log.warning(
        "%s was written by %s processes, this run has %d: resuming weights, step and LR "
        "schedule; optimizer moments start afresh%s",
        folder, saved, world,
        "" if global_batch_set else " and the global batch changes (set train.global_batch_size "
        "to keep it)",
    )  # fmt: skip


def check_rank_state(folder: Path) -> None:
    """Refuse what cannot move to another process count (stream positions are per shard)."""
    rank0 = folder / "rank-0.pt"
    if rank0.is_file() and "stream" in load_tensors(rank0):
        raise CheckpointError(
            f"{folder} holds streaming positions of {saved_world_size(folder)} processes; a "
            "streaming run resumes only at the same process count"
        )
