"""Every recipe shipped in configs/ is executed, not only parsed: built with the schema of the
command that reads it, then run for one optimizer step (stages: a couple of steps) with its
sizes shrunk and its data swapped for a tiny local sample of the same shape. So the model,
tokenizer, data layer, objective and optimizer of bert-base, sst2, imdb, wikiann, the EBMs and
the stages all run. Recipes are globbed: a new one is picked up without editing this file."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.config import load_config, to_dict
from pipeline.engine import checkpoint
from tests.finetune.conftest import make_rows, tiny_export  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file())
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer-bible-1k"
LOCAL_SOURCES = ("toy:", "sklearn:")  # offline and small already: kept as the recipe has them


def _is_suite(path: Path) -> bool:
    return path.suffix == ".yaml" and "tasks" in (yaml.safe_load(path.read_text()) or {})


def schema_for(path: Path) -> type | None:
    folder = path.relative_to(ROOT / "configs").parts[0]
    if folder in ("mlm", "ebm"):
        from pipeline.train_config import RunConfig

        return RunConfig
    if folder == "finetune":
        if _is_suite(path):  # python -m pipeline finetune-suite: tasks x seeds of fine-tunes
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


# ---------------------------------------------------------------- shrinking


def _get(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _has(tree: dict, key: str) -> bool:
    try:
        _get(tree, key)
    except KeyError:
        return False
    return True


# key -> value, or a function of the recipe's value; applied only where the recipe's schema has
# the key (a model family or objective without it is left alone)
SHRINK: dict[str, Any] = {
    "train.max_steps": 1,
    "train.micro_batch_size": 4,
    "train.batch_size": 16,
    "train.global_batch_size": lambda v: None if v is None else 8,  # keeps accumulation (2)
    "train.eval_every": 0,
    "train.log_every": 1,
    "train.checkpoint_every": 1000,
    "train.export": False,
    "train.device": "cpu",
    "log.progress_bar": False,
    "log.plots": False,
    "log.trackers": [],
    "data.num_workers": 0,
    "data.block_size": 32,
    "data.max_length": 32,
    "data.max_eval_examples": 8,
    "data.max_examples": 40,
    "data.chunk_words": lambda v: 6 if v else 0,
    "tokenizer.vocab_size": 200,
    "tokenizer.name_or_path": lambda v: None if v is None else str(TOKENIZER),
    "model.overrides": lambda v: {
        **(v or {}),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },  # fmt: skip
    "model.hidden": lambda v: [16] * len(v),
    "model.channels": lambda v: [4] * len(v),
    "stage.hidden": lambda v: [16] * len(v),
    "stage.channels": lambda v: [4] * len(v),
    "stage.n_init": 1,
    "stage.max_iter": 10,
    "objective.steps": lambda v: min(v, 2) if isinstance(v, int) else v,
    "objective.buffer_size": lambda v: min(v, 64) if isinstance(v, int) else v,
}


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sample_data(tree: dict, tmp: Path) -> dict[str, Any]:
    """A local sample with the columns the recipe reads, for sources that need the network or
    are large (a Hub dataset, the embedded Bible); toy and scikit-learn sources are kept."""
    data = tree.get("data", {})
    one = isinstance(data.get("path"), str)  # the stages take one source
    paths = [data["path"]] if one else data.get("path") or []
    if not paths or all(str(p).startswith(LOCAL_SOURCES) for p in paths):
        return {}
    rows = make_rows(160, seed=0)
    text = data.get("text_column", "text")
    label = data.get("label_column")
    objective = tree.get("objective", {}).get("name")
    rng = random.Random(0)
    if objective == "tokcls":  # words and one tag per word
        sample = [{text: r["text"].split(), label: [rng.randrange(3) for _ in r["text"].split()]}
                  for r in rows]  # fmt: skip
    else:
        names = data.get("labels") or ["a", "b", "c"]
        sample = [{text: r["text"], **({label: names[i % len(names)]} if label else {})}
                  for i, r in enumerate(rows)]  # fmt: skip
    local = _write_jsonl(tmp / "sample.jsonl", sample)
    out: dict[str, Any] = {"data.path": local if one else [local]}
    for key, value in (("name", None), ("eval_path", None), ("eval_fraction", 0.25),
                       ("eval_documents", 20)):  # fmt: skip
        if key in data:
            out[f"data.{key}"] = value
    return out


def shrunk_overrides(schema: type, path: Path, tmp: Path, export: Path) -> list[str]:
    base = [f"output_dir={tmp / 'run'}"]
    folder = path.relative_to(ROOT / "configs").parts[0]
    if folder == "finetune":
        base.append(f"model.from_pretrained={export}")
    tree = to_dict(load_config(schema, path, base))
    values: dict[str, Any] = {}
    for key, value in SHRINK.items():
        if _has(tree, key):
            values[key] = value(_get(tree, key)) if callable(value) else value
    values.update(sample_data(tree, tmp))
    if tree.get("stage", {}).get("name") == "embed":
        values["stage.model"] = str(export)
    return base + [f"{k}={json.dumps(v)}" for k, v in values.items()]


@pytest.fixture(autouse=True)
def _one_thread_fresh_accelerate():
    """One torch thread; each run gets a fresh Accelerate state (a recipe's mixed precision
    may differ from the previous run's, which one process's state cannot change)."""
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


RUNNABLE = [p for p in CONFIGS if p.suffix == ".yaml" and schema_for(p) is not None
            and p.relative_to(ROOT / "configs").parts[0] != "pipeline"
            and not _is_suite(p)]  # fmt: skip


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_recipe_runs_one_step(path, tmp_path, tiny_export):  # noqa: F811
    schema = schema_for(path)
    cfg = load_config(schema, path, shrunk_overrides(schema, path, tmp_path, tiny_export))
    run_dir = Path(cfg.output_dir)
    if path.relative_to(ROOT / "configs").parts[0] == "stages":
        from pipeline.stages.runner import run_stage

        result = run_stage(cfg)
        numbers = [v for v in result.values() if isinstance(v, (int, float))]
        assert numbers and all(math.isfinite(v) for v in numbers), result
        return
    from pipeline.workflow import train_and_export

    train_and_export(cfg)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train] == [1]  # one optimizer step was applied
    assert train[0]["loss"] is not None and math.isfinite(train[0]["loss"])
    saved = checkpoint.latest_valid(run_dir)
    assert saved is not None and saved.name == "step-00000001"


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.parts[-2] == "pipeline"], ids=lambda p: p.name
)
def test_chain_steps_are_shipped_recipes_that_build(path):
    """A chain runs shipped recipes (each executed above) with its overrides: those build."""
    from pipeline.chain import _recipe, _schema

    cfg = load_config(schema_for(path), path)
    for step in cfg.stages:
        recipe = Path(_recipe(step, path)).resolve()
        assert recipe in {p.resolve() for p in RUNNABLE}, recipe
        load_config(_schema(step.command), recipe, list(step.overrides))


@pytest.mark.parametrize("path", [p for p in CONFIGS if _is_suite(p)], ids=lambda p: p.name)
def test_suite_tasks_build(path):
    """A fine-tuning suite's tasks (Hub data: run by tests/finetune/test_glue.py on local data
    of the same shapes) each build a fine-tuning config."""
    from pipeline.commands.finetune_suite import parse_tasks, task_config

    suite = load_config(schema_for(path), path)
    tasks = parse_tasks(suite, path.parent)
    assert tasks
    for name, task in tasks.items():
        assert task_config(suite, name, task, seed=suite.seeds[0]).train.seed == suite.seeds[0]


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.parts[-2] == "accelerate"], ids=lambda p: p.name
)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(path)) is not None


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.suffix == ".json"], ids=lambda p: p.name)
def test_deepspeed_json_resolves_against_a_run(path):
    """Each DeepSpeed JSON fits a run config: the batch "auto"s are filled from it (bucket
    sizes stay "auto" for Accelerate to size from the model) and nothing contradicts it."""
    from pipeline.engine.deepspeed import resolve
    from pipeline.train_config import RunConfig

    data = json.loads(path.read_text())
    assert yaml.safe_load(path.read_text()) == data
    cfg = load_config(RunConfig, ROOT / "configs/mlm/tiny.yaml",
                      ["engine.strategy=deepspeed", f"engine.deepspeed_config={path}"])  # fmt: skip
    resolved = resolve(data, cfg, accumulation=2, world=2)
    micro = cfg.train.micro_batch_size
    assert resolved["train_micro_batch_size_per_gpu"] == micro
    assert resolved["gradient_accumulation_steps"] == 2
    assert resolved["train_batch_size"] == micro * 2 * 2
    assert resolved["zero_optimization"]["stage"] == data["zero_optimization"]["stage"]
