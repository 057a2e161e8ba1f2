"""Metrics: `metrics.jsonl` (always), Accelerate trackers, throughput, MFU and memory."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

# dense bf16 peak FLOP/s per device (no sparsity), matched against torch.cuda.get_device_name()
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A6000": 155e12,
    "L40S": 362e12,
    "L4": 121e12,
    "4090": 165e12,
    "V100": 125e12,
    "T4": 65e12,
    "MI300X": 1307e12,
}


def peak_flops(device: torch.device, configured: float | None) -> float | None:
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops
    return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def peak_memory_by_rank(accelerator: Accelerator) -> dict[str, Any]:
    """Collective. {"peak_mem_mb_max": largest process, "peak_mem_mb_ranks": [rank 0, 1, ...]}.

    ZeRO's point is per-process memory. GPU: `torch.cuda.max_memory_allocated` (tensors only).
    CPU: the process's peak resident set (ru_maxrss), which also counts the interpreter and
    libraries (~0.5-1 GB of baseline)."""
    mine = torch.tensor([peak_memory_mb(accelerator.device)], device=accelerator.device)
    ranks = [round(r, 1) for r in accelerator.gather(mine).flatten().tolist()]
    return {"peak_mem_mb_max": max(ranks), "peak_mem_mb_ranks": ranks}


class MetricsLog:
    """Main process only: append JSON lines and forward to Accelerate's trackers."""

    def __init__(self, run_dir: Path, accelerator: Any, enabled: bool):
        self.path = run_dir / "metrics.jsonl"
        self.accelerator = accelerator
        self.enabled = enabled

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in values.items()
        }
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, "split": split, **clean}) + "\n")
        if self.accelerator.trackers:
            numbers = {f"{split}/{k}": v for k, v in clean.items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=step)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Averager:
    """Sums of per-micro-batch metrics, averaged over micro batches and processes on demand."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n += 1

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.n:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] for k in keys]).to(accelerator.device) / self.n
        mean = accelerator.reduce(local, reduction="mean")
        self.sums, self.n = {}, 0
        return {k: float(v) for k, v in zip(keys, mean.tolist())}


def write_run_info(run_dir: Path, accelerator: Accelerator, accumulation: int) -> None:
    """RUN_DIR/run_info.json: how the run was launched (tests and users check the layout)."""
    import platform

    import accelerate
    import transformers

    device = accelerator.device
    info = {
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accumulation,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
        },
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=1))


class TrainLog:
    """The train metric lines: averages of the applied steps' micro-batch metrics since the last
    line, with learning rate, gradient norm, tokens/s, step time, peak memory and MFU."""

    def __init__(
        self,
        metrics_log: MetricsLog,
        accelerator: Accelerator,
        summarize: Callable[[dict[str, float]], dict[str, float]],
        tokens_per_step: int,
        flops_per_step: float,
        peak: float | None,
    ) -> None:
        self.out, self.accelerator, self.summarize = metrics_log, accelerator, summarize
        self.tokens_per_step, self.flops_per_step, self.peak = tokens_per_step, flops_per_step, peak
        self.avg = Averager()
        self.steps = 0
        self.t_last = time.time()

    def add(self, micro_metrics: list[dict[str, torch.Tensor]]) -> None:
        for m in micro_metrics:
            self.avg.add(m)
        self.steps += 1

    def write(self, step: int, lr: float, grad_norm: float | None, tokens: int) -> dict[str, Any]:
        """Collective (reduces over processes). Returns the line."""
        now = time.time()
        m = self.summarize(self.avg.reduce(self.accelerator))
        dt = max(now - self.t_last, 1e-9)
        m.update(lr=lr, grad_norm=grad_norm, tokens=tokens,
                 tokens_per_s=self.tokens_per_step * self.steps / dt,
                 step_time_s=dt / self.steps,
                 peak_mem_mb=peak_memory_mb(self.accelerator.device))  # fmt: skip
        m.update(peak_memory_by_rank(self.accelerator))  # collective: max and per process
        if self.peak and self.flops_per_step:
            world = self.accelerator.num_processes
            m["mfu"] = self.flops_per_step * self.steps / dt / (self.peak * world)
        self.out.write(step, "train", m)
        self.t_last, self.steps = time.time(), 0
        return m


def record_run_facts(run_dir: Path, accelerator: Accelerator, **facts: Any) -> None:
    """RUN_DIR/run_info.json: facts settled while the run is set up (e.g. the lr used when
    optim.lr was left to its default), written by the main process."""
    if accelerator.is_main_process:
        path = run_dir / "run_info.json"
        info = json.loads(path.read_text())
        info.update(facts)
        path.write_text(json.dumps(info, indent=1))


def record_parameters(run_dir: Path, module: torch.nn.Module, accelerator: Accelerator) -> None:
    """Collective. RUN_DIR/run_info.json "parameters": the model's size and what each process
    holds of it as built (ZeRO-3 builds it partitioned: about 1/processes each), and the
    process's peak memory by then (the init peak)."""
    seen: set[int] = set()
    total = held = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += getattr(p, "ds_numel", p.numel())
            # a ZeRO-3 parameter's own storage is its partition (ds_tensor); p itself is empty
            held += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    mine = torch.tensor([held, peak_memory_mb(accelerator.device)], device=accelerator.device)
    ranks = accelerator.gather(mine[None]).tolist()
    record_run_facts(
        run_dir, accelerator,
        parameters={"total": total, "held_per_process": [int(r[0]) for r in ranks]},
        init_peak_mem_mb=[round(r[1], 1) for r in ranks],
    )  # fmt: skip
