"""The objective interface: what an objective trains on and what loss it minimises.

An objective never knows which launcher or sharding strategy runs it. The engine asks it for
  - `build_data(ctx)`: the train and eval datasets (map-style or iterable),
  - `build_module(ctx)`: an `nn.Module` whose `forward(**batch)` returns (loss, metrics); the
    engine hands this module to Accelerate/DeepSpeed, so every gradient flows through the
    wrapped forward (calling a submodule directly would bypass DDP's gradient sync),
  - `collate(examples, generator)`: a batch; all randomness comes from `generator`, which the
    engine seeds from (seed, data position, process), so a resumed run draws the same masks,
  - `export(module, folder, ctx)`: what goes into RUN_DIR/export,
  - optionally `state_dict()` / `load_state_dict()` for per-process state kept in checkpoints.

A new objective is one module in `pipeline/objectives/` (or `pipeline/finetune/`) with a class
decorated `@register("objective", NAME)`: the registry finds it, the config builder finds its
`Config`, and the model card reads its `task` (see docs/EXTENDING.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.protocols import Datasets, RunContext
from pipeline.train_config import ObjectiveConfig

__all__ = ["Datasets", "Objective", "ObjectiveConfig", "Task"]


@dataclass(frozen=True)
class Task:
    """What the exported model is for, as the Hub and the model card say it."""

    pipeline_tag: str = "feature-extraction"
    """The transformers pipeline that uses the export (fill-mask, text-classification...)."""
    name: str = "Representation learning"
    """Task name for the card's model-index."""
    metrics: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Logged eval metric -> (model-index metric type, readable name)."""
    library: str = "transformers"
    """The library that loads the export (`transformers`, or `pipeline` for energy nets)."""
    finetuned: bool = False
    """A fine-tuning objective (labelled data) rather than self-supervised pretraining."""


OTHER_LR = 5e-4
"""optim.lr when unset and the model is not a transformer being pretrained."""
LR_AT_WIDTH_128 = 2e-3
"""optim.lr when unset for a transformer of hidden size 128 (scripts/sweep_mlm.py)."""


def width_lr(hidden_size: int) -> float:
    """The size-following default: lr ~ 1/width (as muP scales Adam's lr for hidden matrices)
    through LR_AT_WIDTH_128: tiny (128) 2e-3, mini (256) 1e-3, base (768) 3.3e-4. BENCHMARKS.md
    ("The learning rate follows the model size") has the sweep it is read from. Narrower models
    keep 2e-3 (nothing here measured that they want more)."""
    return LR_AT_WIDTH_128 * 128 / max(hidden_size, 128)


def transformer_width(module: nn.Module) -> int | None:
    """hidden_size of the first transformers model inside `module`, if any."""
    for m in module.modules():
        hidden = getattr(getattr(m, "config", None), "hidden_size", None)
        if isinstance(hidden, int) and hidden > 0:
            return hidden
    return None


class Objective:
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    task: ClassVar[Task] = Task()

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg

    def build_data(self, ctx: RunContext) -> Datasets:
        raise NotImplementedError

    def build_module(self, ctx: RunContext) -> nn.Module:
        raise NotImplementedError

    def collate(self, examples: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def default_lr(self, module: nn.Module) -> float:
        """optim.lr when the run config leaves it unset: for pretraining a transformer it
        follows the width (`width_lr`); fine-tuning and other models get OTHER_LR."""
        width = None if self.task.finetuned else transformer_width(module)
        return OTHER_LR if width is None else width_lr(width)

    def flops_per_example(self, module: nn.Module) -> float:
        """Training FLOPs (forward + backward) of one example, for MFU; 0 = unknown."""
        return 0.0

    def export(self, module: nn.Module, folder: str, ctx: RunContext) -> None:
        """Write a Hugging Face folder (or whatever the model has) into `folder`."""

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the reduced ones (e.g. perplexity from loss)."""
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @property
    def shardable(self) -> bool:
        """Whether ZeRO-3 may partition the module's parameters (False e.g. when the objective
        reads or writes whole parameters outside the forward, like a weight average)."""
        return True

    def unshardable_reason(self) -> str:
        return ""

    def model_card_notes(self) -> str:
        """Markdown appended to the exported model card (e.g. how to pool embeddings)."""
        return ""

    def model_card(self, folder: Any, cfg: Any, metrics: list[dict]) -> str | None:
        """The whole model card (README.md with its YAML header) of an export that is not a
        transformers model (e.g. an energy net); None: the standard card (model_card.render),
        with `model_card_notes`."""
        return None

    def plots(self, module: nn.Module, ctx: RunContext, step: int) -> None:
        """Pictures saved into RUN_DIR/plots during training (e.g. energy landscapes)."""
