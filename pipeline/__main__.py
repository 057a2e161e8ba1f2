"""Command line: `python -m pipeline COMMAND ...` (also under accelerate launch / torchrun / SLURM).

    train    CONFIG [key=value ...] [--output-dir DIR]   pretrain (mlm, cd, nce, infonce...)
    export   RUN_DIR [--checkpoint DIR]                 Hugging Face folder in RUN_DIR/export
    ...      `python -m pipeline --help` lists every command (one module each in commands/)

Errors a user can act on (bad config, bad data, bad setup) print one line and exit 2.
"""

from __future__ import annotations

import logging
import os
import sys

from pipeline.cli import commands


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or setup: one line, exit 2, no traceback."""
    from pipeline.config import ConfigError
    from pipeline.data.sources import DataError
    from pipeline.engine.checkpoint import CheckpointError
    from pipeline.engine.guards import NonFiniteStop
    from pipeline.engine.launch import SetupError
    from pipeline.export import ExportError
    from pipeline.hub import HubError

    errors = (ConfigError, DataError, SetupError, CheckpointError, ExportError, HubError)
    return (*errors, NonFiniteStop)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # keep thread pools per process small under multi-process launches (2x step time seen)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    table = commands()
    for noisy in ("datasets", "httpx", "urllib3", "accelerate", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"  {name:9s} {c.help}" for name, c in table.items()]
        print("usage: python -m pipeline COMMAND [...]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"error: unknown command {name!r}; commands: {', '.join(table)}", file=sys.stderr)
        return 2
    try:
        return table[name].run(rest)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
