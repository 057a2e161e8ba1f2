"""Fault injection for tests of the recovery promises (kill -9 anywhere, crash mid-save).

`PIPELINE_FAULT=POINT@STEP` makes the process die with SIGKILL at POINT when the step counter
is STEP; unset (always, outside tests) it costs one dictionary lookup. Points:
  after_checkpoint   right after checkpoint STEP is complete
  mid_checkpoint     while checkpoint STEP is being written (files present, no manifest)
  after_step         right after optimizer step STEP, before any checkpoint
"""

from __future__ import annotations

import os
import signal


def maybe_fail(point: str, step: int) -> None:
    spec = os.environ.get("PIPELINE_FAULT")
    if not spec:
        return
    want_point, _, want_step = spec.partition("@")
    if want_point == point and want_step.isdigit() and int(want_step) == step:
        os.kill(os.getpid(), signal.SIGKILL)
