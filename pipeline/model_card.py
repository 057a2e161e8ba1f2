"""The export's README.md: a Hugging Face model card.

YAML metadata (license, language, datasets, tags, library_name, pipeline_tag, base_model, and the
held-out results as `model-index`) is built with huggingface_hub's `ModelCardData`, so the Hub
and `ModelCard.load` read it back. The body says what the model was trained on, how (config,
steps, tokens), on what hardware and how fast, how it did on held-out data, and what it is for.
Works for pretraining runs (RunConfig) and fine-tuning runs (FinetuneConfig) alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipeline import config as config_lib
from pipeline import registry
from pipeline.objectives.base import Task
from pipeline.protocols import DataSection, RunConfig


def task_of(cfg: RunConfig) -> Task:
    """What the objective says its export is for (`Objective.task`)."""
    return registry.get("objective", cfg.objective.name).task


def _last(metrics: list[dict], split: str) -> dict:
    rows = [m for m in metrics if m.get("split") == split]
    return rows[-1] if rows else {}


def is_hub_id(name: str) -> bool:
    """A Hub dataset/model id (`imdb`, `stanfordnlp/sst2`), not a local path or `embedded:`."""
    return (
        ":" not in name
        and not name.startswith((".", "/", "~"))
        and name.count("/") <= 1
        and not Path(name).suffix
        and not Path(name).exists()
    )


def run_info(cfg: RunConfig) -> dict:
    """RUN_DIR/run_info.json as the trainer wrote it (how training ran), or {} when absent."""
    path = Path(cfg.output_dir) / "run_info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_CPU_NAMES = {
    "",
    "cpu",
    "x86_64",
    "amd64",
    "i386",
    "i686",
    "aarch64",
    "arm64",
    "arm",
    "ppc64le",
    "s390x",
}


def hardware(info: dict | None = None) -> str:
    """The training hardware from run_info.json (processes, device, distributed type, mixed
    precision); without one, this machine, said to be where the card was written."""
    if info and "num_processes" in info:
        world = int(info["num_processes"])
        procs = f"{world} process{'es' if world > 1 else ''}"
        device = info.get("device") or "cpu"
        layout = info.get("distributed_type", "")
        precision = info.get("mixed_precision")
        if layout in ("NO", "MULTI_CPU") or device.lower() in _CPU_NAMES:
            return f"CPU ({device}), {procs}"
        extra = [
            x for x in (layout, precision and precision != "no" and f"{precision} precision") if x
        ]
        return f"{world} x {device} ({procs}{'; ' + ', '.join(extra) if extra else ''})"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    procs = f"{world} process{'es' if world > 1 else ''}"
    if torch.cuda.is_available():
        here = f"{world} x {torch.cuda.get_device_name()} ({procs})"
    else:
        here = f"CPU ({platform.machine() or 'unknown'}, {os.cpu_count()} cores), {procs}"
    return f"{here} (not recorded by training: the machine that wrote this card)"


def global_batch(cfg: RunConfig, info: dict) -> int:
    """Examples per optimizer step: train.global_batch_size, else micro batch x processes x
    accumulation as training recorded them."""
    if cfg.train.global_batch_size:
        return int(cfg.train.global_batch_size)
    world = int(info.get("num_processes", os.environ.get("WORLD_SIZE", "1")))
    return cfg.train.micro_batch_size * world * int(info.get("gradient_accumulation_steps", 1))


def folder_model(folder: Path | None) -> str:
    """What the folder holds, from its config.json: `BertForTokenClassification` (bert)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        config = {}
    arch = ", ".join(config.get("architectures") or [])
    kind = config.get("model_type")
    if arch and kind:
        return f"A `{arch}` model (`{kind}`)"
    return f"A `{kind}` model" if kind else "A model"


def eval_results(folder: Path | None) -> dict[str, dict[str, float]]:
    """The export's eval_results.json (scores after training per named eval set), or {}."""
    from pipeline.finetune.metrics import RESULTS_FILE

    try:
        return json.loads((Path(folder) / RESULTS_FILE).read_text()) if folder else {}
    except (OSError, ValueError):
        return {}


def _is_finetune(cfg: RunConfig) -> bool:
    return task_of(cfg).finetuned


