"""Export a run as a Hugging Face folder: `RUN_DIR/export` with config.json, model.safetensors,
tokenizer files and a model card. Written to a temporary folder, then renamed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline import config as config_lib
from pipeline import registry
from pipeline.engine import checkpoint, elastic
from pipeline.engine.context import EngineContext
from pipeline.engine.metrics import read_metrics
from pipeline.protocols import Objective, RunContext

if TYPE_CHECKING:
    from pipeline.engine.train import Trainer


class ExportError(RuntimeError):
    pass


def export_trained(trainer: Trainer) -> Path:
    """Collective (every process calls it; sharded weights are gathered); main writes."""
    folder = trainer.run_dir / "export"
    module = trainer.unsharded_module()
    if trainer.ctx.is_main:
        _write(trainer.objective, module, folder, trainer.ctx)
    trainer.accelerator.wait_for_everyone()
    return folder


def _write(objective: Objective, module: torch.nn.Module, folder: Path, ctx: RunContext) -> None:
    from pipeline.model_card import write_model_card

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    objective.export(module, str(tmp), ctx)
    write_model_card(
        tmp, ctx.cfg, read_metrics(ctx.run_dir), objective.model_card_notes(), objective
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def export_run(run_dir: str | Path, checkpoint_dir: str | Path | None = None) -> Path:
    """Offline export from the newest valid checkpoint (or the one given), on CPU."""
    from accelerate import Accelerator

    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.train_config import RunConfig

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = config_lib.load_config(RunConfig, run_dir / "config.yaml")
    cfg.output_dir = str(run_dir)
    source = Path(checkpoint_dir) if checkpoint_dir else checkpoint.latest_valid(run_dir)
    if source is None:
        raise ExportError(f"{run_dir}/checkpoints has no valid checkpoint to export")
    problem = checkpoint.verify(source)
    if problem:
        raise ExportError(f"cannot export: {problem}")
    state = elastic.full_weights(source)  # Accelerate's safetensors or ZeRO shards
    ctx = EngineContext(cfg=cfg, run_dir=run_dir, accelerator=Accelerator(cpu=True))
    if (run_dir / "tokenizer").is_dir():
        ctx.tokenizer = load_tokenizer(str(run_dir / "tokenizer"))
    objective = registry.get("objective", cfg.objective.name)(cfg.objective)
    module = objective.build_module(ctx)
    try:
        # safetensors stores each tied tensor once (BERT's decoder shares the word embeddings):
        # the loader takes either name and insists every parameter gets a value
        checkpoint.load_full_state(module, state, source=str(source))
    except RuntimeError as err:
        raise ExportError(str(err)) from None
    _write(objective, module, run_dir / "export", ctx)
    return run_dir / "export"
