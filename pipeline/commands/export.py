"""`python -m pipeline export RUN_DIR [--checkpoint DIR]`."""

from __future__ import annotations

import argparse

from pipeline.cli import command


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
