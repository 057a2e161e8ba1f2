"""`python -m pipeline run configs/pipeline/X.yaml [STEP.key=value ...] [--output-dir DIR]`."""

from __future__ import annotations

import json

from pipeline.cli import command, config_parser


@command("run", "run a chain of stages (configs/pipeline/*.yaml), skipping completed ones")
def run_command(argv: list[str]) -> int:
    from pipeline import config as config_lib
    from pipeline.chain import ChainConfig, run_chain, split_overrides

    parser = config_parser(
        "python -m pipeline run",
        ChainConfig,
        "Run a chain of stages. Overrides STEP.key=value go to the step named STEP.",
    )
    args = parser.parse_intermixed_args(argv)
    raw = config_lib.load_yaml(args.config)
    names = [s.get("name") for s in raw.get("stages") or [] if isinstance(s, dict)]
    chain_overrides, per_step = split_overrides(names, list(args.overrides))
    if args.output_dir:
        chain_overrides.append(f"output_dir={args.output_dir}")
    cfg = config_lib.load_config(ChainConfig, args.config, chain_overrides)
    records = run_chain(cfg, args.config, per_step)
    for r in records:
        shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in r["metrics"].items()}
        print(f"{r['name']:12s} {r['status']:8s} {json.dumps(shown)}")
    return 0
