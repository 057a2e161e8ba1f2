"""Run one stage into its run folder: the same shape as a training run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from pipeline import config as config_lib
from pipeline import registry
from pipeline.engine.setup import prepare_run_dir
from pipeline.stages.base import OUTPUTS
from pipeline.stages.dist import Comm
from pipeline.stages.schema import StageRunConfig

log = logging.getLogger("pipeline")


def run_stage(cfg: StageRunConfig) -> dict[str, float]:
    """Every process calls it (torchrun / accelerate launch); the main process writes files."""
    comm = Comm()
    comm.start(comm.device(cfg.train.device))
    try:
        run_dir = Path(cfg.output_dir)
        if comm.is_main:
            prepare_run_dir(run_dir)
            config_lib.dump_yaml(cfg, run_dir / "config.yaml")
            # a rerun must not leave the previous outputs looking complete if it fails
            shutil.rmtree(run_dir / OUTPUTS, ignore_errors=True)
        comm.barrier()
        torch.manual_seed(cfg.train.seed)
        stage = registry.get("stage", cfg.stage.name)(comm)
        metrics = stage.run(cfg, run_dir)
        comm.barrier()
        return metrics
    finally:
        comm.stop()
