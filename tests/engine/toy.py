"""A least-squares toy objective for in-process engine tests (registered as `toy-regression`):
y = x @ w + noise, fitted by one linear layer; the batches carry the data position so tests
can see which rows each step trained on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline import config as config_lib
from pipeline.objectives.base import Datasets, Objective, ObjectiveConfig
from pipeline.registry import register
from pipeline.train_config import RunConfig

NAME = "toy-regression"


class Regression(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, row: torch.Tensor):
        loss = ((self.linear(x).squeeze(-1) - y) ** 2).mean()
        return loss, {"loss": loss.detach(), "first_row": row[0].float()}


class Rows:
    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["x"])

    def __getitem__(self, idx):
        return {k: v[idx] for k, v in self.columns.items()}


@register("objective", NAME)
class ToyRegression(Objective):
    @dataclass
    class Config(ObjectiveConfig):
        name: str = NAME
        dim: int = 4
        rows: int = 256

    def build_data(self, ctx) -> Datasets:
        g = torch.Generator().manual_seed(0)
        n, d = self.cfg.rows, self.cfg.dim
        x = torch.randn(n, d, generator=g)
        y = x @ torch.arange(1.0, d + 1) + 0.01 * torch.randn(n, generator=g)
        data = {"x": x, "y": y, "row": torch.arange(n)}
        return Datasets(Rows(data), Rows({k: v[:32] for k, v in data.items()}))

    def build_module(self, ctx) -> nn.Module:
        return Regression(self.cfg.dim)

    def collate(self, examples, generator) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in examples.items()}


def toy_config(out, *overrides: str) -> RunConfig:
    return config_lib.load_config(
        RunConfig,
        None,
        [
            f"objective.name={NAME}", f"output_dir={out}", "train.micro_batch_size=8",
            "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=1000",
            "optim.lr=0.05", "optim.schedule=constant", "log.progress_bar=false",
            "log.trackers=[]", "log.plots=false", "train.export=false", *overrides,
        ],
    )  # fmt: skip
