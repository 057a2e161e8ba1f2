"""The export's README.md: a Hugging Face model card with YAML metadata."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData


def _last(metrics: list[dict], split: str) -> dict:
    rows = [m for m in metrics if m.get("split") == split]
    return rows[-1] if rows else {}


def write_model_card(folder: Path, cfg: Any, metrics: list[dict]) -> None:
    train, ev = _last(metrics, "train"), _last(metrics, "eval")
    objective = cfg.objective.name
    data = ", ".join(cfg.data.path)
    pipeline_tag = "fill-mask" if objective == "mlm" else "feature-extraction"
    results = {k: v for k, v in ev.items() if isinstance(v, (int, float)) and k != "step"}
    card_data = ModelCardData(
        license="apache-2.0",
        language=["en"],
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["pipeline", objective, "self-supervised"],
        datasets=[p for p in cfg.data.path if not p.startswith(("/", "."))],
    )
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {Path(cfg.output_dir).name}",
        "",
        f"A {cfg.model.name} model pretrained with the `{objective}` objective by the `pipeline` project.",
        "",
        "## Training data",
        f"- source: {data} (text column `{cfg.data.text_column}`), blocks of {cfg.data.block_size} tokens",
        "",
        "## Training",
        f"- steps: {train.get('step', 0)}; tokens: {train.get('tokens', 0)}",
        f"- micro batch {cfg.train.micro_batch_size}, peak lr {cfg.optim.lr}, schedule {cfg.optim.schedule}",
        f"- throughput: {train.get('tokens_per_s', 0):.0f} tokens/s",
        f"- hardware: {torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'CPU'}",
        "",
        "## Evaluation (held-out)",
        *[f"- {k}: {v:.4g}" for k, v in results.items()],
        "",
        "## Intended use and limits",
        "A small research model for fine-tuning experiments; it reflects its training corpus and is not",
        "suited to factual or safety-critical use.",
        "",
    ]
    ModelCard("\n".join(lines)).save(folder / "README.md")
