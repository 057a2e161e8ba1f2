"""`python -m pipeline stage CONFIG [key=value ...] [--output-dir DIR]`."""

from __future__ import annotations

import json
import os

from pipeline.cli import command, config_parser, load_run_config


@command("stage", "run a single-node stage (autoencoder, kmeans, embed)")
def stage_command(argv: list[str]) -> int:
    from pipeline.stages.schema import StageRunConfig

    parser = config_parser("python -m pipeline stage", StageRunConfig, "Run a single-node stage.")
    cfg = load_run_config(StageRunConfig, parser.parse_intermixed_args(argv))
    from pipeline.stages.runner import run_stage

    metrics = run_stage(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(
            json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()})
        )
    return 0
