"""Command line: `python -m pipeline COMMAND ...` (also under accelerate launch / torchrun / SLURM).

    train    CONFIG [key=value ...] [--output-dir DIR]   pretrain (mlm, cd, nce, infonce...)
    export   RUN_DIR [--checkpoint DIR]                 Hugging Face folder in RUN_DIR/export

Errors a user can act on (bad config, bad data, bad setup) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def command(name: str, help_text: str):
    def decorator(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = (help_text, fn)
        return fn

    return decorator


def config_parser(prog: str, schema: type, description: str) -> argparse.ArgumentParser:
    """CONFIG + key=value overrides + --output-dir; --help lists every key with its docstring."""
    from pipeline import config as config_lib

    epilog = "config keys (set in YAML or as key=value):\n  " + "\n  ".join(
        config_lib.describe(schema)
    )
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a YAML recipe, e.g. configs/mlm/tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3")
    parser.add_argument("--output-dir", help="run folder (sets output_dir)")
    return parser


def load_run_config(schema: type, args: argparse.Namespace):
    from pipeline import config as config_lib

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    return config_lib.load_config(schema, args.config, overrides)


@command("train", "pretrain a model with an objective on the engine")
def train_command(argv: list[str]) -> int:
    from pipeline.train_config import RunConfig

    args = config_parser("python -m pipeline train", RunConfig, "Pretrain a model.").parse_args(
        argv
    )
    cfg = load_run_config(RunConfig, args)
    from pipeline.engine.train import train

    train(cfg)
    return 0


@command("export", "write RUN_DIR/export (a Hugging Face folder) from the newest valid checkpoint")
def export_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline export")
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: the newest valid one)")
    args = parser.parse_args(argv)
    from pipeline.export import export_run

    folder = export_run(args.run_dir, args.checkpoint)
    print(folder)
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or setup: one line, exit 2, no traceback."""
    from pipeline.config import ConfigError
    from pipeline.data.sources import DataError
    from pipeline.engine.checkpoint import CheckpointError
    from pipeline.engine.setup import SetupError
    from pipeline.export import ExportError

    return (ConfigError, DataError, SetupError, CheckpointError, ExportError)


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
    for noisy in ("datasets", "httpx", "urllib3", "accelerate", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"  {name:9s} {help_text}" for name, (help_text, _) in COMMANDS.items()]
        print("usage: python -m pipeline COMMAND [...]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][1](rest)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
