"""The schema of a stage run: `python -m pipeline stage CONFIG key=value ...`.

`stage` picks the stage by name; each stage reads its own section (`kmeans.k`,
`autoencoder.code_size`, `embed.pooling`) plus the shared `data`, `train`, `optim`, `log`.
Every field's docstring is its help text (`python -m pipeline stage --help`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import check_minimums
from pipeline.stages.arrays import DataConfig
from pipeline.stages.autoencoder import AutoencoderConfig
from pipeline.stages.embed import EmbedConfig
from pipeline.stages.kmeans import KMeansConfig


@dataclass
class StageTrainConfig:
    seed: int = 0
    """Seed of the split, the initialisation, the batches and the noise."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (one GPU per process), else CPU."""
    max_steps: int = 3000
    """Optimizer steps (autoencoder)."""
    batch_size: int = 64
    """Examples per step (autoencoder)."""
    log_every: int = 100
    """Steps between training metric lines."""
    eval_every: int = 1000
    """Steps between held-out evaluations (0 = only at the end)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (a final one is always written)."""
    resume: Literal["auto", "required", "never"] = "auto"
    """auto: continue from the newest valid checkpoint if any; required: fail without one."""

    def validate(self) -> list[str]:
        return check_minimums(
            self,
            {
                "max_steps": 1,
                "batch_size": 1,
                "log_every": 1,
                "checkpoint_every": 1,
                "eval_every": 0,
            },
        )


@dataclass
class StageOptimConfig:
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (a regulariser of over-complete autoencoders)."""

    def validate(self) -> list[str]:
        problems = []
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        return problems


@dataclass
class StageLogConfig:
    plots: bool = True
    """PNG pictures in RUN_DIR/plots."""
    progress_bar: bool = True
    """tqdm bar for long loops."""


@dataclass
class StageRunConfig:
    stage: str = "kmeans"
    """Which stage runs: autoencoder, kmeans or embed."""
    output_dir: str = "runs/stage"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/, plots/, outputs/."""
    input: str | None = None
    """Run folder of an upstream stage: its outputs/features.npy (and labels) replace data.path
    (for embed: a train run whose export/ is the model)."""
    data: DataConfig = field(default_factory=DataConfig)
    train: StageTrainConfig = field(default_factory=StageTrainConfig)
    optim: StageOptimConfig = field(default_factory=StageOptimConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    log: StageLogConfig = field(default_factory=StageLogConfig)

    def validate(self) -> list[str]:
        from pipeline import registry

        names = registry.names("stage")
        if self.stage not in names:
            return [f"stage {self.stage!r} is unknown; choices: {', '.join(names)}"]
        return []
