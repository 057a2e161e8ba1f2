"""Step guards: which optimizer steps are skipped, and when a run must stop instead.

A step is *bad* when its loss or gradient norm is non-finite on any process, or (optional)
when its loss is a spike: more than `zscore` standard deviations above the mean of the last
`window` good losses. The decision is taken on all-reduced numbers, so every process skips
the same step or every process stops, and it is taken before the strategy applies anything:
on the losses before the last micro batch's backward, on the (already global) gradient norm
before `strategy.step()`. A skipped step leaves parameters, optimizer state and scheduler
untouched (engine/strategy.py says how each strategy drops it). The spike window is part of
the checkpoint, so a resumed run judges the next step exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.train_config import TrainConfig

log = logging.getLogger("pipeline")


class NonFiniteStop(RuntimeError):
    """The run stopped on bad steps; the last good state is in the newest checkpoint."""


class LossSpikeDetector:
    """Z-score of the new loss against a window of recent good losses (off when zscore <= 0)."""

    def __init__(self, window: int = 50, zscore: float = 0.0, min_history: int = 10) -> None:
        self.zscore = zscore
        self.min_history = min(min_history, window)
        self.history: deque[float] = deque(maxlen=window)

    @property
    def enabled(self) -> bool:
        return self.zscore > 0

    def score(self, loss: float) -> float:
        """How many standard deviations `loss` lies above the window mean (0 without history)."""
        if len(self.history) < max(self.min_history, 2):
            return 0.0
        mean = sum(self.history) / len(self.history)
        var = sum((x - mean) ** 2 for x in self.history) / (len(self.history) - 1)
        # a floor on the spread: a flat window must not turn noise into "spikes"
        std = max(math.sqrt(var), 1e-3 * abs(mean), 1e-8)
        return (loss - mean) / std

    def is_spike(self, loss: float) -> bool:
        return self.enabled and math.isfinite(loss) and self.score(loss) > self.zscore

    def update(self, loss: float) -> None:
        """Record the loss of a step that was taken."""
        if self.enabled and math.isfinite(loss):
            self.history.append(float(loss))

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.history.clear()
        self.history.extend(float(x) for x in (state or {}).get("history", []))


class BadStepCounter:
    """Counts bad steps in a row; `on_nonfinite=stop` stops at the first non-finite one."""

    def __init__(self, on_nonfinite: str = "skip", max_bad_steps: int = 3) -> None:
        self.on_nonfinite = on_nonfinite
        self.max_bad_steps = max_bad_steps
        self.in_a_row = 0
        self.total = 0

    def bad(self, nonfinite: bool) -> bool:
        """Record a bad step; True when the run must stop."""
        self.in_a_row += 1
        self.total += 1
        return (nonfinite and self.on_nonfinite == "stop") or self.in_a_row >= self.max_bad_steps

    def good(self) -> None:
        self.in_a_row = 0

    def stop_message(self, step: int, run_dir: str | Path) -> str:
        if self.on_nonfinite == "stop" and self.in_a_row < self.max_bad_steps:
            why = "non-finite loss or gradient and train.on_nonfinite=stop"
        else:
            why = f"{self.in_a_row} bad (non-finite or spiking) steps in a row"
        return (
            f"stopped after step {step}: {why}; the last good state is saved in "
            f"{run_dir}/checkpoints; lower optim.lr or check the data"
        )


@dataclass
class LossVerdict:
    """The all-reduced view of one step's losses, the same on every process."""

    mean_loss: float
    nonfinite: bool
    spike: bool
    stop_requested: bool
    elapsed_s: float = 0.0
    """The processes' mean training clock: time limits and time schedules read this one, so
    every process stops, checkpoints and sets its learning rate at the same step."""

    @property
    def skip(self) -> bool:
        return self.nonfinite or self.spike


class StepGuards:
    """Non-finite and loss-spike guards of the loop; `bad()` says when to stop instead."""

    def __init__(self, train_cfg: TrainConfig, is_main: bool = True) -> None:
        self.counter = BadStepCounter(train_cfg.on_nonfinite, train_cfg.max_bad_steps)
        self.spikes = LossSpikeDetector(train_cfg.loss_spike_window, train_cfg.loss_spike_zscore)
        self.is_main = is_main

    def judge_losses(
        self,
        losses: list[float],
        stop_requested: bool,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        world_size: int,
        elapsed_s: float = 0.0,
    ) -> LossVerdict:
        """One all-reduce: any non-finite loss, any stop request, the mean loss over
        micro batches and processes and the mean clock (the same numbers everywhere)."""
        total = 0.0
        for value in losses:
            total += value
        finite = math.isfinite(total)
        flags = torch.tensor(
            [
                float(not finite),
                float(stop_requested),
                total / len(losses) if finite else 0.0,
                elapsed_s,
            ],
            device=device,
            dtype=torch.float64,
        )
        flags = reduce_sum(flags)
        nonfinite = bool(flags[0] > 0)
        mean_loss = float(flags[2]) / world_size
        spike = not nonfinite and self.spikes.is_spike(mean_loss)
        return LossVerdict(mean_loss, nonfinite, spike, bool(flags[1] > 0),
                           float(flags[3]) / world_size)  # fmt: skip

    def bad(self, step: int, why: str, nonfinite: bool) -> bool:
        """Record a skipped step (warned once, by the main process); True: stop the run."""
        if self.is_main:
            log.warning("step %d: %s, step skipped", step, why)
        return self.counter.bad(nonfinite)

    def good(self, mean_loss: float) -> None:
        self.counter.good()
        self.spikes.update(mean_loss)

    def stop_message(self, step: int, run_dir: str | Path) -> str:
        return self.counter.stop_message(step, run_dir)

    def state_dict(self) -> dict[str, Any]:
        return self.spikes.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.spikes.load_state_dict(state)
