"""`python -m pipeline finetune EXPORT_DIR CONFIG [key=value ...] [--output-dir DIR]`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.cli import command, config_parser, load_run_config


@command("finetune", "fine-tune an export for sequence or token classification on the engine")
def finetune_command(argv: list[str]) -> int:
    from pipeline.finetune.config import FinetuneConfig

    parser = config_parser(
        "python -m pipeline finetune",
        FinetuneConfig,
        "Fine-tune a pretrained export (EXPORT_DIR: a Hugging Face folder or Hub name) with "
        "AutoModelForSequenceClassification (objective.name=seqcls) or "
        "AutoModelForTokenClassification (objective.name=tokcls: a tag per word); reports "
        "accuracy and macro-F1 on held-out data and writes RUN_DIR/export.",
    )
    parser.usage = (
        "python -m pipeline finetune EXPORT_DIR CONFIG [key=value ...] [--output-dir DIR]"
    )
    export_dir, rest = _split_export_dir(argv)
    if export_dir is None:
        parser.parse_args(rest)  # --help, or the usage error
        parser.error("EXPORT_DIR and CONFIG are required")
    args = parser.parse_intermixed_args(rest)
    args.export_dir = export_dir
    args.overrides.append(f"model.from_pretrained={args.export_dir}")
    cfg = load_run_config(FinetuneConfig, args)
    _check_source(cfg.model.from_pretrained)
    from pipeline.workflow import train_and_export

    result = train_and_export(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # the held-out metrics, once
        print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return 0


def _split_export_dir(argv: list[str]) -> tuple[str | None, list[str]]:
    """EXPORT_DIR is the first positional argument (options may come anywhere)."""
    i = 0
    while i < len(argv):
        if argv[i] == "--output-dir":
            i += 2
            continue
        if not argv[i].startswith("-") and "=" not in argv[i]:
            return argv[i], argv[:i] + argv[i + 1 :]
        i += 1
    return None, argv


def _check_source(source: str) -> None:
    """A local export must exist with its config (a Hub name is checked when loaded)."""
    from pipeline.data.sources import DataError

    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise DataError(
            f"EXPORT_DIR {source!r} is not a Hugging Face folder (no config.json); "
            f"pass RUN_DIR/export of a pretraining run"
        )
