"""Does pretraining help? Fine-tune our pretrained export and the same architecture from random
initialisation (same data, steps, batch, seeds and learning-rate grid) and print both, in one run.

    python scripts/bench_finetune.py      # pretrains configs/mlm/tiny-long.yaml once (12k steps)
    python scripts/bench_finetune.py --pretrained runs/tiny/export --lrs 1e-3

The default task is configs/finetune/bible-sections.yaml: which of six sections of the Bible a
24-word passage comes from, test passages held out by chapter (the corpus's validation
chapters). The learning rate is chosen for EACH start separately over the same grid, on a
validation split cut by chapter from the *training* chapters (never on the test chapters); the
chosen lr is then fine-tuned on the training chapters with each of --seeds (model init, data
order and dropout change with the seed) and scored on the test chapters; the verdict is on the
mean over seeds, and a win must hold on every seed. The pretraining (keyed by its recipe and
steps; an interrupted one resumes) and every fine-tune (keyed by its command, recipe and export)
are cached under --out and reused by later runs. Fine-tunes run two at a time, one thread each.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import statistics
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


def job_key(cmd: list[str], export: Path) -> str:
    """What a fine-tune's result depends on: its command (the export by content, not path), the
    recipe's content, and the export's config and tokenizer, plus its weights when loaded."""
    h = hashlib.sha256(json.dumps([c.replace(str(export), "EXPORT") for c in cmd]).encode())
    h.update((ROOT / cmd[2]).read_bytes())  # ["finetune", EXPORT, CONFIG, ...]
    names = ["config.json", "tokenizer.json", "tokenizer_config.json"]
    if "model.init=pretrained" in cmd:
        names.append("model.safetensors")
    for name in names:
        h.update(name.encode() + (export / name).read_bytes())
    return h.hexdigest()


def run_all(jobs: dict[str, list[str]], out: Path, env: dict, export: Path, parallel: int) -> dict:
    """Run `pipeline` commands `parallel` at a time, reusing a run whose key (`job_key`)
    matches; {name: seconds, or None if reused}."""
    pending, running, times = [], {}, {}
    for name, cmd in jobs.items():
        key = out / name / "bench-key.txt"
        done = key.is_file() and (out / name / "metrics.jsonl").is_file()
        if done and key.read_text() == job_key(cmd, export):
            times[name] = None
        else:
            pending.append((name, cmd))
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            log = out / f"{name}.log"
            running[name] = (run(cmd, log, env), log, time.time())
        time.sleep(0.5)
        for name, (proc, log, start) in list(running.items()):
            if proc.poll() is not None:
                wait(proc, log)
                times[name] = time.time() - start
                (out / name / "bench-key.txt").write_text(job_key(jobs[name], export))
                del running[name]
    return times


def final_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "eval"][-1]


def validation_split(out: Path, fraction: float, seed: int) -> tuple[Path, Path]:
    """The embedded corpus's *training* chapters cut by chapter into tune-train and tune-val
    files (both translations of a chapter on the same side); the test chapters are not read."""
    from pipeline.data import embedded

    rows = [json.loads(line) for line in open(embedded.materialize("bible")["train"])]
    chapters = sorted({(r["book"], r["chapter"]) for r in rows})
    random.Random(seed).shuffle(chapters)
    val = set(chapters[: round(len(chapters) * fraction)])
    paths = out / "tune-train.jsonl", out / "tune-val.jsonl"
    with open(paths[0], "w") as tr, open(paths[1], "w") as va:
        for r in rows:
            (va if (r["book"], r["chapter"]) in val else tr).write(json.dumps(r) + "\n")
    return paths


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


def masked_accuracy(pretrain_dir: Path) -> float | None:
    path = pretrain_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval" and "mlm_accuracy" in r]
    return evals[-1]["mlm_accuracy"] if evals else None


def common_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        f"data.max_train_examples={args.train_examples}",
        f"train.max_steps={args.steps}",
        f"train.seed={seed}",
        "train.eval_every=0",
        "train.checkpoint_every=100000",
        "train.resume=never",
        "log.progress_bar=false",
        "log.trackers=[]",
    ]


def finetune_cmd(args, export: Path, out: Path, init: str, lr: float, name: str, seed: int,
                 extra: list[str]) -> list:  # fmt: skip
    return ["finetune", str(export), args.config, *common_overrides(args, seed), *extra,
            f"optim.lr={lr}", f"model.init={init}", "--output-dir", str(out / name)]  # fmt: skip


def tune_overrides(args: argparse.Namespace, out: Path) -> list[str]:
    tr, va = validation_split(out, args.val_fraction, args.seed)
    return [f"data.path=[{tr}]", f"data.eval_path=[{va}]",
            f"data.max_eval_examples={args.val_examples}"]  # fmt: skip


def pretrain(args: argparse.Namespace, out: Path, env: dict) -> tuple[Path, float | None]:
    """Pretrain the recipe once into out/pretrain-NAME-STEPS, keyed by the recipe's content and
    steps: a finished run with the same key is reused, an interrupted one resumes, a run of a
    changed recipe starts over. Returns the run folder and the seconds spent (None: reused)."""
    from pipeline.config import load_yaml

    recipe = ROOT / args.pretrain_config
    steps = args.pretrain_steps or load_yaml(recipe)["train"]["max_steps"]
    pre_dir = out / f"pretrain-{recipe.stem}-{steps}"
    key = hashlib.sha256(recipe.read_bytes() + f"max_steps={steps}".encode()).hexdigest()
    key_file = pre_dir / "bench-key.txt"
    same = key_file.is_file() and key_file.read_text() == key
    if same and (pre_dir / "export" / "model.safetensors").is_file():
        return pre_dir, None
    start = time.time()
    print(f"pretraining {args.pretrain_config} for {steps} steps ...", flush=True)
    pre_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    log = out / "pretrain.log"
    cmd = ["train", str(recipe), f"train.max_steps={steps}",
           f"train.resume={'auto' if same else 'never'}", "log.progress_bar=false",
           "--output-dir", str(pre_dir)]  # fmt: skip
    wait(run(cmd, log, dict(env, OMP_NUM_THREADS=str(os.cpu_count() or 1))), log)
    return pre_dir, time.time() - start


def _secs(t: float | None) -> str:
    return "reused" if t is None else f"{t:.0f}s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", help="an export to fine-tune (default: pretrain one first)")
    p.add_argument("--pretrain-config", default="configs/mlm/tiny-long.yaml")
    p.add_argument("--pretrain-steps", type=int, help="default: the pretraining recipe's")
    p.add_argument("--config", default="configs/finetune/bible-sections.yaml")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    p.add_argument("--train-examples", type=int, default=1000, help="labelled examples")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="lr grid, tuned for each start")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training chapters for lr")
    p.add_argument("--val-examples", type=int, default=1000, help="validation passages")
    p.add_argument("--seed", type=int, default=42, help="seed of the lr search and the split")
    p.add_argument("--seeds", default="42,43,44", help="seeds of the final fine-tunes")
    p.add_argument("--jobs", type=int, default=2, help="fine-tunes at a time (one thread each)")
    p.add_argument("--out", default="runs/bench-finetune")
    args = p.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    t0 = time.time()

    if args.pretrained:
        export = Path(args.pretrained).resolve()
        pre_dir, t_pre = export.parent, None
    else:
        pre_dir, t_pre = pretrain(args, out, env)
        export = pre_dir / "export"
    pre_note = (
        "no pretraining run (given or reused)"
        if t_pre is None
        else f"pretraining took {t_pre:.0f}s"
    )

    mlm_acc = masked_accuracy(pre_dir)

    def job(init: str, lr: float, name: str, extra: list[str], seed: int = args.seed) -> list:
        return finetune_cmd(args, export, out, init, lr, name, seed, extra)

    inits = ("pretrained", "random")
    grid = {}
    if len(lrs) > 1:
        tune = tune_overrides(args, out)
        jobs = {f"tune-{i}-lr{lr:g}": job(i, lr, f"tune-{i}-lr{lr:g}", tune)
                for i in inits for lr in lrs}  # fmt: skip
        print(f"choosing the lr of each start on validation chapters: {len(jobs)} runs of "
              f"{args.steps} steps ...", flush=True)  # fmt: skip
        run_all(jobs, out, env, export, args.jobs)
        grid = {(i, lr): final_eval(out / f"tune-{i}-lr{lr:g}") for i in inits for lr in lrs}
    best = {i: max(lrs, key=lambda lr: grid[(i, lr)]["accuracy"]) if grid else lrs[0]
            for i in inits}  # fmt: skip
    print(f"fine-tuning from {export} and from random init at "
          f"{', '.join(f'{i} lr {best[i]:g}' for i in inits)} ...", flush=True)  # fmt: skip
    finals = {(i, s): f"{i}-seed{s}" for i in inits for s in seeds}
    times = run_all({name: job(i, best[i], name, [], s) for (i, s), name in finals.items()},
                    out, env, export, args.jobs)  # fmt: skip
    runs = {key: final_eval(out / name) for key, name in finals.items()}
    results = {i: {m: statistics.mean(runs[(i, s)][m] for s in seeds)
                   for m in ("accuracy", "macro_f1", "loss")} for i in inits}  # fmt: skip
    overrides = common_overrides(args, args.seed)
    majority, majority_f1, n_eval = majority_baseline(ROOT / args.config, overrides, export)

    print()
    print(f"pretrained export: {export}"
          + (f" (held-out masked-token accuracy {mlm_acc:.3f})" if mlm_acc is not None else ""))  # fmt: skip
    print(f"task: {args.config}, {args.train_examples} labelled examples, {n_eval} test "
          f"passages from held-out chapters; {args.steps} steps, seeds {args.seeds}")  # fmt: skip
    if grid:
        print(f"validation accuracy / macro-F1 by lr (held-out training chapters, "
              f"{args.val_examples} passages max):")  # fmt: skip
        print(f"{'init':<12}" + "".join(f"{f'lr {lr:g}':>16}" for lr in lrs))
        for i in inits:
            cells = [f"{grid[(i, lr)]['accuracy']:.3f} / {grid[(i, lr)]['macro_f1']:.3f}"
                     for lr in lrs]  # fmt: skip
            print(f"{i:<12}" + "".join(f"{c:>16}" for c in cells))
    print("test (held-out chapters), each start at its best validation lr:")
    print(f"{'init':<12}{'seed':>6}{'lr':>8}{'accuracy':>10}{'macro-F1':>10}{'test loss':>11}"
          f"{'time':>8}")  # fmt: skip
    for (i, s), name in finals.items():
        r = runs[(i, s)]
        print(f"{i:<12}{s:>6}{best[i]:>8g}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}"
              f"{r['loss']:>11.3f}{_secs(times[name]):>8}")  # fmt: skip
    for i, r in results.items():
        print(f"{i:<12}{'mean':>6}{best[i]:>8g}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}"
              f"{r['loss']:>11.3f}")  # fmt: skip
    print(f"{'majority':<12}{'':>14}{majority:>10.3f}{majority_f1:>10.3f}   "
          f"(always the most frequent class)")  # fmt: skip
    gain_acc = results["pretrained"]["accuracy"] - results["random"]["accuracy"]
    gain_f1 = results["pretrained"]["macro_f1"] - results["random"]["macro_f1"]
    every_seed = all(runs[("pretrained", s)][m] > runs[("random", s)][m]
                     for s in seeds for m in ("accuracy", "macro_f1"))  # fmt: skip
    verdict = "pretraining wins" if every_seed else "pretraining does NOT win on every seed"
    print(f"{verdict}: {gain_acc:+.3f} accuracy, {gain_f1:+.3f} macro-F1 "
          f"({pre_note}; total {time.time() - t0:.0f}s)")  # fmt: skip


if __name__ == "__main__":
    main()