def card_data(cfg: RunConfig, metrics: list[dict], folder: Path | None = None) -> ModelCardData:
    task = task_of(cfg)
    pipeline_tag, task_name, wanted = task.pipeline_tag, task.name, task.metrics
    ev = _last(metrics, "eval")
    hub_datasets = [p for p in cfg.data.path if is_hub_id(p)]
    dataset_name = ", ".join(cfg.data.path)
    eval_split = held_out(cfg.data)
    final = eval_results(folder)
    if final:  # scores of the exported weights on each held-out set supersede the last eval
        named = _eval_set_paths(cfg.data)
        readable = {**_FINAL_NAMES, **wanted}
        results = [
            EvalResult(
                task_type=pipeline_tag,
                task_name=task_name,
                dataset_type=hub_datasets[0] if hub_datasets else dataset_name,
                dataset_name=dataset_name if set_name == "eval" else f"{dataset_name} ({set_name})",
                dataset_config=cfg.data.name,
                dataset_split=", ".join(named.get(set_name, [eval_split])),
                metric_type=readable.get(key, (key, key))[0],
                metric_name=readable.get(key, (key, key))[1],
                metric_value=round(float(value), 4),
            )
            for set_name, scores in final.items()
            for key, value in scores.items()
            if key != "n" and isinstance(value, (int, float))
        ]
        return _data(cfg, task, results, hub_datasets)
    results = [
        EvalResult(
            task_type=pipeline_tag,
            task_name=task_name,
            dataset_type=hub_datasets[0] if hub_datasets else dataset_name,
            dataset_name=dataset_name,
            dataset_config=cfg.data.name,
            dataset_split=eval_split,
            metric_type=metric_type,
            metric_name=readable,
            metric_value=round(float(ev[key]), 4),
        )
        for key, (metric_type, readable) in wanted.items()
        if isinstance(ev.get(key), (int, float))
    ]
    return _data(cfg, task, results, hub_datasets)


_FINAL_NAMES = {  # eval_results.json keys (finetune.metrics.glue_scores) -> model-index
    "accuracy": ("accuracy", "accuracy"),
    "macro_f1": ("f1", "macro-F1"),
    "f1": ("f1", "F1 (class 1)"),
    "mcc": ("matthews_correlation", "Matthews correlation"),
    "pearson": ("pearsonr", "Pearson r"),
    "spearman": ("spearmanr", "Spearman rho"),
    "mse": ("mse", "mean squared error"),
}


def _eval_set_paths(d: DataSection) -> dict[str, list[str]]:
    paths = getattr(d, "eval_set_paths", None)
    return paths() if paths else {}


def _data(cfg: RunConfig, task: Task, results: list, hub_datasets: list[str]) -> ModelCardData:
    objective, pipeline_tag = cfg.objective.name, task.pipeline_tag
    card = getattr(cfg, "card", None)  # configs written before the card section: its defaults
    tags = ["pipeline", objective]
    tags.append(pipeline_tag if _is_finetune(cfg) else "self-supervised")
    base = getattr(cfg.model, "from_pretrained", None)
    return ModelCardData(
        model_name=Path(cfg.output_dir).name,
        license=card.license if card else "apache-2.0",
        language=list(card.language) if card else ["en"],
        library_name=task.library,
        pipeline_tag=pipeline_tag or None,
        tags=tags,
        datasets=hub_datasets or None,
        base_model=base if base and is_hub_id(base) else None,
        eval_results=results or None,
    )


def held_out(d: DataSection) -> str:
    if d.eval_path:
        return ", ".join(d.eval_path)
    if d.path[0].startswith("embedded:"):
        return "the corpus's validation chapters"
    return f"{d.eval_fraction:.0%} of the training rows"


def _data_lines(cfg: RunConfig) -> list[str]:
    d = cfg.data
    where = ", ".join(d.path) + (f" (config `{d.name}`)" if d.name else "")
    pair = getattr(d, "text_pair_column", None)
    columns = (
        f"text columns `{d.text_column}` and `{pair}` (sentence pairs)"
        if pair
        else (f"text column `{d.text_column}`")
    )
    lines = [f"- source: {where}, split `{d.split}`, {columns}"]
    if _is_finetune(cfg):
        regression = getattr(registry.get("objective", cfg.objective.name), "regression", False)
        lines.append(
            f"- labels: column `{d.label_column}`"
            + (" (scores, regression)" if regression else "")
            + (f", classes {', '.join(d.labels)}" if d.labels else "")
        )
        if d.chunk_words:
            lines.append(
                f"- texts cut into pieces of {d.chunk_words} words, each keeping its label"
            )
        lines.append(f"- at most {d.max_length} tokens per example")
    else:
        lines.append(f"- packed into blocks of {d.block_size} tokens")
    lines.append(f"- held out for evaluation: {held_out(d)}")
    for name, paths in _eval_set_paths(d).items():
        lines.append(f"- eval set `{name}`: {', '.join(paths)}")
    return lines


