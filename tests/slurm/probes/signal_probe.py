"""Stands in for training in the preemption tests.

Like the trainer it installs handlers for USR1, TERM and INT that only set a flag; when the flag
is set it writes a marker (the "checkpoint") and exits with 75. On a restart
(SLURM_RESTART_COUNT >= 1) it "resumes" and finishes with 0. PROBE_CRASH_RANK=N: rank N fails.
No signal within PROBE_MAX_S seconds: exit PROBE_NO_SIGNAL_STATUS (default 3).
"""

import os
import signal
import sys
import time

received: list[str] = []


def _handler(signum: int, frame: object) -> None:
    received.append(signal.Signals(signum).name)


def main() -> int:
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)
    rank = os.environ.get("RANK", "0")
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    print(f"PROBE START rank={rank} restart={restart}", flush=True)
    if os.environ.get("PROBE_CRASH_RANK") == rank:
        print(f"PROBE CRASH rank={rank}", flush=True)
        return 1
    if restart >= 1:
        print(f"PROBE RESUMED rank={rank}", flush=True)
        return 0
    deadline = time.monotonic() + float(os.environ.get("PROBE_MAX_S", "170"))
    while time.monotonic() < deadline:
        if received:
            name = received[0]
            print(f"PROBE GOT {name} rank={rank}", flush=True)
            marker = os.path.join(os.environ["PROBE_DIR"], f"got-{name}-rank{rank}")
            with open(marker, "w") as f:
                f.write(f"{restart}\n")
            time.sleep(0.5)  # "writing the checkpoint"
            return 75
        time.sleep(0.05)
    print(f"PROBE NO SIGNAL rank={rank}", flush=True)
    return int(os.environ.get("PROBE_NO_SIGNAL_STATUS", "3"))


if __name__ == "__main__":
    sys.exit(main())
