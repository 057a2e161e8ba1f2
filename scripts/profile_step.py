#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over our engine, by phase and by op.

    python scripts/profile_step.py --preset mini             # BERT-mini, seq 128, batch 32
    python scripts/profile_step.py --preset tiny --set engine.mixed_precision=bf16

The engine marks its phases (data, forward, backward, clip, optimizer; pipeline/engine/train.py)
with torch.profiler.record_function; the rest of a step (guards, counters, logging) is
"other". After --warmup untimed steps, --steps steps are profiled; the table gives each phase's
share of the step and milliseconds per step, and the heaviest ops inside forward+backward
(matmuls, attention, LM head and loss, embedding gradients, elementwise).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.bench import report  # noqa: E402
from pipeline.bench.cases import QUIET, prepare, run_config  # noqa: E402

PHASES = ("data", "forward", "backward", "clip", "optimizer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="mini")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("/tmp/profile-step"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from pipeline.engine.train import Trainer

    args = parse_args(argv)
    base = ["data.path=[embedded:bible]", f"data.block_size={args.block}",
            "tokenizer.vocab_size=8192", f"model.preset={args.preset}",
            f"model.max_position_embeddings={max(128, args.block)}",
            f"train.micro_batch_size={args.batch}", *QUIET]  # fmt: skip
    base += prepare(base, args.out / "prep")
    cfg = run_config([*base, *args.set, "train.log_every=1000000", "train.checkpoint_every=1000000",
                      f"train.max_steps={args.warmup + args.steps + 1}"], args.out / "run")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.module.train()
    trainer.t_start = time.time()
    for _ in range(args.warmup):
        trainer.train_step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        wall = (time.perf_counter() - t0) / args.steps
    phase_ms: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.name in PHASES:
            phase_ms[e.name] += e.cpu_time_total / 1000 / args.steps
    for e in prof.key_averages():
        if e.key not in PHASES and not e.key.startswith(
            ("autograd::", "Optimizer", "torch::autograd")
        ):
            ops[e.key] += e.self_cpu_time_total / 1000 / args.steps
    phase_ms["other"] = max(0.0, wall * 1000 - sum(phase_ms.values()))
    tokens = args.batch * args.block
    print(f"\n## Step time: BERT-{args.preset}, seq {args.block}, batch {args.batch} "
          f"({' '.join(args.set) or 'defaults'})\n")  # fmt: skip
    print(f"device: {report.device_name()}; torch threads {torch.get_num_threads()}; "
          f"{wall * 1000:.0f} ms/step = {tokens / wall:,.0f} tokens/s\n")  # fmt: skip
    rows = [[k, f"{phase_ms[k]:.1f}", f"{phase_ms[k] / (wall * 1000):.0%}"]
            for k in (*PHASES, "other")]  # fmt: skip
    print(report.markdown_table(["phase", "ms / step", "share"], rows))
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    print()
    print(report.markdown_table(["op (self time)", "ms / step"], [[k, f"{v:.1f}"] for k, v in top]))
    trainer.close()


if __name__ == "__main__":
    main()
