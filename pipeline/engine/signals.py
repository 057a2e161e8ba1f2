"""Stop requests (SIGTERM, SIGINT, SLURM's SIGUSR1): the handler only sets a flag; the loop
checks it at each step boundary, all processes agree, checkpoint, and exit with PREEMPTED.

A step that never ends (a loader waiting on a dead stream) would never read the flag, and the
scheduler's SIGKILL would then come without the requeue exit code; so the first signal also
starts a grace timer (train.stop_grace_s): if the loop has not acted on the flag by then, the
process exits PREEMPTED at once, keeping the last checkpoint (they are atomic)."""

from __future__ import annotations

import os
import signal
import sys
import threading

PREEMPTED = 75  # EX_TEMPFAIL: "stopped early, checkpoint written, requeue me"


class StopFlag:
    def __init__(self, grace_s: float = 0.0) -> None:
        self.signal_name: str | None = None
        self.grace_s = grace_s
        self._installed: dict[int, object] = {}
        self._timer: threading.Timer | None = None

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
        if self.signal_name is None and self.grace_s > 0:
            self._timer = threading.Timer(self.grace_s, self._expire)
            self._timer.daemon = True
            self._timer.start()
        self.signal_name = signal.Signals(signum).name

    def _expire(self) -> None:
        sys.stderr.write(
            f"stop requested by {self.signal_name}, but the step did not end within "
            f"train.stop_grace_s={self.grace_s:g} s (a stuck data loader or collective?): "
            f"exiting {PREEMPTED} without a new checkpoint; a resume continues from the last one\n"
        )
        sys.stderr.flush()
        os._exit(PREEMPTED)

    def acknowledge(self) -> None:
        """The loop is acting on the stop (checkpoint, exit): the grace timer is not needed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        self.acknowledge()
        for sig, handler in self._installed.items():
            signal.signal(sig, handler)
        self._installed.clear()
