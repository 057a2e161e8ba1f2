"""`python -m pipeline finetune-suite SUITE.yaml [key=value ...] [--output-dir DIR]`: fine-tune
one export on several tasks (GLUE-style) with several seeds, one `finetune` run each, and write
one table of the held-out scores: OUTPUT_DIR/results.md and results.json, mean ± sample standard
deviation over seeds.

A suite file (configs/finetune/glue.yaml):

    export: runs/bert-base/export     # the pretrained export every task starts from
    output_dir: runs/glue             # runs go to OUTPUT_DIR/TASK/seed-N
    seeds: [1, 2, 3]
    overrides: [train.max_steps=2000] # applied to every task (before the task's own)
    tasks:
      mrpc:
        recipe: configs/finetune/sst2.yaml   # optional: a fine-tuning recipe to start from
        config: {data: {...}, objective: {name: seqcls}}   # keys merged over the recipe
        overrides: [optim.lr=2e-5]
        metrics: [f1, accuracy]       # the table's columns, from export/eval_results.json

Scores are those each run writes at export (`eval_results.json`: per named eval set, e.g.
MNLI's matched and mismatched, scikit-learn/scipy scores as GLUE defines them). A run whose
results already exist is not run again, so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cli import command, config_parser, load_run_config


@dataclass
class SuiteTask:
    recipe: str | None = None
    """A fine-tuning recipe (path; relative paths are tried from the working directory, then
    from the suite file's folder)."""
    config: dict = field(default_factory=dict)
    """Config keys merged over the recipe (nested mappings, as in a recipe)."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides for this task, after the suite's."""
    metrics: list[str] = field(default_factory=list)
    """Scores to tabulate (keys of eval_results.json); default: every score."""

    def validate(self) -> list[str]:
        if self.recipe is None and not self.config:
            return ["needs a recipe or config"]
        return []


@dataclass
class SuiteConfig:
    export: str = ""
    """The pretrained export every task fine-tunes (a Hugging Face folder or Hub name)."""
    output_dir: str = "runs/finetune-suite"
    """Suite folder: TASK/seed-N run folders, results.md and results.json."""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Seeds (train.seed) each task runs with."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides for every task's fine-tuning config."""
    tasks: dict = field(default_factory=dict)
    """Task name -> {recipe, config, overrides, metrics} (see SuiteTask)."""

    def validate(self) -> list[str]:
        problems = []
        if not self.export:
            problems.append("export is required (the pretrained export to fine-tune)")
        if not self.seeds:
            problems.append("seeds must list at least one seed")
        if not self.tasks:
            problems.append("tasks must name at least one task")
        return problems


@command("finetune-suite", "fine-tune an export on several tasks x seeds; one results table")
def finetune_suite_command(argv: list[str]) -> int:
    parser = config_parser(
        "python -m pipeline finetune-suite",
        SuiteConfig,
        "Fine-tune one export on each task of a suite (e.g. configs/finetune/glue.yaml) with "
        "each seed, and write OUTPUT_DIR/results.md and results.json (mean ± std over seeds).",
    )
    args = parser.parse_intermixed_args(argv)
    suite = load_run_config(SuiteConfig, args)
    tasks = parse_tasks(suite, Path(args.config).parent)
    results = run_suite(suite, tasks)
    if int(os.environ.get("RANK", "0")) == 0:
        print(markdown_table(results, suite))
    return 0


def parse_tasks(suite: SuiteConfig, base: Path) -> dict[str, SuiteTask]:
    from pipeline.config import ConfigError, build

    tasks, problems = {}, []
    for name, raw in suite.tasks.items():
        task, errs = build(SuiteTask, raw if isinstance(raw, dict) else {}, f"tasks.{name}.")
        if not isinstance(raw, dict):
            errs = [f"tasks.{name} must be a mapping (recipe, config, overrides, metrics)"]
        problems += errs
        if task is not None and task.recipe and not Path(task.recipe).is_file():
            if (base / task.recipe).is_file():
                task.recipe = str(base / task.recipe)
            else:
                problems.append(f"tasks.{name}.recipe: no file {task.recipe!r}")
        tasks[name] = task
    if problems:
        raise ConfigError(problems, None)
    return tasks


def task_config(suite: SuiteConfig, name: str, task: SuiteTask, seed: int) -> Any:
    """The fine-tuning config of one (task, seed) run."""
    from pipeline.config import ConfigError, apply_overrides, build, load_yaml
    from pipeline.finetune.config import FinetuneConfig

    raw = load_yaml(task.recipe) if task.recipe else {}
    raw = _merge(raw, task.config)
    run_dir = Path(suite.output_dir) / name / f"seed-{seed}"
    overrides = [*suite.overrides, *task.overrides]
    overrides += [f"model.from_pretrained={suite.export}", f"train.seed={seed}",
                  f"output_dir={run_dir}"]  # fmt: skip
    cfg, problems = build(FinetuneConfig, apply_overrides(raw, overrides))
    if problems:
        raise ConfigError([f"task {name}: {p}" for p in problems], None)
    return cfg


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_suite(suite: SuiteConfig, tasks: dict[str, SuiteTask]) -> dict[str, Any]:
    """Run every (task, seed) not yet done; write and return the aggregated results."""
    from pipeline.commands.finetune import _check_source
    from pipeline.finetune.metrics import RESULTS_FILE
    from pipeline.workflow import train_and_export

    _check_source(suite.export)
    configs = {(n, s): task_config(suite, n, t, s) for n, t in tasks.items() for s in suite.seeds}
    scores: dict[str, dict[int, dict]] = {n: {} for n in tasks}
    for (name, seed), cfg in configs.items():  # every config checked before the first run
        path = Path(cfg.output_dir) / "export" / RESULTS_FILE
        if not path.is_file():
            train_and_export(cfg)
        if not path.is_file():
            from pipeline.data.sources import DataError

            raise DataError(
                f"task {name} seed {seed}: {path} was not written (no held-out data? set "
                "data.eval_path or data.eval_sets; train.export must be on)"
            )
        scores[name][seed] = json.loads(path.read_text())
    results = aggregate(scores, tasks, suite)
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(suite.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(markdown_table(results, suite) + "\n")
    return results


def aggregate(
    scores: dict[str, dict[int, dict]], tasks: dict[str, SuiteTask], suite: SuiteConfig
) -> dict[str, Any]:
    """{task: {eval set: {metric: {mean, std, values, seeds}}}}; std is the sample standard
    deviation over seeds (0 for one seed)."""
    table: dict[str, Any] = {}
    for name, by_seed in scores.items():
        seeds = sorted(by_seed)
        table[name] = {}
        for eval_set in by_seed[seeds[0]]:
            wanted = tasks[name].metrics or [k for k in by_seed[seeds[0]][eval_set] if k != "n"]
            row = {}
            for metric in wanted:
                values = [by_seed[s][eval_set].get(metric) for s in seeds]
                if any(v is None for v in values):
                    from pipeline.data.sources import DataError

                    have = sorted(by_seed[seeds[0]][eval_set])
                    raise DataError(f"task {name}: no score {metric!r} (scores: {have})")
                row[metric] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                    "seeds": seeds,
                }
            table[name][eval_set] = row
    return {"export": suite.export, "seeds": list(suite.seeds), "tasks": table}


def markdown_table(results: dict[str, Any], suite: SuiteConfig) -> str:
    n = len(results["seeds"])
    lines = [
        f"Fine-tuning `{results['export']}`: held-out scores, mean ± std over {n} seed"
        f"{'s' if n > 1 else ''} ({', '.join(map(str, results['seeds']))}).",
        "",
        "| task | eval set | metric | mean ± std | per seed |",
        "|---|---|---|---|---|",
    ]
    for task, sets in results["tasks"].items():
        for eval_set, row in sets.items():
            for metric, r in row.items():
                per_seed = ", ".join(f"{v:.4f}" for v in r["values"])
                lines.append(
                    f"| {task} | {eval_set} | {metric} | {r['mean']:.4f} ± {r['std']:.4f} "
                    f"| {per_seed} |"
                )
    return "\n".join(lines)
