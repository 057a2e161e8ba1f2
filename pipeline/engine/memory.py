"""Peak memory of every process, for the metric lines (ZeRO's point is per-process memory).

GPU: `torch.cuda.max_memory_allocated` (tensors only). CPU: the process's peak resident set
(ru_maxrss), which also counts the Python interpreter and libraries (~0.5-1 GB of baseline).
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.engine.metrics import peak_memory_mb


def peak_memory_by_rank(accelerator: Any) -> dict[str, Any]:
    """Collective. {"peak_mem_mb_max": largest process, "peak_mem_mb_ranks": [rank 0, 1, ...]}."""
    mine = torch.tensor([peak_memory_mb(accelerator.device)], device=accelerator.device)
    ranks = [round(r, 1) for r in accelerator.gather(mine).flatten().tolist()]
    return {"peak_mem_mb_max": max(ranks), "peak_mem_mb_ranks": ranks}
