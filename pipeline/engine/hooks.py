"""Hooks: code the loop calls at fixed points without knowing what it does (ModernBERT-style
callbacks). Installed only when configured, so the hot loop carries no test-only branches:
fault injection (engine/faults.py) is a hook present only when PIPELINE_FAULT is set.

Points, in the order the loop reaches them within one step:
  on_data(step)              before the step's first micro batch is read (step = its number)
  on_loss(loss, step)        the loss of a micro batch, before its backward; may replace it
  after_update(step)         right after an optimizer update was applied (step = new count)
  on_step_end(step, stop)    after the step's metrics are logged, before eval and checkpoint
  on_checkpoint(phase, step) while checkpoint `step` is written: "files" (model/optimizer
                             written, inside the error handling), "before_manifest", "complete"
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Hook:
    def on_data(self, step: int) -> None:
        pass

    def on_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss

    def after_update(self, step: int) -> None:
        pass

    def on_step_end(self, step: int, stop_requested: Callable[[], bool]) -> None:
        pass

    def on_checkpoint(self, phase: str, step: int) -> None:
        pass


class Hooks(Hook):
    """Several hooks called in order (empty: every call is a no-op loop over nothing)."""

    def __init__(self, hooks: list[Hook] | None = None) -> None:
        self.hooks = [h for h in hooks or [] if h is not None]

    def add(self, hook: Hook) -> None:
        """Install one more hook (called after those already installed)."""
        self.hooks.append(hook)

    def on_data(self, step: int) -> None:
        for h in self.hooks:
            h.on_data(step)

    def on_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        for h in self.hooks:
            loss = h.on_loss(loss, step)
        return loss

    def after_update(self, step: int) -> None:
        for h in self.hooks:
            h.after_update(step)

    def on_step_end(self, step: int, stop_requested: Callable[[], bool]) -> None:
        for h in self.hooks:
            h.on_step_end(step, stop_requested)

    def on_checkpoint(self, phase: str, step: int) -> None:
        for h in self.hooks:
            h.on_checkpoint(phase, step)
