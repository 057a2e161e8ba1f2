"""Shared pieces of the command line: command registration and config-file arguments.

A command is one module in pipeline/commands/ with a function decorated `@command(NAME, HELP)`
taking argv and returning an exit status; the registry finds it (kind "command")."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import registry


@dataclass
class Command:
    help: str
    run: Callable[[list[str]], int]


def command(name: str, help_text: str):
    def decorator(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        registry.register("command", name)(Command(help_text, fn))
        return fn

    return decorator


def commands() -> dict[str, Command]:
    return dict(registry.items("command"))


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
