#!/usr/bin/env python
"""Our trainer vs transformers' Trainer + DataCollatorForLanguageModeling (run_mlm.py), on CPU.

    python scripts/bench_mlm.py                         # tiny and mini, 3 alternating repeats
    python scripts/bench_mlm.py --presets tiny --repeats 1 --steps 20 --window 10

Two tables from one run:
1. training: tokens/s and peak memory per model preset, each configuration in its own process
   (peak memory is that process's peak resident set; on GPU torch.cuda.max_memory_allocated);
   same model, same packed blocks of the embedded corpus, same batch, steps and optimizer;
   runs alternate (ours, Trainer, Trainer, ours, ...) and the medians are shown;
2. data preparation: our one-pass tokenize + pack vs run_mlm's tokenize
   (return_special_tokens_mask) + group_texts, WordPiece tokens of the corpus per second.
Targets (issue 2): training >= 1.5x the Trainer's tokens/s with no more peak memory; data
preparation >= 1.0x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bench import prep, report  # noqa: E402
from pipeline.bench.cases import QUIET, Case, prepare, run_config, run_interleaved  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "mini"], help="BERT size presets")
    p.add_argument("--block", type=int, default=128, help="tokens per block (data.block_size)")
    p.add_argument("--micro-batch", type=int, default=32, help="examples per step")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--window", type=int, default=10, help="warm-up steps, not timed")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (alternating)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (same for all)")
    p.add_argument("--prep-repeats", type=int, default=3, help="data preparation repeats")
    p.add_argument("--prep-docs", type=int, default=0, help="documents for the data table (0=all)")
    p.add_argument("--skip-prep", action="store_true", help="no data preparation table")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for both runners, e.g. model.dropout=0.0")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace, preset: str) -> list[str]:
    return [
        "data.path=[embedded:bible]",
        f"data.block_size={args.block}",
        "tokenizer.vocab_size=8192",
        f"model.preset={preset}",
        f"model.max_position_embeddings={max(args.block, 128)}",
        f"train.micro_batch_size={args.micro_batch}",
        f"optim.warmup_steps={args.window}",
        *QUIET,
        *args.set,
    ]


def training_table(args: argparse.Namespace, out: Path) -> tuple[str, list[dict]]:
    rows, results = [], []
    for preset in args.presets:
        overrides = base_overrides(args, preset)
        overrides += prepare(overrides, out / "data")
        data = {"trainer_data": str(out / "data" / "trainer_data")}
        cases = [
            Case(f"{preset} ours", "ours", overrides, args.steps, args.window),
            Case(f"{preset} Trainer", "trainer", overrides, args.steps, args.window, extra=data),
        ]
        print(f"{preset}: {len(cases)} configurations x {args.repeats} runs", flush=True)
        got = run_interleaved(cases, out, args.repeats, args.threads)
        ours, peer = got[cases[0].name], got[cases[1].name]
        results.append({"preset": preset, "ours": ours, "trainer": peer})
        for label, r in (("ours", ours), ("Trainer", peer)):
            if "error" in r:
                rows.append([preset, label, r["error"], "-", "-", "-", "-", "-"])
                continue
            runs = r["tokens_per_s_all"]
            rows.append([
                preset, label, r["tokens_per_s"], f"{min(runs):,.0f}-{max(runs):,.0f}",
                report.ratio(r["tokens_per_s"], peer.get("tokens_per_s")),
                r["peak_mem_mb"], report.ratio(r["peak_mem_mb"], peer.get("peak_mem_mb")), r["loss"],
            ])  # fmt: skip
    headers = ["model", "trainer", "tokens/s (median)", "runs (min-max)", "vs Trainer", "peak MB",
               "vs Trainer", "loss"]  # fmt: skip
    return report.markdown_table(headers, rows), results


def prep_table(args: argparse.Namespace, out: Path) -> tuple[str, dict]:
    from pipeline.data import sources
    from pipeline.data.tokenizer import load_tokenizer

    cfg = run_config(base_overrides(args, args.presets[0]))
    ds = sources.load(sources.resolve(cfg.data.path, None, "train"))
    if args.prep_docs:
        ds = ds.select(range(min(args.prep_docs, len(ds))))
    tok = load_tokenizer(str(out / "data" / "tokenizer"))
    got = prep.compare(ds, tok, cfg.data.text_column, args.block, args.prep_repeats)
    peer = got["run_mlm"]["tokens_per_s"]
    rows = [
        [name, f"{len(ds):,} docs", r["corpus_tokens"], r["seconds"], r["tokens_per_s"],
         report.ratio(r["tokens_per_s"], peer), r["blocks"]]
        for name, r in (("ours: tokenize+pack", got["ours"]),
                        ("run_mlm: tokenize+group_texts", got["run_mlm"]))
    ]  # fmt: skip
    headers = ["data preparation", "corpus", "tokens", "s", "tokens/s", "vs run_mlm", "blocks"]
    return report.markdown_table(headers, rows), got


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-mlm-"))
    print(report.header("MLM training: ours vs transformers' Trainer (run_mlm.py)"), flush=True)
    table, results = training_table(args, out)
    tokens = args.micro_batch * args.block
    print(f"\nblock {args.block}, micro batch {args.micro_batch} ({tokens} tokens/step), "
          f"{args.steps} steps of which the first {args.window} are not timed, "
          f"{args.threads} thread(s), median of {args.repeats} alternating runs\n")  # fmt: skip
    print(table, flush=True)
    prep_results = None
    if not args.skip_prep:
        ptable, prep_results = prep_table(args, out)
        print(f"\n{ptable}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"training": results, "prep": prep_results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
