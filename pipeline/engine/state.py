"""The loop's counters, in one object that goes into every checkpoint (`trainer_state.json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainState:
    step: int = 0
    """Optimizer updates applied."""
    batches: int = 0
    """Global batches consumed: the data position. Every attempted step consumes one, a skipped
    step too, so a resume continues with the next unseen batch (micro batch k of a process is
    batch k // accumulation's slot k % accumulation)."""
    tokens: int = 0
    """Training tokens of the applied steps, all processes together."""
    elapsed_s: float = 0.0
    """Wall-clock seconds of training before this process started (earlier runs of the folder)."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.step, self.tokens = int(saved["step"]), int(saved["tokens"])
        # checkpoints written before the data position was saved: no step had been skipped
        # in a way the old resume could honour, so the position was the step
        self.batches = int(saved.get("batches", saved["step"]))
        self.elapsed_s = float(saved.get("elapsed_s", 0.0))
