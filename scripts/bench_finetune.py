"""Does pretraining help? Fine-tune our pretrained export and the same architecture from random
initialisation (same data, steps, batch, learning rate and seeds) and print both, in one run.

    python scripts/bench_finetune.py                      # pretrains configs/mlm/tiny.yaml first
    python scripts/bench_finetune.py --pretrained runs/tiny/export --steps 300

The default task is configs/finetune/bible-sections.yaml: which of six sections of the Bible a
24-word passage comes from, held out by chapter, with a few thousand labelled passages (the
regime where pretraining is worth most). Both fine-tunes run at the same time, one thread each.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python scripts/bench_finetune.py` from anywhere


def run(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, stdout=fh, stderr=fh
    )


def wait(proc: subprocess.Popen, log: Path) -> None:
    if proc.wait() != 0:
        sys.exit(f"{' '.join(map(str, proc.args))} failed; see {log}:\n{log.read_text()[-3000:]}")


def final_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "eval"][-1]


def majority_baseline(config: Path, overrides: list[str], export: Path) -> tuple[float, float, int]:
    """Always answering the most frequent held-out class: (accuracy, macro-F1, examples)."""
    from pipeline.config import load_config
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.finetune.data import load_labelled
    from pipeline.finetune.objective import load_tokenizer

    cfg = load_config(FinetuneConfig, config, [*overrides, f"model.from_pretrained={export}"])
    ctx = SimpleNamespace(cfg=cfg, main_first=contextlib.nullcontext)
    data = load_labelled(ctx, load_tokenizer(str(export)))
    counts = collections.Counter(data.eval["label"])
    rate = max(counts.values()) / len(data.eval)
    # F1 of the majority class is 2p/(1+p), every other class present scores 0
    return rate, 2 * rate / (1 + rate) / len(counts), len(data.eval)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", help="an export to fine-tune (default: pretrain one first)")
    p.add_argument("--pretrain-config", default="configs/mlm/tiny.yaml")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--config", default="configs/finetune/bible-sections.yaml")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    p.add_argument("--train-examples", type=int, default=3000, help="labelled examples")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="runs/bench-finetune")
    args = p.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    t0 = time.time()

    export = Path(args.pretrained).resolve() if args.pretrained else out / "pretrain" / "export"
    if not args.pretrained and not (export / "model.safetensors").is_file():
        print(f"pretraining {args.pretrain_config} for {args.pretrain_steps} steps ...", flush=True)
        log = out / "pretrain.log"
        wait(run(["train", args.pretrain_config, f"train.max_steps={args.pretrain_steps}",
                  "train.resume=never", "log.progress_bar=false", "--output-dir",
                  str(out / "pretrain")], log, env), log)  # fmt: skip
    t_pre = time.time() - t0

    overrides = [
        f"data.max_train_examples={args.train_examples}",
        f"optim.lr={args.lr}",
        f"train.max_steps={args.steps}",
        f"train.seed={args.seed}",
        "train.eval_every=0",
        "train.checkpoint_every=100000",
        "train.resume=never",
        "log.progress_bar=false",
        "log.trackers=[]",
    ]
    print(
        f"fine-tuning from {export} and from random init, {args.steps} steps each ...", flush=True
    )
    procs, times = {}, {}
    for init in ("pretrained", "random"):
        log = out / f"{init}.log"
        cmd = ["finetune", str(export), args.config, *overrides, f"model.init={init}",
               "--output-dir", str(out / init)]  # fmt: skip
        procs[init] = (run(cmd, log, env), log, time.time())
    for init, (proc, log, start) in procs.items():
        wait(proc, log)
        times[init] = time.time() - start
    results = {init: final_eval(out / init) for init in procs}
    majority, majority_f1, n_eval = majority_baseline(ROOT / args.config, overrides, export)

    print()
    print(f"task: {args.config}, {args.train_examples} labelled examples, "
          f"{n_eval} held out; {args.steps} steps, lr {args.lr}, seed {args.seed}")  # fmt: skip
    print(f"{'init':<12}{'accuracy':>10}{'macro-F1':>10}{'eval loss':>11}{'time':>8}")
    for init, r in results.items():
        print(f"{init:<12}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}{r['loss']:>11.3f}"
              f"{times[init]:>7.0f}s")  # fmt: skip
    print(
        f"{'majority':<12}{majority:>10.3f}{majority_f1:>10.3f}   (always the most frequent class)"
    )
    gain_acc = results["pretrained"]["accuracy"] - results["random"]["accuracy"]
    gain_f1 = results["pretrained"]["macro_f1"] - results["random"]["macro_f1"]
    verdict = "pretraining wins" if gain_acc > 0 and gain_f1 > 0 else "pretraining does NOT win"
    print(f"{verdict}: {gain_acc:+.3f} accuracy, {gain_f1:+.3f} macro-F1 "
          f"(pretraining took {t_pre:.0f}s; total {time.time() - t0:.0f}s)")  # fmt: skip


if __name__ == "__main__":
    main()
