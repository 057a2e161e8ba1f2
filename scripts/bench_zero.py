#!/usr/bin/env python
"""Per-process memory and step time of DDP, ZeRO-1/2/3 and ZeRO-3 + CPU offload, 2 processes.

    python scripts/bench_zero.py                          # BERT-large, seq 128, micro batch 2
    python scripts/bench_zero.py --preset base --steps 3  # quicker
    python scripts/bench_zero.py --checkpointing          # + activation checkpointing rows

Every configuration trains the same model on the same batches in its own launch
(`accelerate launch`, 2 processes; DeepSpeed on CPU with DS_ACCELERATOR=cpu here), and the table
reads what the engine itself records: the parameters each process holds right after the model
is built and its peak memory by then (RUN_DIR/run_info.json: `parameters`, `init_peak_mem_mb`:
ZeRO-3 builds the model partitioned), and the peak memory of each process after the timed steps
and their median step time (metrics.jsonl). On CPU, memory is the process's peak resident set
(interpreter and libraries included, ~0.6 GB of it); on GPU torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bench import report  # noqa: E402
from pipeline.bench.cases import worker_env  # noqa: E402

CONFIGS = {
    "DDP": ("ddp-cpu.yaml", ["engine.strategy=ddp"]),
    "ZeRO-1": ("deepspeed.yaml", ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero1.json"]),
    "ZeRO-2": ("deepspeed.yaml", ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero2.json"]),
    "ZeRO-3": ("deepspeed.yaml", ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero3.json"]),
    "ZeRO-3 + offload": ("deepspeed.yaml", ["engine.strategy=deepspeed", "engine.deepspeed_config=configs/deepspeed/zero3-offload.json"]),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="large", help="BERT size preset (default large, 335M)")
    p.add_argument("--block", type=int, default=128, help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=2, help="examples per process per step")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps (the first is not timed)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--checkpointing", action="store_true",
                   help="also run DDP and ZeRO-3 with model.gradient_checkpointing=true")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, accelerate_yaml: str, overrides: list[str], args, out: Path) -> dict:
    run_dir = out / name.replace(" ", "").replace("+", "-")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "configs" / "accelerate" / accelerate_yaml),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        "-m", "pipeline", "train", "configs/mlm/tiny.yaml",
        f"model.preset={args.preset}", f"data.block_size={args.block}",
        f"model.max_position_embeddings={max(512, args.block)}", "tokenizer.vocab_size=30522",
        f"train.micro_batch_size={args.micro_batch}", f"train.max_steps={args.steps}",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=100000",
        "data.max_eval_examples=8",  # the run's closing evaluation is not what is measured
        "train.export=false", "log.plots=false", "log.progress_bar=false", "log.trackers=[]",
        *overrides, "--output-dir", str(run_dir),
    ]  # fmt: skip
    env = worker_env(None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"config": name, "error": proc.stderr.strip().splitlines()[-1][:120]}
    info = json.loads((run_dir / "run_info.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    held = info["parameters"]["held_per_process"]
    return {
        "config": name,
        "parameters": info["parameters"]["total"],
        "held_per_process": held,
        "init_peak_mb": max(info["init_peak_mem_mb"]),
        "peak_mb": train[-1]["peak_mem_mb_max"],
        "step_s": statistics.median(r["step_time_s"] for r in train[1:])
        if len(train) > 1
        else None,
        "loss": train[-1]["loss"],
    }


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-zero-"))
    runs = [(n, *CONFIGS[n], []) for n in args.configs]
    if args.checkpointing:
        for n in ("DDP", "ZeRO-3"):
            runs.append(
                (f"{n} + checkpointing", *CONFIGS[n], ["model.gradient_checkpointing=true"])
            )
    results = []
    for name, yaml_name, overrides, extra in runs:
        print(f"  {name} ...", flush=True)
        results.append(launch(name, yaml_name, [*overrides, *extra], args, out))
    print(f"\n## ZeRO memory: BERT-{args.preset}, seq {args.block}, micro batch {args.micro_batch} "
          f"x 2 processes, {args.steps} steps\n")  # fmt: skip
    print(f"device: {report.device_name()}; versions: {report.versions()}\n")
    headers = [
        "config",
        "params held / process",
        "init peak MB",
        "peak MB / process",
        "step s",
        "loss",
    ]
    table = []
    for r in results:
        if "error" in r:
            table.append([r["config"], r["error"], "-", "-", "-", "-"])
            continue
        share = max(r["held_per_process"]) / r["parameters"]
        table.append([r["config"], f"{share:.0%} of {r['parameters'] / 1e6:.0f}M",
                      f"{r['init_peak_mb']:,.0f}", f"{r['peak_mb']:,.0f}",
                      f"{r['step_s']:.2f}" if r["step_s"] else "-", f"{r['loss']:.3f}"])  # fmt: skip
    print(report.markdown_table(headers, table))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
