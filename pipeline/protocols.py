"""The contracts between layers, as typing Protocols: what the engine needs from a run config,
what an objective may see of the run (RunContext), and what the engine asks of an objective.

Why protocols and not base classes: the engine sits below the objectives, models, fine-tuning
and stages it runs, and must not import them (tests/test_structure.py checks the import graph).
It types its inputs with these protocols; `pipeline.objectives.base.Objective` is the base class
that implements `Objective` with the optional methods filled in, and
`pipeline.engine.context.EngineContext` is the RunContext the engine hands out.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from pipeline.train_config import (
    EngineConfig,
    LogConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
)


class DataSection(Protocol):
    """The data keys pretraining and fine-tuning data sections share (the engine reads the
    last three; the text sources the first six)."""

    path: list[str]
    name: str | None
    split: str
    eval_path: list[str] | None
    eval_fraction: float
    text_column: str
    streaming: bool
    num_workers: int
    pin_memory: bool


class RunConfig(Protocol):
    """A run the engine can train: `train_config.RunConfig` and `finetune.config.FinetuneConfig`
    (their model and data sections differ; train/optim/engine/log are the same classes)."""

    output_dir: str
    data: DataSection
    model: Any
    objective: ObjectiveConfig
    optim: OptimConfig
    train: TrainConfig
    engine: EngineConfig
    log: LogConfig


class RunContext(Protocol):
    """What an objective may see of the run: config, run folder, process layout, tokenizer."""

    cfg: Any  # a RunConfig; each objective reads its own config type's sections
    run_dir: Path
    tokenizer: Any

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_main(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def plots_dir(self) -> Path: ...

    def main_first(self) -> AbstractContextManager[Any]:
        """The main process does the work (and fills caches) while the others wait; then each
        other node's main process where its own cache lacks it."""
        ...


@dataclass
class Datasets:
    """What an objective's `build_data` returns: map-style or iterable datasets."""

    train: Any
    eval: Any | None
    tokens_per_example: int = 0
    """Tokens one training example carries (for tokens/s and MFU); 0 when not text."""


@runtime_checkable
class Objective(Protocol):
    """What the engine asks of an objective (see pipeline/objectives/base.py for the contract
    in words, and the base class every shipped objective derives from)."""

    cfg: ObjectiveConfig

    def build_data(self, ctx: RunContext) -> Datasets: ...

    def build_module(self, ctx: RunContext) -> nn.Module: ...

    def collate(self, examples: Any, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def flops_per_example(self, module: nn.Module) -> float: ...

    def default_lr(self, module: nn.Module) -> float: ...

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def plots(self, module: nn.Module, ctx: RunContext, step: int) -> None: ...


Batch = dict[str, Any]
"""A collated micro batch: the keyword arguments of the training module's forward."""

Examples = dict[str, Iterable[Any]] | dict[str, torch.Tensor]
"""Rows of a dataset by column, as `dataset[indices]` returns them."""
