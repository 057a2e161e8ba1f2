"""Stop requests (SIGTERM, SIGINT, SLURM's SIGUSR1): the handler only sets a flag; the loop
checks it at each step boundary, all processes agree, checkpoint, and exit with PREEMPTED."""

from __future__ import annotations

import os
import signal
import sys

PREEMPTED = 75  # EX_TEMPFAIL: "stopped early, checkpoint written, requeue me"


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._installed: dict[int, object] = {}

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            try:
                self._installed[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            # second Ctrl-C: leave at once; checkpoints are atomic, so nothing is corrupted
            sys.stderr.write("second interrupt: exiting now without a checkpoint\n")
            os._exit(130)
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._installed.items():
            signal.signal(sig, handler)
        self._installed.clear()
