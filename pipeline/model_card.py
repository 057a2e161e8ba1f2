"""The export's README.md: a Hugging Face model card.

YAML metadata (license, language, datasets, tags, library_name, pipeline_tag, base_model, and the
held-out results as `model-index`) is built with huggingface_hub's `ModelCardData`, so the Hub
and `ModelCard.load` read it back. The body says what the model was trained on, how (config,
steps, tokens), on what hardware and how fast, how it did on held-out data, and what it is for.
Works for pretraining runs (RunConfig) and fine-tuning runs (FinetuneConfig) alike.
"""

from __future__ import annotations

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


def hardware() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    procs = f"{world} process{'es' if world > 1 else ''}"
    if torch.cuda.is_available():
        return f"{world} x {torch.cuda.get_device_name()} ({procs})"
    return f"CPU ({platform.machine() or 'unknown'}, {os.cpu_count()} cores), {procs}"


def _is_finetune(cfg: RunConfig) -> bool:
    return task_of(cfg).finetuned


def card_data(cfg: RunConfig, metrics: list[dict]) -> ModelCardData:
    objective = cfg.objective.name
    task = task_of(cfg)
    pipeline_tag, task_name, wanted = task.pipeline_tag, task.name, task.metrics
    ev = _last(metrics, "eval")
    hub_datasets = [p for p in cfg.data.path if is_hub_id(p)]
    dataset_name = ", ".join(cfg.data.path)
    eval_split = held_out(cfg.data)
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
    tags = ["pipeline", objective]
    tags.append(pipeline_tag if _is_finetune(cfg) else "self-supervised")
    base = getattr(cfg.model, "from_pretrained", None)
    return ModelCardData(
        model_name=Path(cfg.output_dir).name,
        license="apache-2.0",
        language=["en"],
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
    lines = [f"- source: {where}, split `{d.split}`, text column `{d.text_column}`"]
    if _is_finetune(cfg):
        lines.append(
            f"- labels: column `{d.label_column}`"
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
    return lines


def _training_lines(cfg: RunConfig, metrics: list[dict]) -> list[str]:
    train_rows = [m for m in metrics if m.get("split") == "train"]
    last = train_rows[-1] if train_rows else {}
    speeds = [m["tokens_per_s"] for m in train_rows[1:] or train_rows if m.get("tokens_per_s")]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = cfg.train.global_batch_size or cfg.train.micro_batch_size * world
    lines = [
        f"- objective: `{cfg.objective.name}`",
        f"- steps: {last.get('step', 0)}; tokens: {last.get('tokens', 0):,}; "
        f"global batch: {global_batch} examples",
        f"- optimizer: AdamW, peak lr {cfg.optim.lr}, {cfg.optim.schedule} schedule, "
        f"weight decay {cfg.optim.weight_decay}",
        f"- hardware: {hardware()}",
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
    return [
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("{task}", model="PATH_OR_REPO")',
        f'print(classify("{example}"))',
        "```",
    ]


def render(cfg: RunConfig, metrics: list[dict], notes: str = "") -> str:
    data = card_data(cfg, metrics)
    ev = {
        k: v
        for k, v in _last(metrics, "eval").items()
        if isinstance(v, (int, float)) and k != "step"
    }
    finetune = _is_finetune(cfg)
    what = (
        "fine-tuned for text classification"
        if finetune
        else f"pretrained with the `{cfg.objective.name}` objective"
    )
    table = (
        ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in ev.items()]]
        if ev
        else ["No held-out evaluation was run."]
    )
    resolved = yaml.safe_dump(config_lib.redact(config_lib.to_dict(cfg)), sort_keys=False)
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {data.model_name}",
        "",
        f"A BERT-style model {what} by the `pipeline` project (Accelerate/DeepSpeed engine); a stock "
        f"`transformers` checkpoint in safetensors.",
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


def write_model_card(folder: Path, cfg: Any, metrics: list[dict], notes: str = "") -> None:
    """`notes`: objective-specific markdown (`Objective.model_card_notes()`), before the limits."""
    ModelCard(render(cfg, metrics, notes)).save(Path(folder) / "README.md")
