"""`python -m pipeline recipes [--path] [PREFIX]`: the shipped recipes and sbatch templates."""

from __future__ import annotations

import argparse

from pipeline.cli import command


@command("recipes", "list the shipped recipes (train NAME finds one by name) and sbatch templates")
def recipes_command(argv: list[str]) -> int:
    from pipeline import recipes

    parser = argparse.ArgumentParser(
        prog="python -m pipeline recipes",
        description="The recipes shipped with the package, by the name `train`, `finetune`, "
        "`stage` and `run` accept in place of a path (e.g. `python -m pipeline train mlm/tiny`).",
    )
    parser.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    parser.add_argument("--path", action="store_true", help="print each recipe's file path too")
    args = parser.parse_args(argv)
    shown = [n for n in recipes.names() if n.startswith(args.prefix)]
    for name in shown:
        print(f"{name:<32} {recipes.find(name)}" if args.path else name)
    templates = sorted(p.name for p in recipes.slurm_dir().glob("*.sbatch"))
    if not args.prefix:
        print(f"\nrecipes in {recipes.configs_dir()}")
        print(f"sbatch templates in {recipes.slurm_dir()}: {', '.join(templates)}")
    return 0
