"""The schema of a stage run: `python -m pipeline stage CONFIG key=value ...`.

`stage: {name: ..., ...}` picks the stage by name, with its own fields, exactly as `objective`
picks an objective (`stage.k`, `stage.code_size`, `stage.pooling`); the loop, optimizer and log
sections are the training run's classes (train_config.py) with stage defaults. Every field's
docstring is its help text (`python -m pipeline stage --help`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import check_minimums
from pipeline.stages.arrays import DataConfig
from pipeline.train_config import LogConfig, LoopConfig, OptimConfig, StageConfig


@dataclass
class StageTrainConfig(LoopConfig):
    seed: int = 0
    """Seed of the split, the initialisation, the batches and the noise."""
    max_steps: int = 3000
    """Optimizer steps (autoencoder)."""
    log_every: int = 100
    """Steps between training metric lines."""
    eval_every: int = 1000
    """Steps between held-out evaluations (0 = only at the end)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (a final one is always written)."""
    batch_size: int = 64
    """Examples per step (autoencoder)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (one GPU per process), else CPU."""

    def validate(self) -> list[str]:
        return super().validate() + check_minimums(self, {"batch_size": 1})


@dataclass
class StageOptimConfig(OptimConfig):
    """The training run's optimizer section (AdamW, schedule, clipping), with the defaults of
    a small single-process experiment: constant lr, no weight decay, no clipping."""

    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """Decoupled weight decay, not on biases and norms (a regulariser of over-complete
    autoencoders)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    fused: Literal["auto", "on", "off"] = "off"
    """Fused AdamW kernel (off: PyTorch's default per-parameter update)."""
    schedule: Literal["linear", "cosine", "constant", "wsd"] = "constant"
    """Decay after warmup."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of train.max_steps when warmup_steps is 0."""
    max_grad_norm: float = 0.0
    """Clip gradients to this global norm (0 = no clipping)."""


@dataclass
class StageLogConfig(LogConfig):
    trackers: list[str] = field(default_factory=list)
    """Stages write metrics.jsonl only (no Accelerate trackers)."""

    def validate(self) -> list[str]:
        if self.trackers:
            return [f"trackers: stages write metrics.jsonl only, got {self.trackers}"]
        return []


def _default_stage() -> StageConfig:
    from pipeline import registry

    return registry.config_class("stage", "kmeans")()


@dataclass
class StageRunConfig:
    output_dir: str = "runs/stage"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/, plots/, outputs/."""
    input: str | None = None
    """Run folder of an upstream stage: its outputs/features.npy (and labels) replace data.path
    (for embed: a train run whose export/ is the model)."""
    stage: StageConfig = field(default_factory=_default_stage)
    """Stage by name (autoencoder, kmeans, embed), with its own fields."""
    data: DataConfig = field(default_factory=DataConfig)
    train: StageTrainConfig = field(default_factory=StageTrainConfig)
    optim: StageOptimConfig = field(default_factory=StageOptimConfig)
    log: StageLogConfig = field(default_factory=StageLogConfig)
