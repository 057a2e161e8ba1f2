"""Plugins by discovery: a new objective (or command) is one new file in its package, and the
registry, the config builder, `--help`, the engine and the model card find it with no other
file touched (README and docs/EXTENDING.md say so)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, metrics, run_cli

OBJECTIVE = '''
"""A least-squares toy objective: y = x @ w + noise, learned by a linear layer."""

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.objectives.base import Datasets, Objective, ObjectiveConfig, Task
from pipeline.registry import register


class Regression(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x, y):
        loss = ((self.linear(x).squeeze(-1) - y) ** 2).mean()
        return loss, {"loss": loss.detach()}


@register("objective", "NAME")
class ToyRegression(Objective):
    task = Task(name="Toy regression")

    @dataclass
    class Config(ObjectiveConfig):
        name: str = "NAME"
        dim: int = 4
        """Input features."""

    def build_data(self, ctx):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, self.cfg.dim, generator=g)
        w = torch.arange(1.0, self.cfg.dim + 1)
        data = {"x": x, "y": x @ w + 0.01 * torch.randn(512, generator=g)}
        return Datasets(Rows(data), Rows({k: v[:64] for k, v in data.items()}))

    def build_module(self, ctx):
        return Regression(self.cfg.dim)

    def collate(self, examples, generator):
        return {k: torch.as_tensor(v) for k, v in examples.items()}


class Rows:
    """Map-style: rows by index list, as the engine's batches read them."""

    def __init__(self, columns):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, idx):
        return {k: v[idx] for k, v in self.columns.items()}
'''

COMMAND = """
from pipeline.cli import command


@command("NAME", "say hello (a plugin command)")
def hello(argv):
    print("hello from a plugin", *argv)
    return 0
"""


@pytest.fixture
def dropped(request):
    """Write plugin modules into the package for the duration of one test."""
    written: list[Path] = []

    def drop(package: str, source: str) -> str:
        name = f"plugin_{uuid.uuid4().hex[:8]}"
        path = ROOT / "pipeline" / package / f"{name}.py"
        path.write_text(source.replace("NAME", name))
        written.append(path)
        return name

    yield drop
    for path in written:
        path.unlink(missing_ok=True)


def test_a_new_objective_module_trains_without_touching_another_file(dropped, tmp_path):
    name = dropped("objectives", OBJECTIVE)
    help_text = run_cli(["train", "--help"]).stdout
    assert "objective (objective (by name)" in help_text
    out = tmp_path / "run"
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"objective:\n  name: {name}\n  dim: 3\n")
    run_cli(["train", str(recipe), "train.max_steps=150", "train.log_every=10", "train.eval_every=0", "optim.lr=0.2",
             "optim.schedule=constant", "optim.weight_decay=0",
             "train.micro_batch_size=32", "log.progress_bar=false", "log.trackers=[]",
             "log.plots=false", "--output-dir", str(out)])  # fmt: skip
    losses = [r["loss"] for r in metrics(out)]
    assert losses[0] > 1.0 and losses[-1] < 0.05 * losses[0], losses
    evals = metrics(out, "eval")
    assert evals and evals[-1]["loss"] < 0.05
    # the model card takes its task from the class
    assert "Toy regression" in (out / "export" / "README.md").read_text()
    saved = json.loads(
        (out / "checkpoints").joinpath(_newest(out), "trainer_state.json").read_text()
    )
    assert saved["step"] == 150


def test_a_new_command_module_is_a_command(dropped):
    name = dropped("commands", COMMAND)
    listing = run_cli(["--help"]).stdout
    assert f"  {name}" in listing and "say hello (a plugin command)" in listing
    assert run_cli([name, "world"]).stdout.strip() == "hello from a plugin world"


def _newest(run_dir: Path) -> str:
    return sorted(
        p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")
    )[-1]
