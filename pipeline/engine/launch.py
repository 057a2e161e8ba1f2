"""What the launcher gave this process (world size), and what follows from it before anything
is built: gradient accumulation and precision. Leaf module: imports nothing of the engine."""

from __future__ import annotations

import os

import torch

from pipeline.train_config import TrainConfig


class SetupError(ValueError):
    """A run that cannot start as configured (one line for the user, exit 2)."""


def launched_world_size() -> int:
    """Processes this job was launched with (accelerate launch, torchrun and SLURM set it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation_steps(train_cfg: TrainConfig, world: int) -> int:
    micro = train_cfg.micro_batch_size
    if train_cfg.global_batch_size is None:
        return 1
    per_step = micro * world
    if train_cfg.global_batch_size % per_step:
        raise SetupError(
            f"train.global_batch_size={train_cfg.global_batch_size} is not divisible by "
            f"train.micro_batch_size x processes = {micro} x {world} = {per_step}"
        )
    return train_cfg.global_batch_size // per_step


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"