def _training_lines(cfg: RunConfig, metrics: list[dict]) -> list[str]:
    train_rows = [m for m in metrics if m.get("split") == "train"]
    last = train_rows[-1] if train_rows else {}
    speeds = [m["tokens_per_s"] for m in train_rows[1:] or train_rows if m.get("tokens_per_s")]
    info = run_info(cfg)
    lines = [
        f"- objective: `{cfg.objective.name}`",
        f"- steps: {last.get('step', 0)}; tokens: {last.get('tokens', 0):,}; "
        f"global batch: {global_batch(cfg, info)} examples",
        f"- optimizer: AdamW, peak lr {info.get('lr', cfg.optim.lr)}, {cfg.optim.schedule} schedule, "
        f"weight decay {cfg.optim.weight_decay}",
        f"- hardware: {hardware(info)}",
    ]
    if speeds:
        lines.append(
            f"- throughput: {statistics.median(speeds):,.0f} tokens/s (median over log intervals)"
        )
    if last.get("step_time_s"):
        lines.append(
            f"- step time: {last['step_time_s']:.3f} s; peak memory {last.get('peak_mem_mb', 0):,.0f} MB per process"
        )
    if last.get("mfu"):
        lines.append(f"- model FLOPs utilisation: {last['mfu']:.1%}")
    base = getattr(cfg.model, "from_pretrained", None)
    if base:
        init = getattr(cfg.model, "init", "pretrained")
        shown = base if is_hub_id(base) else "/".join(Path(base).resolve().parts[-2:])
        what = (
            "fine-tuned from"
            if init == "pretrained"
            else "same architecture as (randomly initialised)"
        )
        lines.insert(0, f"- {what} `{shown}`")
    return lines


def _usage(cfg: RunConfig) -> list[str]:
    task = task_of(cfg).pipeline_tag
    example = "In the beginning God created the heaven and the earth."
    if task == "fill-mask":
        example = "In the beginning God created the [MASK] and the earth."
    call = f'print(classify("{example}"))'
    pair = getattr(cfg.data, "text_pair_column", None)
    if pair and task == "text-classification":
        call = (
            f'print(classify({{"text": "{example}", '
            '"text_pair": "And God said, Let there be light."}))'
        )
    regression = getattr(registry.get("objective", cfg.objective.name), "regression", False)
    return [
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("{task}", model="PATH_OR_REPO"'
        + (', function_to_apply="none")  # the score is the prediction' if regression else ")"),
        call,
        "```",
    ]


def _description(cfg: RunConfig, folder: Path | None) -> str:
    task = task_of(cfg)
    what = (
        f"fine-tuned for {task.name[0].lower() + task.name[1:]}"
        if task.finetuned
        else f"pretrained with the `{cfg.objective.name}` objective"
    )
    return (
        f"{folder_model(folder)} {what} by the `pipeline` project (Accelerate/DeepSpeed "
        "engine); a stock `transformers` checkpoint in safetensors."
    )


def render(cfg: RunConfig, metrics: list[dict], notes: str = "", folder: Path | None = None) -> str:
    """The card of the export in `folder` (its config.json and eval_results.json are read;
    training facts come from RUN_DIR/run_info.json and metrics.jsonl)."""
    data = card_data(cfg, metrics, folder)
    ev = {
        k: v
        for k, v in _last(metrics, "eval").items()
        if isinstance(v, (int, float)) and k != "step"
    }
    table = (
        ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in ev.items()]]
        if ev
        else ["No held-out evaluation was run."]
    )
    final = eval_results(folder)
    if final:
        table += [
            "",
            "Scores of the exported weights on each held-out set (`eval_results.json`; "
            "scikit-learn/scipy, as GLUE defines them):",
            "",
            "| eval set | metric | value |",
            "|---|---|---|",
            *[
                f"| {name} | {k} | {v:.4g} |"
                for name, scores in final.items()
                for k, v in scores.items()
                if isinstance(v, (int, float))
            ],
        ]
    resolved = yaml.safe_dump(config_lib.redact(config_lib.to_dict(cfg)), sort_keys=False)
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {data.model_name}",
        "",
        _description(cfg, folder),
        "",
        f"Task: {task_of(cfg).name}.",
        "",
        "## Training data",
        *_data_lines(cfg),
        "",
        "## Training",
        *_training_lines(cfg, metrics),
        "",
        "## Evaluation (held-out)",
        *table,
        "",
        "## Use",
        *_usage(cfg),
        "",
        *([notes.rstrip(), ""] if notes else []),
        "## Intended use and limits",
        "A small research model for experiments on pretraining and fine-tuning. It reflects its "
        "training corpus (its language, era and biases), was evaluated only on the held-out data "
        "above, and is not suited to factual, medical, legal or other safety-critical use.",
        "",
        "## Configuration",
        "The resolved run config (`config.yaml`; secrets redacted):",
        "",
        "```yaml",
        resolved.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    folder: Path, cfg: Any, metrics: list[dict], notes: str = "", objective: Any = None
) -> None:
    """`notes`: objective-specific markdown (`Objective.model_card_notes()`), before the limits.

    An objective whose export is not a transformers model (energy nets) writes its own card:
    if it has `model_card(folder, cfg, metrics) -> str | None` and that returns text, the text
    is the card."""
    own = getattr(objective, "model_card", None)
    text = own(Path(folder), cfg, metrics) if callable(own) else None
    ModelCard(text or render(cfg, metrics, notes, Path(folder))).save(Path(folder) / "README.md")
