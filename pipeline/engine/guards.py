"""Step guards: which optimizer steps are skipped, and when a run must stop instead.

A step is *bad* when its loss or gradient norm is non-finite on any process, or (optional)
when its loss is a spike: more than `zscore` standard deviations above the mean of the last
`window` good losses. The decision is taken on all-reduced numbers, so every process skips
the same step (parameters and optimizer state untouched) or every process stops. The spike
window is part of the checkpoint, so a resumed run judges the next step exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any


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

    def stop_message(self, step: int, run_dir: Any) -> str:
        if self.on_nonfinite == "stop" and self.in_a_row < self.max_bad_steps:
            why = "non-finite loss or gradient and train.on_nonfinite=stop"
        else:
            why = f"{self.in_a_row} bad (non-finite or spiking) steps in a row"
        return (
            f"stopped after step {step}: {why}; the last good state is saved in "
            f"{run_dir}/checkpoints; lower optim.lr or check the data"
        )
