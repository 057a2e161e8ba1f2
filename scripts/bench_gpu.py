#!/usr/bin/env python
"""GPU throughput: our engine with every performance feature, each feature off in turn, and
transformers' Trainer + DataCollatorForLanguageModeling, on BERT-base, sequence 128, bf16.

    python scripts/bench_gpu.py                # CUDA: BERT-base, made to finish in < 5 minutes
    python scripts/bench_gpu.py --tiny         # any machine: a tiny BERT (automatic without CUDA)

Every row runs in its own process (peak memory = torch.cuda.max_memory_allocated there, peak
resident set on CPU) on the same model, the same packed blocks of the embedded corpus (a
WordPiece tokenizer with BERT-base's 30,522-token vocabulary trained on it, so nothing comes
from the network) and the same global batch. tokens/s is measured after a warm-up window that
absorbs compilation; MFU = tokens/s x (6 x parameters + attention FLOPs per token, with the
full prediction head) / the device's dense bf16 peak (pipeline/engine/metrics.py). Rows run
in order of importance and are skipped (and shown as skipped) once the time budget is spent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.bench import report  # noqa: E402
from pipeline.bench.cases import QUIET, Case, flops_per_token, prepare, run_interleaved  # noqa: E402
from pipeline.engine.metrics import peak_flops  # noqa: E402

# (row, overrides that turn the feature off); "all features" is the engine with none of them
FEATURES = [
    ("bf16 autocast", ["engine.mixed_precision=no"]),
    ("SDPA / FlashAttention", ["model.attn_implementation=eager"]),
    ("torch.compile", ["engine.compile=false"]),
    ("fused AdamW", ["optim.fused='off'"]),
    ("sparse prediction", ["objective.sparse_prediction=false"]),
    ("data loading (workers, pinned)", ["data.num_workers=0", "data.pin_memory=false"]),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny BERT (default when no CUDA)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per row")
    p.add_argument("--window", type=int, default=None, help="warm-up steps, not timed")
    p.add_argument("--micro-batch", type=int, default=None, help="examples per forward")
    p.add_argument("--compile", choices=["on", "off"], default=None,
                   help="torch.compile in 'all features' (default: on for CUDA, off for CPU)")  # fmt: skip
    p.add_argument("--rows", nargs="*", default=None,
                   help="only these rows: all, trainer, cuda-graphs, micro-batch, doc-attention, "
                        "varlen (flash-attn installed) or a feature name's first word (bf16, "
                        "sdpa, torch.compile, fused, sparse, data)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=270.0, help="stop starting rows after this")
    p.add_argument("--threads", type=int, default=None, help="torch threads per row (CPU)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
    tiny = args.tiny or not torch.cuda.is_available()
    s = (
        dict(preset="tiny", block=64, vocab=4096, micro=16, steps=12, window=4, workers=0)
        if tiny
        else dict(preset="base", block=128, vocab=30522, micro=256, steps=60, window=20, workers=4)
    )
    s["tiny"] = tiny
    s["steps"] = args.steps or s["steps"]
    s["window"] = args.window or s["window"]
    s["micro"] = args.micro_batch or s["micro"]
    s["compile"] = (args.compile or ("on" if torch.cuda.is_available() else "off")) == "on"
    return s


def all_features(s: dict) -> list[str]:
    return [
        "data.path=[embedded:bible]",
        f"data.block_size={s['block']}",
        f"data.num_workers={s['workers']}",
        "data.pin_memory=true",
        f"tokenizer.vocab_size={s['vocab']}",
        f"model.preset={s['preset']}",
        f"model.overrides={{vocab_size: {s['vocab']}}}",
        "model.attn_implementation=sdpa",
        "objective.mask_prob=0.3",
        "objective.sparse_prediction=true",
        f"train.micro_batch_size={s['micro']}",
        f"train.global_batch_size={s['micro']}",
        f"optim.warmup_steps={s['window']}",
        "optim.fused='on'",  # quoted: YAML reads a bare on/off as a boolean
        "engine.mixed_precision=bf16",
        f"engine.compile={str(s['compile']).lower()}",
        *QUIET,
    ]


def rows(s: dict, base: list[str], trainer_data: str) -> list[tuple[str, Case]]:
    """(key, case) in order of importance: the comparison first, then each feature off."""

    def case(name: str, runner: str, extra: list[str]) -> Case:
        return Case(name, runner, [*base, *extra], s["steps"], s["window"],
                    extra={"trainer_data": trainer_data})  # fmt: skip

    out = [("all", case("ours, all features", "ours", [])),
           ("trainer", case("Trainer + DataCollatorForLanguageModeling", "trainer", []))]  # fmt: skip
    for label, off in FEATURES:
        if label == "torch.compile" and not s["compile"]:
            continue  # already off in "all features"
        key = label.split()[0].lower().replace("/", "")
        out.append((key, case(f"- {label}", "ours", off)))
    small = max(1, s["micro"] // 8)
    out.append(("micro-batch", case(f"- large micro-batch ({small} x {s['micro'] // small} accumulation)",
                                    "ours", [f"train.micro_batch_size={small}"])))  # fmt: skip
    if torch.cuda.is_available() and s["compile"]:
        out.append(("cuda-graphs", case("+ CUDA graphs", "ours", ["engine.cuda_graphs=true"])))
    # packed documents kept apart: a block-diagonal mask through SDPA, or (flash-attn
    # installed) no mask at all, the documents as FlashAttention varlen segments
    doc = ["data.document_attention=true"]
    out.append(("doc-attention", case("+ document attention (SDPA mask)", "ours", doc)))
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        varlen = [*doc, "model.attn_implementation=flash_attention_2"]
        out.append(
            ("varlen", case("+ document attention (FlashAttention-2 varlen)", "ours", varlen))
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    size = "BERT-tiny (CPU smoke run)" if s["tiny"] else "BERT-base"
    print(report.header(f"Throughput: {size}, sequence {s['block']}, bf16"), flush=True)
    base = all_features(s)
    base += prepare(base, out / "data")
    selected = rows(s, base, str(out / "data" / "trainer_data"))
    if args.rows:
        selected = [(k, c) for k, c in selected if k in args.rows]
    cases = [c for _, c in selected]
    got = run_interleaved(cases, out, 1, args.threads, budget_s=args.budget_s)

    from pipeline.data.tokenizer import load_tokenizer

    vocab = len(load_tokenizer(str(out / "data" / "tokenizer")))
    fpt = flops_per_token(base, vocab)
    peak = peak_flops(torch.device("cuda" if torch.cuda.is_available() else "cpu"), None)
    ref = got[cases[0].name].get("tokens_per_s")
    table = []
    for c in cases:
        r = got[c.name]
        if "error" in r:
            table.append([c.name, r["error"], "-", "-", "-", "-"])
            continue
        tps = r["tokens_per_s"]
        mfu = f"{tps * fpt / peak:.1%}" if peak else "n/a"
        table.append([c.name, tps, report.ratio(tps, ref), mfu, r["peak_mem_mb"], r["loss"]])
    tokens = s["micro"] * s["block"]
    print(f"\n{s['preset']}: {fpt / 1e9:.3g} GFLOP/token (6 x params + attention), global batch "
          f"{s['micro']} x {s['block']} = {tokens} tokens, {s['steps']} steps, first "
          f"{s['window']} not timed; peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}\n")  # fmt: skip
    headers = ["configuration", "tokens/s", "vs all", "MFU", "peak MB", "loss"]
    print(report.markdown_table(headers, table), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"settings": s, "flops_per_token": fpt, "rows": got}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
