"""Every recipe shipped in configs/ builds with the schema of the command that reads it."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file())


def schema_for(path: Path) -> type | None:
    folder = path.relative_to(ROOT / "configs").parts[0]
    if folder in ("mlm", "ebm"):
        from pipeline.train_config import RunConfig

        return RunConfig
    if folder == "finetune":
        if "tasks" in yaml.safe_load(
            path.read_text()
        ):  # a suite: python -m pipeline finetune-suite
            from pipeline.commands.finetune_suite import SuiteConfig

            return SuiteConfig
        from pipeline.finetune.config import FinetuneConfig

        return FinetuneConfig
    if folder == "stages":
        from pipeline.stages.schema import StageRunConfig

        return StageRunConfig
    if folder == "pipeline":
        from pipeline.chain import ChainConfig

        return ChainConfig
    return None


def test_every_recipe_folder_is_known():
    folders = {p.relative_to(ROOT / "configs").parts[0] for p in CONFIGS}
    assert folders <= {"mlm", "ebm", "finetune", "stages", "pipeline", "deepspeed", "accelerate"}, (
        folders
    )


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.suffix == ".yaml"], ids=lambda p: str(p.relative_to(ROOT))
)
def test_recipe_builds(path):
    schema = schema_for(path)
    if schema is None:  # configs/accelerate: accelerate's own format
        from accelerate.commands.config.config_args import load_config_from_file

        assert load_config_from_file(str(path)) is not None
        return
    # a fine-tuning recipe gets its model from the EXPORT_DIR argument
    finetune = path.parts[-2] == "finetune" and schema.__name__ == "FinetuneConfig"
    overrides = ["model.from_pretrained=runs/tiny/export"] if finetune else []
    cfg = load_config(schema, path, overrides)
    if schema.__name__ == "SuiteConfig":  # a suite: each task's fine-tuning config builds too
        from pipeline.commands.finetune_suite import parse_tasks, task_config

        for name, task in parse_tasks(cfg, path.parent).items():
            task_config(cfg, name, task, seed=cfg.seeds[0])
    if path.parts[-2] == "pipeline":  # a chain: each step's recipe builds too
        from pipeline.chain import _recipe, _schema

        for step in cfg.stages:
            load_config(_schema(step.command), _recipe(step, path), list(step.overrides))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.suffix == ".json"], ids=lambda p: p.name)
def test_deepspeed_json_parses(path):
    data = json.loads(path.read_text())
    assert "zero_optimization" in data
    assert yaml.safe_load(path.read_text()) == data
