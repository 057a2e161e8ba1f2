#!/usr/bin/env python
"""Per-process peak memory and step time: DDP vs ZeRO-1/2/3 (and ZeRO-3 with CPU offload).

Every strategy trains the same model on the same data with the same global batch, launched
with torchrun; the numbers come from each run's metrics.jsonl (peak_mem_mb_ranks, step_time_s).

    python scripts/bench_zero.py                      # CPU: BERT-small, 2 processes
    python scripts/bench_zero.py --preset base large  # GPU: one table per model

Memory is `torch.cuda.max_memory_allocated` on GPU; on CPU it is each process's peak resident
set, which includes ~0.7 GB of interpreter and libraries and the full model every process
builds before DeepSpeed partitions it, so ZeRO's savings show less there than on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {
    "ddp": ["engine.strategy=ddp"],
    "zero1": ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero1.json"],
    "zero2": ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero2.json"],
    "zero3": ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero3.json"],
    "zero3-offload": [
        "engine.strategy=deepspeed",
        "engine.deepspeed_config=configs/deepspeed/zero3-offload.json",
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(name: str, args: argparse.Namespace, preset: str, out: Path) -> dict:
    run_dir = out / f"{preset}-{name}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
        "--master_port", str(free_port()), "-m", "pipeline", "train", "configs/mlm/tiny.yaml",
        f"model.preset={preset}", "model.max_position_embeddings=512", "model.dropout=0.0",
        f"data.block_size={args.block}", f"train.micro_batch_size={args.micro_batch}",
        f"train.max_steps={args.steps}", "train.log_every=1", "train.eval_every=0",
        f"train.checkpoint_every={args.steps + 1}", "train.export=false",
        "data.max_eval_examples=8", "log.progress_bar=false", "log.plots=false",
        "log.trackers=[]", *STRATEGIES[name], "--output-dir", str(run_dir),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / f"{preset}-{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {
            "strategy": name,
            "error": f"exit {proc.returncode} (see {out}/{preset}-{name}.log)",
        }
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    train = [m for m in lines if m["split"] == "train"]
    # the first steps include warm-up (allocations, DeepSpeed's first gathers)
    timed = [m["step_time_s"] for m in train[args.warmup :]] or [train[-1]["step_time_s"]]
    last = train[-1]
    return {
        "strategy": name,
        "peak_ranks": last["peak_mem_mb_ranks"],
        "step_s": statistics.median(timed),
        "tokens_s": statistics.median(m["tokens_per_s"] for m in train[args.warmup :] or train),
        "loss": last["loss"],
        "wall_s": time.time() - start,
    }


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def table(preset: str, rows: list[dict], args: argparse.Namespace) -> str:
    device = "GPU" if _has_cuda() else "CPU"
    head = (
        f"\nBERT-{preset}, {args.nproc} processes, {device}, micro batch {args.micro_batch} x "
        f"{args.block} tokens, median of steps {args.warmup + 1}-{args.steps}\n"
    )
    ranks = " | ".join(f"peak MB r{i}" for i in range(args.nproc))
    lines = [f"| strategy | {ranks} | step s | tokens/s | loss@{args.steps} |",
             "|" + "---|" * (args.nproc + 4)]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['strategy']} | {r['error']} |")
            continue
        peaks = " | ".join(f"{p:,.0f}" for p in r["peak_ranks"])
        lines.append(
            f"| {r['strategy']} | {peaks} | {r['step_s']:.3f} | {r['tokens_s']:,.0f} "
            f"| {r['loss']:.4f} |"
        )
    return head + "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument(
        "--preset",
        nargs="+",
        default=None,
        help="BERT presets (default: small on CPU, base large on GPU)",
    )
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES)
    )
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp dir)")
    args = parser.parse_args()
    presets = args.preset or (["base", "large"] if _has_cuda() else ["small"])
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-zero-"))
    out.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        rows = []
        for name in args.strategies:
            rows.append(run_one(name, args, preset, out))
            print(f"  {preset} {name}: done", file=sys.stderr, flush=True)
        print(table(preset, rows, args), flush=True)
    print(f"\nruns and logs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
