"""`python -m pipeline train CONFIG [key=value ...] [--output-dir DIR]`."""

from __future__ import annotations

from pipeline.cli import command, config_parser, load_run_config


@command("train", "pretrain a model with an objective on the engine")
def train_command(argv: list[str]) -> int:
    from pipeline.train_config import RunConfig

    parser = config_parser("python -m pipeline train", RunConfig, "Pretrain a model.")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --output-dir
    cfg = load_run_config(RunConfig, args)
    from pipeline.workflow import train_and_export

    train_and_export(cfg)
    return 0
