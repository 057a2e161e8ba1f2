"""The embed stage: mean-pooled (or [CLS]) embeddings of a text corpus from a masked-LM export,
as features for a downstream stage (K-means: clustering a text corpus).

    python -m pipeline stage configs/stages/embed.yaml input=runs/tiny --output-dir runs/emb
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data import sources
from pipeline.data.sources import DataError
from pipeline.registry import register
from pipeline.stages import arrays, pictures
from pipeline.stages.base import Stage, begin_outputs, finish_outputs, metrics_log
from pipeline.stages.schema import StageRunConfig
from pipeline.train_config import StageConfig

log = logging.getLogger("pipeline")


@dataclass
class EmbedConfig(StageConfig):
    name: str = "embed"
    model: str | None = None
    """A Hugging Face folder or Hub name of an encoder; default: `export/` of the run folder
    named by `input` (an upstream `train` stage)."""
    pooling: Literal["mean", "cls"] = "mean"
    """mean: average of the last hidden states over real tokens; cls: the first token's."""
    max_length: int = 128
    """Tokens per text (longer texts are truncated)."""
    batch_size: int = 32
    """Texts per forward pass."""
    normalize: bool = False
    """Scale every embedding to unit length (K-means then clusters by cosine similarity)."""

    def validate(self) -> list[str]:
        problems = []
        if self.max_length < 2 or self.batch_size < 1:
            problems.append("max_length must be >= 2 and batch_size >= 1")
        return problems


def model_folder(cfg: StageRunConfig) -> str:
    """embed.model, else INPUT/export; a clear error when neither exists."""
    if cfg.stage.model:
        return cfg.stage.model
    if not cfg.input:
        raise DataError(
            "the embed stage needs embed.model (a model folder) or input (a run folder)"
        )
    folder = Path(cfg.input) / "export"
    if not (folder / "config.json").is_file():
        raise DataError(
            f"input={cfg.input!r} has no export/config.json: the upstream train stage did not "
            "finish (or ran with train.export=false); run it first"
        )
    return str(folder)


@register("stage", "embed")
class EmbedStage(Stage):
    Config = EmbedConfig

    def run(self, cfg: StageRunConfig, run_dir: Path) -> dict[str, float]:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        ec: EmbedConfig = cfg.stage
        folder = model_folder(cfg)
        texts, labels, source = _texts(cfg.data)
        device = self.comm.device(cfg.train.device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        # the encoder of a masked-LM export: the unused MLM head is expected, not worth a table
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModel.from_pretrained(folder).to(device).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
        start = time.perf_counter()
        parts = []
        batches = range(0, len(texts), ec.batch_size)
        for i in tqdm(batches, desc="embed", disable=not cfg.log.progress_bar):
            enc = tokenizer(
                texts[i : i + ec.batch_size],
                truncation=True,
                max_length=ec.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state
            parts.append(_pool(hidden, enc["attention_mask"], ec.pooling))
        emb = torch.cat(parts)
        if ec.normalize:
            emb = torch.nn.functional.normalize(emb, dim=1)
        features = emb.cpu().numpy()
        result = {
            "examples": len(texts),
            "dim": features.shape[1],
            "seconds": time.perf_counter() - start,
        }
        metrics_log(run_dir, self.comm).write(0, "train", result)
        if self.comm.is_main:
            data = arrays.ArrayData(features, labels, None, source)
            out = begin_outputs(run_dir)
            arrays.save_outputs(out, data, features, {"model": folder, "pooling": ec.pooling})
            finish_outputs(run_dir)
            if cfg.log.plots:
                view, how = pictures.project_2d(features)
                title = f"{ec.pooling}-pooled embeddings{how}"
                name = cfg.data.label_column or "label"
                pictures.scatter_2d(
                    view, labels, run_dir / "plots" / "embeddings.png", title, color_name=name
                )
            log.info(
                "embed: %d texts -> %d-d features from %s", len(texts), features.shape[1], folder
            )
        return result


def _pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _texts(dcfg: Any) -> tuple[list[str], np.ndarray | None, str]:
    source = sources.resolve([dcfg.path], dcfg.name, dcfg.split)
    ds = sources.load(source)
    sources.require_column(ds, dcfg.text_column, source)
    if dcfg.max_examples is not None and len(ds) > dcfg.max_examples:
        ds = ds.select(range(dcfg.max_examples))
    texts = [t if isinstance(t, str) else "" for t in ds[dcfg.text_column]]
    if not any(texts):
        raise DataError(f"{source.describe()}: column {dcfg.text_column!r} holds no text")
    labels = None
    if dcfg.label_column and dcfg.label_column in ds.column_names:
        labels = arrays.label_codes(np.asarray(ds[dcfg.label_column]))
    return texts, labels, source.describe()
