#!/usr/bin/env python
"""The sweep behind the MLM recipe defaults: held-out loss after a fixed number of steps, per
model size and setting, scored by the stock-transformers one-document evaluation.

    python scripts/sweep_mlm.py                                       # tiny + mini, LR grid
    python scripts/sweep_mlm.py --presets tiny --block 64 --steps 300 --grid optim.lr=5e-4,1e-3,2e-3
    python scripts/sweep_mlm.py --grid optim.warmup_steps=20,100 --set optim.lr=1e-3

Step budgets, not time budgets: a sweep is read for which setting learns most per step at a
given size, and steps do not depend on how loaded the machine is (BENCHMARKS.md turns steps
into seconds with the measured step times). Every run starts from the same seed and batches;
`--set` overrides apply to every run, `--grid KEY=V1,V2,...` is the axis swept (an `auto` value
leaves the recipe's default in place, e.g. optim.lr=auto: the size-following default).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bench import quality, report  # noqa: E402
from pipeline.bench.cases import QUIET, prepare, worker_env  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="configs/mlm/tiny.yaml")
    p.add_argument("--presets", nargs="+", default=["tiny", "mini"])
    p.add_argument("--block", type=int, default=128, help="data.block_size")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    p.add_argument("--grid", default="optim.lr=auto,5e-4,1e-3,2e-3,4e-3",
                   help="KEY=V1,V2,...: the swept setting")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="for every run")
    p.add_argument("--eval-docs", type=int, default=256, help="held-out documents scored")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def run(args: argparse.Namespace, overrides: list[str], out: Path) -> Path:
    cmd = [sys.executable, "-m", "pipeline", "train", args.recipe, *overrides,
           f"train.max_steps={args.steps}", "train.eval_every=0", "train.resume=never",
           f"train.checkpoint_every={args.steps}", "log.progress_bar=false", "log.plots=false",
           "log.trackers=[]", "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(None), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    from pipeline.export import export_run

    return export_run(out)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="sweep-mlm-"))
    key, _, values = args.grid.partition("=")
    docs = quality.heldout_documents(args.eval_docs)
    results = []
    for preset in args.presets:
        base = ["data.path=[embedded:bible]", f"data.block_size={args.block}",
                f"model.preset={preset}", f"model.max_position_embeddings={max(args.block, 128)}",
                *args.set]  # fmt: skip
        # the same tokenizer and blocks for all
        base += prepare([*base, *QUIET], work / f"prep-{preset}", args.recipe)
        for value in values.split(","):
            setting = [] if value == "auto" else [f"{key}={value}"]
            out = work / f"{preset}-{key}-{value}"
            print(f"  {preset}: {key}={value}", flush=True)
            score = quality.evaluate_folder(run(args, [*base, *setting], out), docs, args.block)
            info = json.loads((out / "run_info.json").read_text())
            results.append({"preset": preset, key: value, "lr": info.get("lr"), **score})
    baseline = quality.frequent_token_baseline(docs, work / f"prep-{args.presets[0]}" / "tokenizer",
                                               args.block)  # fmt: skip
    print(
        f"\n## {key} sweep: {args.steps} steps, seq {args.block}, {args.recipe} {' '.join(args.set)}\n"
    )
    print(f"held-out: {len(docs)} chapters, one per sequence, 15% masked; most-frequent-token "
          f"accuracy {baseline:.3f}\n")  # fmt: skip
    rows = [[r["preset"], r[key], f"{r['lr']:.2g}" if r.get("lr") else "-", f"{r['loss']:.3f}",
             f"{r['accuracy']:.3f}"] for r in results]  # fmt: skip
    print(report.markdown_table(["preset", key, "lr used", "held-out loss", "accuracy"], rows))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "baseline": baseline}, indent=1))
    return results


if __name__ == "__main__":
    main()
