"""Process group for stages: each process holds a shard; sums and counts are all-reduced.

Works under `torchrun --nproc_per_node N -m pipeline stage ...` and `accelerate launch`, which
both set RANK / WORLD_SIZE / MASTER_ADDR. gloo on CPU, NCCL when the stage runs on CUDA.
A single process (no WORLD_SIZE) never creates a process group: every collective is a no-op.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as td


class Comm:
    """The collectives a stage needs, identical in 1 and N processes."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> Comm:
        if self.world > 1 and not td.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            td.init_process_group(backend, timeout=timedelta(minutes=30))
        return self

    def stop(self) -> None:
        if self.world > 1 and td.is_initialized():
            td.destroy_process_group()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over processes."""
        if self.world > 1:
            td.all_reduce(t, op=td.ReduceOp.SUM)
        return t

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's `t` along dim 0 in rank order (sizes may differ)."""
        if self.world == 1:
            return t
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        td.all_gather(sizes, n)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        td.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def barrier(self) -> None:
        if self.world > 1:
            td.barrier()

    def shard(self, n: int) -> slice:
        """This process's contiguous rows of `n`: rank order = row order, so a 2-process run
        sees the same global ordering (and samples the same k-means++ points) as 1 process."""
        start = n * self.rank // self.world
        return slice(start, n * (self.rank + 1) // self.world)
