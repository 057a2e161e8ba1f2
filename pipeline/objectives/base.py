"""The objective interface: what an objective trains on and what loss it minimises.

An objective never knows which launcher or sharding strategy runs it. The engine asks it for
  - `build_data(ctx)`: the train and eval datasets (map-style or iterable),
  - `build_module(ctx)`: an `nn.Module` whose `forward(**batch)` returns (loss, metrics); the
    engine hands this module to Accelerate/DeepSpeed, so every gradient flows through the
    wrapped forward (calling a submodule directly would bypass DDP's gradient sync),
  - `collate(examples, generator)`: a batch; all randomness comes from `generator`, which the
    engine seeds from (seed, step, process), so a resumed run draws the same masks,
  - `export(module, folder)`: what goes into RUN_DIR/export,
  - optionally `state_dict()` / `load_state_dict()` for per-process state kept in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pipeline.config import Choice

if TYPE_CHECKING:
    from pipeline.engine.context import RunContext


@dataclass
class ObjectiveConfig(Choice):
    kind: ClassVar[str] = "objective"
    name: str = "mlm"


@dataclass
class Datasets:
    train: Any
    eval: Any | None
    tokens_per_example: int = 0
    """Tokens one training example carries (for tokens/s and MFU); 0 when not text."""


class Objective:
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg

    def build_data(self, ctx: RunContext) -> Datasets:
        raise NotImplementedError

    def build_module(self, ctx: RunContext) -> nn.Module:
        raise NotImplementedError

    def collate(self, examples: list[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def flops_per_example(self, module: nn.Module) -> float:
        """Training FLOPs (forward + backward) of one example, for MFU; 0 = unknown."""
        return 0.0

    def export(self, module: nn.Module, folder: str, ctx: RunContext) -> None:
        """Write a Hugging Face folder (or whatever the model has) into `folder`."""

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the reduced ones (e.g. perplexity from loss)."""
        return metrics

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def model_card_notes(self) -> str:
        """Markdown appended to the exported model card (e.g. how to pool embeddings)."""
        return ""

    def plots(self, module: nn.Module, ctx: RunContext, step: int) -> None:
        """Pictures saved into RUN_DIR/plots during training (e.g. energy landscapes)."""
