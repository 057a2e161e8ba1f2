"""Export a run as a Hugging Face folder: `RUN_DIR/export` with config.json, model.safetensors,
tokenizer files and a model card. Written to a temporary folder, then renamed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline import config as config_lib
from pipeline import registry
from pipeline.engine import checkpoint
from pipeline.engine.context import RunContext
from pipeline.engine.metrics import read_metrics


class ExportError(RuntimeError):
    pass


def export_module(
    objective: Any, accelerator: Any, module: torch.nn.Module, ctx: RunContext
) -> Path:
    """Collective (every process calls it; sharded weights are gathered); main writes."""
    folder = ctx.run_dir / "export"
    if accelerator.distributed_type == "DEEPSPEED":
        from pipeline.engine.deepspeed import export_copy

        # ZeRO-3 parameters are shards and bf16 ones are not the fp32 master: export a fresh
        # copy holding the gathered fp32 master weights
        copy = export_copy(objective, accelerator, module, ctx)
        if ctx.is_main:
            _write(objective, copy, folder, ctx)
        accelerator.wait_for_everyone()
        return folder
    if ctx.is_main:  # DDP: every process holds the full weights; the main one writes them
        _write(objective, accelerator.unwrap_model(module), folder, ctx)
    accelerator.wait_for_everyone()
    return folder


def _write(objective: Any, module: torch.nn.Module, folder: Path, ctx: RunContext) -> None:
    from pipeline.model_card import write_model_card

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    objective.export(module, str(tmp), ctx)
    write_model_card(tmp, ctx.cfg, read_metrics(ctx.run_dir), objective.model_card_notes())
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
    weights = source / "model.safetensors"
    if not weights.is_file():
        from pipeline.engine.deepspeed import consolidated_state_dict  # ZeRO shards

        state = consolidated_state_dict(source)
    else:
        state = load_file(str(weights))
    ctx = RunContext(cfg=cfg, run_dir=run_dir, accelerator=Accelerator(cpu=True))
    if (run_dir / "tokenizer").is_dir():
        ctx.tokenizer = load_tokenizer(str(run_dir / "tokenizer"))
    objective = registry.get("objective", cfg.objective.name)(cfg.objective)
    module = objective.build_module(ctx)
    missing, unexpected = module.load_state_dict(state, strict=False)
    # BERT's decoder shares its weight with the word embeddings and its bias with the head's
    # bias; safetensors stores each shared tensor once, so the tied names may be absent
    missing = [k for k in missing if not k.endswith(("decoder.weight", "decoder.bias"))]
    if missing or unexpected:
        raise ExportError(f"{weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    _write(objective, module, run_dir / "export", ctx)
    return run_dir / "export"
