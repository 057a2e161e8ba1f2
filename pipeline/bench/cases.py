"""Benchmark cases: our engine vs transformers' Trainer on the same RunConfig, one process each.

Both runners are built from ONE RunConfig (our YAML schema + `key=value` overrides): the same
BERT (preset, init seed, attention kernel), the same packed blocks of the embedded corpus, the
same micro/global batch, steps, AdamW hyperparameters, schedule and precision. The Trainer is
driven the way transformers' examples/pytorch/language-modeling/run_mlm.py drives it: a dataset
with run_mlm's columns (input_ids, token_type_ids, attention_mask, special_tokens_mask, as its
tokenize + group_texts produce) and `DataCollatorForLanguageModeling`; everything else is
TrainingArguments' default (fused AdamW, no compile), plus the config's precision and workers.

Each case runs in a fresh process (`python -m pipeline.bench.worker`), so the peak memory it
reports is its own: the process's peak resident set on CPU, `torch.cuda.max_memory_allocated`
on GPU. Throughput is tokens per second over the steps after a warm-up window (allocations,
compilation and the first batches excluded), measured the same way for both runners.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULT_TAG = "BENCH_RESULT "

# what every benchmark run turns off: evaluation, export, plots, trackers, progress bars
QUIET = [
    "train.eval_every=0",
    "train.export=false",
    "train.resume=never",
    "data.max_eval_examples=16",
    "log.progress_bar=false",
    "log.plots=false",
    "log.trackers=[]",
]


@dataclass
class Case:
    """One row of a table: a runner ("ours" or "trainer") on a RunConfig given as overrides."""

    name: str
    runner: str
    overrides: list[str]
    steps: int
    window: int
    """Warm-up steps (not timed); our engine also logs every `window` steps."""
    timeout_s: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_config(
    overrides: list[str], output_dir: str | Path | None = None, recipe: str | Path | None = None
) -> Any:
    """The run config of a benchmark side: `recipe` (None = the defaults) + overrides."""
    from pipeline import config as config_lib
    from pipeline.train_config import RunConfig

    extra = [f"output_dir={output_dir}"] if output_dir else []
    return config_lib.load_config(RunConfig, recipe, [*overrides, *extra])


class _OneProcess:
    """The slice of an Accelerator that data preparation needs, for the benchmark's parent."""

    process_index, num_processes, is_main_process = 0, 1, True
    device = torch.device("cpu")

    def main_process_first(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def local_main_process_first(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def prepare(overrides: list[str], out: Path, recipe: str | Path | None = None) -> list[str]:
    """Tokenizer and packed blocks, once, before any timed process starts (of `recipe`'s
    config with the overrides, so the tokenizer is the family's).

    Writes OUT/tokenizer and OUT/trainer_data (the blocks with run_mlm's columns); returns the
    overrides that make our engine load that tokenizer (and so hit the packed-data cache)."""
    import datasets
    import numpy as np

    from pipeline.data import text
    from pipeline.engine.context import EngineContext
    from pipeline.models.base import encoder_family

    out.mkdir(parents=True, exist_ok=True)
    cfg = run_config(overrides, out, recipe)
    ctx = EngineContext(cfg=cfg, run_dir=out, accelerator=_OneProcess())  # type: ignore[arg-type]
    family = encoder_family(cfg.model.name, "mlm")
    corpus = text.load_corpus(ctx)
    # the family's own tokenizer (byte-level BPE for RoBERTa/ModernBERT), as a run trains it
    tok = text.get_tokenizer(ctx, corpus, trainer=family.tokenizer_trainer())  # -> OUT/tokenizer
    train, _ = text.packed(ctx, corpus, tok, family.block_template(tok))
    target = out / "trainer_data"
    if not (target / "dataset_info.json").is_file():
        ids = np.asarray(train.with_format("numpy")[:]["input_ids"], dtype=np.int64)
        special = np.isin(ids, sorted(set(tok.all_special_ids))).astype(np.int8)
        datasets.Dataset.from_dict(
            {
                "input_ids": ids,
                "token_type_ids": np.zeros_like(ids, dtype=np.int8),
                "attention_mask": np.ones_like(ids, dtype=np.int8),
                "special_tokens_mask": special,
            }
        ).save_to_disk(str(target))
    return [f"tokenizer.name_or_path={out / 'tokenizer'}"]


def flops_per_token(overrides: list[str], vocab_size: int) -> float:
    """Model training FLOPs per token, as the engine counts them for MFU (the family's
    `flops_per_token` with the LM head on the masked fraction), on a parameter-free (meta)
    copy of the model."""
    from pipeline import registry

    cfg = run_config(overrides)
    family = registry.get("model", cfg.model.name)
    with torch.device("meta"):
        model = family.build_masked_lm(cfg.model, vocab_size, 0)
    predicted = cfg.objective.mask_prob if cfg.objective.sparse_prediction else 1.0
    return family.flops_per_token(model, cfg.data.block_size, predicted)


def worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_case(case: Case, out: Path, threads: int | None = None) -> dict[str, Any]:
    """Run `case` in a fresh process; its result dict, or {"error": ...} if it failed."""
    run_dir = out / "runs" / case.name.replace(" ", "_").replace("/", "_")
    n = 0
    while (run_dir.parent / f"{run_dir.name}-{n}").exists():
        n += 1
    run_dir = run_dir.parent / f"{run_dir.name}-{n}"
    spec = {**asdict(case), "output_dir": str(run_dir), "threads": threads}
    cmd = [sys.executable, "-m", "pipeline.bench.worker", json.dumps(spec)]
    start = time.time()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=worker_env(threads), capture_output=True, text=True,
            timeout=case.timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"name": case.name, "error": f"timed out after {case.timeout_s:.0f} s"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "worker.log").write_text(proc.stdout + proc.stderr)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"name": case.name, "error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result["wall_s"] = time.time() - start
    return result


def run_interleaved(
    cases: list[Case],
    out: Path,
    repeats: int,
    threads: int | None = None,
    log=print,
    budget_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Every case `repeats` times, alternating the order (A B, B A, ...) so load changes on a
    shared machine hit all cases alike; per case the median tokens/s and peak memory.

    With `budget_s`, a case is skipped when the slowest case so far would end past it."""
    runs: dict[str, list[dict]] = {c.name: [] for c in cases}
    start, slowest = time.time(), 0.0
    for r in range(repeats):
        for case in cases if r % 2 == 0 else cases[::-1]:
            if budget_s is not None and time.time() - start + slowest > budget_s:
                runs[case.name].append({"name": case.name, "error": "skipped: time budget"})
                continue
            t0 = time.time()
            result = run_case(case, out, threads)
            slowest = max(slowest, time.time() - t0)
            runs[case.name].append(result)
            shown = result.get("error") or (
                f"{result['tokens_per_s']:.0f} tok/s, {result['peak_mem_mb']:.0f} MB"
            )
            log(f"  [{r + 1}/{repeats}] {case.name}: {shown}")
    return {name: summarize(results) for name, results in runs.items()}


def summarize(results: list[dict]) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"error": results[-1]["error"] if results else "not run"}
    summary = dict(ok[-1])
    for key in ("tokens_per_s", "peak_mem_mb", "step_time_s"):
        summary[key] = statistics.median(r[key] for r in ok)
    summary["tokens_per_s_all"] = [round(r["tokens_per_s"], 1) for r in ok]
    summary["runs"] = len(ok)
    return summary
