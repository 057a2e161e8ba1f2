#!/usr/bin/env python
"""Time to quality: held-out masked-token loss of ours vs transformers' Trainer at equal
wall-clock budgets (pipeline/bench/quality.py says how both are scored).

    python scripts/bench_quality.py                           # BERT-mini, seq 128, 150 s and 600 s
    python scripts/bench_quality.py --budgets 60 --preset tiny --repeats 1   # quick
    python scripts/bench_quality.py --recipe configs/mlm/tiny.yaml --set optim.lr=1e-3

Ours runs a shipped recipe with the size changed on the command line (`--recipe` + model.preset
+ data.block_size), as a user would, with `train.max_time_s` as its budget (the LR schedule
follows that budget). Prints the final held-out loss and accuracy of both per budget (median
over --repeats, runs alternating), the most-frequent-token baseline, and writes a PNG of
held-out loss against training seconds for both (--plot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bench import quality, report  # noqa: E402
from pipeline.bench.cases import QUIET, prepare, run_config, worker_env  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="configs/mlm/tiny.yaml", help="our recipe")
    p.add_argument("--preset", default="mini", help="model.preset for both")
    p.add_argument("--block", type=int, default=128, help="data.block_size for both")
    p.add_argument("--batch", type=int, default=32, help="train.micro_batch_size for both")
    p.add_argument("--budgets", type=float, nargs="+", default=[150, 600], help="seconds")
    p.add_argument("--snapshots", type=int, default=5, help="snapshots per run (the curve)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side per budget")
    p.add_argument("--trainer-lr", type=float, default=1e-3)
    p.add_argument("--trainer-warmup", type=int, default=20)
    p.add_argument("--eval-docs", type=int, default=512, help="held-out documents scored")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra overrides for OUR run only (e.g. optim.lr=1e-3)")  # fmt: skip
    p.add_argument("--sides", nargs="+", default=["ours", "trainer"], choices=["ours", "trainer"],
                   help="run only one side (a sweep of our settings)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=Path("quality.png"))
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def shared(args: argparse.Namespace) -> list[str]:
    """What both sides share: data, tokenizer size, model, batch (the Trainer reads these)."""
    return [
        "data.path=[embedded:bible]", f"data.block_size={args.block}",
        "tokenizer.vocab_size=8192", f"model.preset={args.preset}",
        f"model.max_position_embeddings={max(args.block, 128)}",
        f"train.micro_batch_size={args.batch}",
    ]  # fmt: skip


def run_ours(args, base: list[str], budget: float, out: Path) -> list[tuple[float, Path]]:
    every = budget / args.snapshots
    cmd = [sys.executable, "-m", "pipeline", "train", args.recipe, *base, *args.set,
           f"train.max_time_s={budget}", "train.max_steps=10000000", "train.log_every=50",
           f"train.checkpoint_every_s={every}", "train.checkpoint_every=10000000",
           f"train.keep_checkpoints={args.snapshots + 2}", "train.eval_every=0",
           "train.resume=never", "log.progress_bar=false", "log.plots=false", "log.trackers=[]",
           "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(None), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    from pipeline.export import export_run

    snaps = []
    for ckpt in sorted((out / "checkpoints").glob("step-*")):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        folder = export_run(out, ckpt)
        dest = out / "snapshots" / f"t-{state['elapsed_s']:08.2f}-s{state['step']}"
        dest.parent.mkdir(exist_ok=True)
        folder.rename(dest)
        snaps.append((state["elapsed_s"], dest))
    return snaps


def run_trainer(args, base: list[str], budget: float, data: Path, out: Path):
    spec = {"overrides": base, "recipe": args.recipe, "output_dir": str(out), "budget_s": budget,
            "snapshots": args.snapshots, "trainer_lr": args.trainer_lr,
            "trainer_warmup": args.trainer_warmup, "trainer_data": str(data)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench.quality", json.dumps(spec)],
                          cwd=ROOT, env=worker_env(None), capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return [(float(p.name.split("-")[1]), p) for p in sorted((out / "snapshots").iterdir())]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    base = shared(args)
    # tokenizer + blocks, once and untimed
    token_overrides = prepare([*base, *QUIET], work / "prep", args.recipe)
    base = [*base, *token_overrides]
    data = work / "prep" / "trainer_data"
    docs = quality.heldout_documents(args.eval_docs)
    curves: dict[tuple[float, str], list[list[tuple[float, dict]]]] = {}
    for budget in args.budgets:
        for r in range(args.repeats):
            order = ["ours", "trainer"] if r % 2 == 0 else ["trainer", "ours"]
            for side in (s for s in order if s in args.sides):
                out = work / f"{side}-{budget:g}-{r}"
                print(f"  {side}: {budget:g} s (repeat {r + 1})", flush=True)
                snaps = (run_ours(args, base, budget, out) if side == "ours"
                         else run_trainer(args, base, budget, data, out))  # fmt: skip
                scored = [(t, quality.evaluate_folder(p, docs, args.block)) for t, p in snaps]
                curves.setdefault((budget, side), []).append(scored)
    baseline = quality.frequent_token_baseline(docs, work / "prep" / "tokenizer", args.block)
    rows, results = [], {}
    for budget in args.budgets:
        finals = {s: [c[-1][1] for c in curves.get((budget, s), [])] for s in ("ours", "trainer")}
        finals = {s: f for s, f in finals.items() if f}
        finals.setdefault("ours", finals.get("trainer"))  # one side only: the table repeats it
        finals.setdefault("trainer", finals["ours"])
        med = {s: {k: statistics.median(f[k] for f in finals[s]) for k in ("loss", "accuracy")}
               for s in finals}  # fmt: skip
        spread = {s: (min(f["loss"] for f in finals[s]), max(f["loss"] for f in finals[s]))
                  for s in finals}  # fmt: skip
        results[f"{budget:g}"] = {"median": med, "loss_range": spread}
        rows.append([f"{budget:g} s", f"{med['ours']['loss']:.3f}", f"{med['ours']['accuracy']:.3f}",
                     f"{med['trainer']['loss']:.3f}", f"{med['trainer']['accuracy']:.3f}",
                     f"{med['trainer']['loss'] - med['ours']['loss']:+.3f}"])  # fmt: skip
    family = run_config(base, None, args.recipe).model.name
    print(f"\n## Time to quality: {family}-{args.preset} ({args.recipe}), seq {args.block}, "
          f"batch {args.batch}\n")  # fmt: skip
    print(f"device: {report.device_name()}; held-out: {len(docs)} validation chapters, one per "
          f"sequence, 15% masked; most-frequent-token accuracy {baseline:.3f}; "
          f"{args.repeats} run(s) per side, medians\n")  # fmt: skip
    print(
        report.markdown_table(
            ["budget", "ours loss", "ours acc", "Trainer loss", "Trainer acc", "Trainer - ours"],
            rows,
        )
    )
    _plot(curves, args.plot)
    print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "baseline": baseline, "curves": {
            f"{b:g}/{s}": [[(t, m) for t, m in c] for c in cs] for (b, s), cs in curves.items()
        }}, indent=1, default=float))  # fmt: skip
    return results


def _plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"ours": "tab:blue", "trainer": "tab:orange"}
    for (budget, side), runs in sorted(curves.items()):
        for i, c in enumerate(runs):
            ax.plot([t for t, _ in c], [m["loss"] for _, m in c], "o-", color=colors[side],
                    alpha=0.5 + 0.5 * (budget == max(b for b, _ in curves)),
                    label=f"{'ours' if side == 'ours' else 'Trainer'} ({budget:g} s)" if i == 0 else None)  # fmt: skip
    ax.set(xlabel="training seconds", ylabel="held-out masked-token loss (nats)",
           title="time to quality: ours vs transformers' Trainer")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
