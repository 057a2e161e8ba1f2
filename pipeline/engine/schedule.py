"""Learning-rate schedules over the run's budget: steps, tokens or wall-clock time.

The schedule is a function of how much of the budget is used, so a run limited by
`train.max_tokens` or `train.max_time_s` warms up and decays to the end of *that* budget
instead of stopping in the middle of a schedule laid out for `train.max_steps`:

  steps   position = optimizer steps, of train.max_steps
  tokens  position = steps, of the steps train.max_tokens buys (tokens per step are fixed)
  time    position = training seconds (earlier runs of the folder included), of
          train.max_time_s; the run also ends at train.max_steps if that comes first

Shapes (`optim.schedule`), after a linear warmup (`optim.warmup_steps`, else
`optim.warmup_ratio` of the budget):
  linear    decay to 0 at the end (BERT)         cosine    half a cosine to 0
  constant  flat after warmup                    wsd       warmup-stable-decay (ModernBERT's
            trapezoid): flat, then the last `optim.decay_fraction` of the budget decays to 0
            with `optim.decay_shape` linear, 1-sqrt (Hägele et al. 2024) or cosine.
Step and token budgets use integer positions with transformers' own formulas (so a run is
bit-for-bit what `transformers.get_scheduler` gives), which also makes them exact across a
resume; a time budget resumes from the elapsed time saved in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from pipeline.train_config import OptimConfig, TrainConfig

Position = Callable[[], tuple[float, float]]
"""() -> (position, total) in the budget's unit (steps or seconds)."""


def warmup_length(optim: OptimConfig, total: float, integer: bool) -> float:
    if optim.warmup_steps:
        return optim.warmup_steps
    warm = total * optim.warmup_ratio
    return int(warm) if integer else warm


def factor(optim: OptimConfig, current: float, total: float, warm: float) -> float:
    """The multiplier of the peak lr at `current` of `total` (warmup `warm`), transformers'
    formulas for linear/cosine/constant (max(1, .) guards as it has them)."""
    if current < warm:
        return float(current) / float(max(1, warm) if isinstance(warm, int) else warm)
    if optim.schedule == "constant":
        return 1.0
    span = total - warm
    span = max(1, span) if isinstance(span, int) else max(span, 1e-9)
    if optim.schedule == "linear":
        return max(0.0, float(total - current) / float(span))
    if optim.schedule == "cosine":
        progress = float(current - warm) / float(span)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    # wsd: flat, then decay over the last decay_fraction of the whole budget
    decay = optim.decay_fraction * total
    start = total - decay
    if current <= start or decay <= 0:
        return 1.0
    q = min(1.0, float(current - start) / float(decay))
    if optim.decay_shape == "linear":
        return 1.0 - q
    if optim.decay_shape == "1-sqrt":
        return 1.0 - math.sqrt(q)
    return 0.5 * (1.0 + math.cos(math.pi * q))


class BudgetSchedule:
    """Sets the lr of every param group to its base lr x `factor` of the budget position; stepped
    by the loop once per applied update, saved in trainer_state."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimConfig, position: Position,
                 integer: bool):  # fmt: skip
        self.optimizer, self.optim, self.position, self.integer = (
            optimizer,
            optim,
            position,
            integer,
        )
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        current, total = self.position()
        warm = warmup_length(self.optim, total, self.integer)
        f = factor(self.optim, current, total, warm)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def step(self) -> None:
        self._apply()

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs, "_last_lr": self._last_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The saved lr is put back as it was (checkpoints of torch's LambdaLR too)."""
        self.base_lrs = list(state.get("base_lrs", self.base_lrs))
        self._last_lr = list(state["_last_lr"])
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def budget_steps(train: TrainConfig, tokens_per_step: int) -> int:
    """The steps the run can take: train.max_steps, or fewer when train.max_tokens ends it."""
    steps = train.max_steps
    if train.max_tokens and tokens_per_step:
        steps = min(steps, -(-train.max_tokens // tokens_per_step))
    return steps


def step_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int, step: Callable[[], int]
) -> BudgetSchedule:
    """A schedule over `total_steps` optimizer steps (`step()`: the steps taken)."""
    return BudgetSchedule(optimizer, optim, lambda: (step(), total_steps), integer=True)


def build_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, train: TrainConfig,
    tokens_per_step: int, step: Callable[[], int], elapsed: Callable[[], float],
) -> BudgetSchedule:  # fmt: skip
    """The run's schedule; `step` and `elapsed` read the loop's counters when called."""
    if train.max_time_s:

        def by_time() -> tuple[float, float]:  # the budget that ends first sets the pace
            t = train.max_time_s
            return max(elapsed(), step() / train.max_steps * t), t

        return BudgetSchedule(optimizer, optim, by_time, integer=False)
    return step_schedule(optimizer, optim, budget_steps(train, tokens_per_step), step)
