"""Chains: a YAML in configs/pipeline/ lists stages (steps); each runs in OUTPUT_DIR/NAME and reads the
run folder of the step named by its `input`.

    python -m pipeline run configs/pipeline/ae-kmeans.yaml --output-dir runs/chain
    python -m pipeline run configs/pipeline/ae-kmeans.yaml kmeans.stage.k=5 --output-dir ...
                                                           ^ step name, then the step's key

A step is complete when its folder holds `chain-step.json` whose fingerprint matches the
step's resolved config (and its upstream's fingerprint), and its outputs check out (stage:
outputs/ manifest; train: export/). Complete steps are skipped on the next invocation; a step
whose config changed, or whose upstream ran again, runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import config as config_lib
from pipeline.engine.setup import SetupError, launched_world_size
from pipeline.protocols import RunConfig
from pipeline.stages.base import outputs_problem
from pipeline.stages.schema import StageRunConfig

log = logging.getLogger("pipeline")
MARKER = "chain-step.json"


@dataclass
class ChainStep:
    name: str = ""
    """Step name; its run folder is OUTPUT_DIR/NAME."""
    command: Literal["stage", "train"] = "stage"
    """stage: `python -m pipeline stage`; train: `python -m pipeline train` (an MLM export)."""
    config: str = ""
    """The step's YAML recipe, relative to the current folder or to the chain file."""
    input: str | None = None
    """Name of an earlier step whose run folder this step reads (sets the stage's `input`)."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of the step's recipe."""


@dataclass
class ChainConfig:
    output_dir: str = "runs/chain"
    """Chain folder: one run folder per step, config.yaml, chain.json (statuses, metrics)."""
    stages: list[ChainStep] = field(default_factory=list)
    """The stages, in order; each is one step of the chain."""

    def validate(self) -> list[str]:
        problems, seen = [], []
        if not self.stages:
            problems.append("stages must list at least one stage")
        for i, step in enumerate(self.stages):
            where = f"stages[{i}]"
            if not step.name or "/" in step.name or "." in step.name:
                problems.append(f"{where}.name must be a plain name, got {step.name!r}")
            if step.name in seen:
                problems.append(f"{where}.name {step.name!r} is used twice")
            if not step.config:
                problems.append(f"{where}.config is required")
            if step.input is not None and step.input not in seen:
                problems.append(
                    f"{where}.input {step.input!r} is not an earlier step "
                    f"(earlier: {', '.join(seen) or 'none'})"
                )
            if step.command == "train" and step.input is not None:
                problems.append(f"{where}: a train step takes no input")
            seen.append(step.name)
        return problems


def split_overrides(names: list[str], overrides: list[str]) -> tuple[list, dict]:
    """`STEP.key=value` goes to the step named STEP; anything else is a chain-level override."""
    chain, per_step = [], {}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head in names and rest:
            per_step.setdefault(head, []).append(rest)
        else:
            chain.append(item)
    return chain, per_step


def run_chain(
    cfg: ChainConfig, chain_file: str | Path, step_overrides: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """Run or skip each step in order; return one record per step (name, status, metrics)."""
    if launched_world_size() > 1:
        raise SetupError("run a chain in one process; launch a distributed stage on its own")
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    config_lib.dump_yaml(cfg, root / "config.yaml")
    step_overrides = step_overrides or {}
    fingerprints: dict[str, str] = {}
    ran: set[str] = set()  # steps run by this invocation: whatever reads them runs again too
    records = []
    for step in cfg.stages:
        run_dir = root / step.name
        overrides = [*step.overrides, *step_overrides.get(step.name, []), f"output_dir={run_dir}"]
        if step.input:
            overrides.append(f"input={root / step.input}")
        recipe = _recipe(step, chain_file)
        step_cfg = config_lib.load_config(_schema(step.command), recipe, overrides)
        resolved = json.dumps(config_lib.to_dict(step_cfg), sort_keys=True, default=str)
        upstream = fingerprints.get(step.input or "", "")
        fp = hashlib.sha256(f"{step.command}|{resolved}|{upstream}".encode()).hexdigest()
        fingerprints[step.name] = fp
        if step.input not in ran and _complete(step, run_dir, fp):
            log.info("chain: %s is complete, skipped", step.name)
            metrics = json.loads((run_dir / MARKER).read_text()).get("metrics", {})
            records.append({"name": step.name, "status": "skipped", "metrics": metrics})
            continue
        (run_dir / MARKER).unlink(missing_ok=True)
        log.info("chain: running %s (%s %s)", step.name, step.command, recipe)
        start = time.perf_counter()
        metrics = _run(step.command, step_cfg)
        marker = {"fingerprint": fp, "seconds": time.perf_counter() - start, "metrics": metrics}
        (run_dir / MARKER).write_text(json.dumps(marker, indent=1, default=float))
        records.append({"name": step.name, "status": "ran", "metrics": metrics})
        ran.add(step.name)
    (root / "chain.json").write_text(json.dumps(records, indent=1, default=float))
    return records


def _schema(command: str) -> type:
    if command == "train":
        from pipeline.train_config import RunConfig

        return RunConfig
    from pipeline.stages.schema import StageRunConfig

    return StageRunConfig


def _recipe(step: ChainStep, chain_file: str | Path) -> Path:
    from pipeline import recipes

    for candidate in (Path(step.config), Path(chain_file).parent / step.config):
        if candidate.is_file():
            return candidate
    shipped = recipes.find(step.config)  # configs/stages/x.yaml of an installed package
    if shipped is not None:
        return shipped
    raise config_lib.ConfigError(
        [f"step {step.name!r}: config {step.config!r} not found (relative to here or {chain_file})"]
    )


def _complete(step: ChainStep, run_dir: Path, fingerprint: str) -> bool:
    marker = run_dir / MARKER
    if not marker.is_file():
        return False
    try:
        if json.loads(marker.read_text()).get("fingerprint") != fingerprint:
            return False
    except ValueError:
        return False
    if step.command == "train":
        return (run_dir / "export" / "config.json").is_file()
    return outputs_problem(run_dir) is None


def _run(command: str, cfg: RunConfig | StageRunConfig) -> dict[str, float]:
    if command == "train":
        from pipeline.workflow import train_and_export

        return train_and_export(cfg)
    from pipeline.stages.runner import run_stage

    return run_stage(cfg)
