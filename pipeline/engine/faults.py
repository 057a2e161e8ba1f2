"""Fault injection for tests of the recovery promises (kill -9 anywhere, crash mid-save, NaN).

`PIPELINE_FAULT=POINT@STEP` injects a fault at POINT when the step counter is STEP; unset
(always, outside tests) `install()` returns no hook and the loop carries none. Several faults: `A@3,B@5`;
`POINT@STEPxN` fires at most N times in a process (`nan_loss@3x1`: one bad attempt at step 3);
`POINT@*` fires at every step.
`PIPELINE_FAULT_RANK=K` limits the faults to process K (default: every process).

Kill points (the process dies with SIGKILL, as `kill -9` or the OOM killer would):
  after_checkpoint   right after checkpoint STEP is complete
  mid_checkpoint     while checkpoint STEP is being written (files present, no manifest)
  after_step         right after optimizer step STEP, before any checkpoint
Other points:
  disk_full          saving checkpoint STEP raises OSError(ENOSPC), as a full disk would
  stall_checkpoint   checkpoint STEP pauses 5 s half written (to signal a process mid-save)
  nan_loss           the loss of (every attempt at) step STEP becomes NaN, gradients too
  nan_value          the loss value becomes NaN but its gradients stay finite: only this
                     process can tell the step is bad (the case the all-reduced flag is for)
  spike_loss         the loss of step STEP is multiplied by 1000 (a loss spike)
  stall_data         reading the batch of step STEP sleeps HOLD_S, deaf to stop signals (a
                     loader stuck on a dead stream)
  hold               after step STEP is logged, wait (at most HOLD_S) until a stop signal
                     arrives: a test can signal "in the middle of training" however fast it is
For nan_loss and spike_loss, STEP is the step being computed (1 for the first step).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from pipeline.engine.hooks import Hook

KILL_POINTS = ("after_checkpoint", "mid_checkpoint", "after_step")
POINTS = (
    *KILL_POINTS,
    "disk_full",
    "stall_checkpoint",
    "nan_loss",
    "nan_value",
    "spike_loss",
    "hold",
    "stall_data",
)
STALL_S = 5.0
HOLD_S = 120.0

_fired: dict[str, int] = {}  # times each counted fault (`...xN`) fired in this process


def active(point: str, step: int) -> bool:
    """True when PIPELINE_FAULT asks for `point` at `step` on this process."""
    spec = os.environ.get("PIPELINE_FAULT")
    if not spec:
        return False
    only_rank = os.environ.get("PIPELINE_FAULT_RANK")
    if only_rank is not None and only_rank != os.environ.get("RANK", "0"):
        return False
    for item in spec.split(","):
        want_point, _, when = item.strip().partition("@")
        want_step, _, times = when.partition("x")
        if want_point != point or not (want_step == "*" or want_step == str(step)):
            continue
        if times.isdigit():
            key = item.strip()
            if _fired.get(key, 0) >= int(times):
                continue
            _fired[key] = _fired.get(key, 0) + 1
        return True
    return False


def maybe_fail(point: str, step: int) -> None:
    """Kill points die with SIGKILL; disk_full raises OSError(ENOSPC)."""
    if point == "mid_checkpoint" and active("stall_checkpoint", step):
        time.sleep(STALL_S)
    if not active(point, step):
        return
    if point == "disk_full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected: disk_full)")
    os.kill(os.getpid(), signal.SIGKILL)


def hold(step: int, stop_requested: Callable[[], bool]) -> None:
    """`hold@STEP`: sleep until a stop signal sets the flag (signal handlers run during sleep)."""
    if not active("hold", step):
        return
    deadline = time.monotonic() + HOLD_S
    while not stop_requested() and time.monotonic() < deadline:
        time.sleep(0.05)


def corrupt_loss(loss: Any, step: int) -> Any:
    """The loss of step `step` made non-finite (nan_loss) or spiked (spike_loss), for tests."""
    if active("nan_loss", step):
        return loss * float("nan")
    if active("nan_value", step):
        return loss + loss.detach() * float("nan")  # d/dparams of the NaN term is 0
    if active("spike_loss", step):
        return loss * 1000.0
    return loss


class FaultHook(Hook):
    """The fault points as loop hooks (see the module docstring for each point)."""

    # checkpoint phase -> fault point
    CHECKPOINT_POINTS = {
        "files": "disk_full",
        "before_manifest": "mid_checkpoint",
        "complete": "after_checkpoint",
    }

    def on_data(self, step: int) -> None:
        if active("stall_data", step):
            deadline = time.monotonic() + HOLD_S
            while time.monotonic() < deadline:  # signal handlers run, the flag is not read
                time.sleep(0.05)

    def on_loss(self, loss: Any, step: int) -> Any:
        return corrupt_loss(loss, step)

    def after_update(self, step: int) -> None:
        maybe_fail("after_step", step)

    def on_step_end(self, step: int, stop_requested: Callable[[], bool]) -> None:
        hold(step, stop_requested)

    def on_checkpoint(self, phase: str, step: int) -> None:
        maybe_fail(self.CHECKPOINT_POINTS[phase], step)


def install() -> FaultHook | None:
    """The fault hook when PIPELINE_FAULT is set (tests), else None."""
    return FaultHook() if os.environ.get("PIPELINE_FAULT") else None
