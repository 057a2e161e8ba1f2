"""`python -m pipeline slurm submit CONFIG [key=value ...] --nodes N --gpus-per-node G ...`."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import command, config_parser

USAGE = "usage: python -m pipeline slurm submit CONFIG [key=value ...] --nodes N --gpus-per-node G"


def submit_parser() -> argparse.ArgumentParser:
    from pipeline.slurm import TEMPLATES
    from pipeline.train_config import RunConfig

    parser = config_parser(
        "python -m pipeline slurm submit",
        RunConfig,
        "Validate a training config, then submit it with sbatch through a template in slurm/ "
        "(or --print the sbatch command and the template). The job runs in the repository root.",
    )
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument(
        "--gpus-per-node", type=int, help="GPUs (= training processes) per node; 0: CPU only"
    )
    parser.add_argument(
        "--template",
        choices=list(TEMPLATES),
        help="default: cpu without GPUs, deepspeed for engine.strategy=deepspeed, train on one "
        "node, else multinode",
    )
    parser.add_argument(
        "--procs-per-node", type=int, default=1, help="processes per node (cpu template)"
    )
    parser.add_argument("--partition", help="sbatch --partition (default: the cluster's)")
    parser.add_argument("--time", help="sbatch --time, e.g. 24:00:00 (default: the template's)")
    parser.add_argument(
        "--signal-seconds",
        type=int,
        help="USR1 (checkpoint and requeue) this many seconds before the time limit (default 120)",
    )
    parser.add_argument("--array", help="sbatch --array, e.g. 0-3; see slurm/README.md")
    parser.add_argument("--job-name", help="sbatch --job-name (default: the template's)")
    parser.add_argument(
        "--log", help="sbatch --output pattern (default slurm-%%x-%%j.out in this folder)"
    )
    parser.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="extra sbatch option, repeatable, e.g. --sbatch-arg=--account=abc",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print the sbatch command and the template; submit nothing",
    )
    return parser


@command("slurm", "submit a training run to SLURM (`slurm submit ... --print` shows the script)")
def slurm_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\nsubcommands:\n  submit   validate a config and sbatch it (see --help)")
        return 0 if argv else 2
    if argv[0] != "submit":
        print(f"error: unknown slurm subcommand {argv[0]!r}; try: submit", file=sys.stderr)
        return 2
    args = submit_parser().parse_intermixed_args(argv[1:])
    from pipeline import slurm

    request = slurm.SubmitRequest(
        config=args.config,
        overrides=list(args.overrides),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        procs_per_node=args.procs_per_node,
        template=args.template,
        partition=args.partition,
        time=args.time,
        output_dir=args.output_dir,
        signal_seconds=args.signal_seconds,
        array=args.array,
        job_name=args.job_name,
        log=args.log,
        sbatch_args=list(args.sbatch_arg),
    )
    plan = slurm.plan_submission(request)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.print_only:
        sys.stdout.write(slurm.render(plan))
        return 0
    job_id = slurm.submit(plan)
    nodes = f"{request.nodes} node{'s' if request.nodes > 1 else ''}"
    print(f"submitted job {job_id} ({plan.script}, {nodes})")
    print(f"log: {slurm.log_path(plan, job_id)}")
    print(f"run folder: {slurm.run_folder(plan, job_id)}")
    return 0
