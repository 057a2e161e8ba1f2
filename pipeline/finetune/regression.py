"""Regression on text or text pairs (STS-B: a similarity score per sentence pair): a stock
`AutoModelForSequenceClassification` with one output and `problem_type="regression"`, trained
on the mean squared error.

Labels are floats (`data.label_column`), no label map. The forward returns the weighted squared
error and the sums Pearson's r is made of (n, x, y, x^2, y^2, xy), which reduce exactly over
micro batches and processes like the classification counts; Spearman's rank correlation needs
every prediction at once, so it (with Pearson's r again, by scipy) is scored after training on
each held-out set (`eval_results.json` in the export). The export loads with
`pipeline("text-classification", function_to_apply="none")`, whose score is the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pipeline import registry
from pipeline.finetune.metrics import COUNT, LOSS_SUM
from pipeline.finetune.objective import SequenceClassification
from pipeline.objectives.base import Task
from pipeline.protocols import RunContext

if TYPE_CHECKING:
    from pipeline.finetune.data import LabelledData

SUMS = ("sx", "sy", "sxx", "syy", "sxy")  # prediction x, label y


class SequenceRegressor(nn.Module):
    """Wraps the stock one-output model; forward returns (weighted MSE, reducible sums).

    The sums are of predictions and labels minus `center` (the mean training label): Pearson's
    r does not change under a shift, and float32 sums of small numbers keep the variance of
    predictions that sit close to the mean (early in training), which n*sum(x^2) - sum(x)^2
    over raw scores cancels away."""

    def __init__(self, model: nn.Module, center: float = 0.0):
        super().__init__()
        self.model = model
        self.center = center

    def forward(self, input_ids, attention_mask, labels, weight, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        x = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        x, y, w = x.float().squeeze(-1), labels.float(), weight.float()
        losses = (x - y) ** 2
        loss = (losses * w).sum() / w.sum().clamp(min=1.0)
        with torch.no_grad():
            xd, yd = x.detach() - self.center, y - self.center
            sums = (xd, yd, xd * xd, yd * yd, xd * yd)
            out = {LOSS_SUM: (losses.detach() * w).sum(), COUNT: w.sum()}
            out.update({k: (v * w).sum() for k, v in zip(SUMS, sums)})
        return loss, out


def pearson_from_sums(m: dict[str, float]) -> float:
    """Pearson's r from (averaged) sums; every sum divided by the same number leaves it as is.
    0 when either side is constant (r undefined)."""
    n, sx, sy, sxx, syy, sxy = (m[k] for k in (COUNT, *SUMS))
    cov = n * sxy - sx * sy
    var = (n * sxx - sx * sx) * (n * syy - sy * sy)
    return cov / math.sqrt(var) if var > 0 else 0.0


@registry.register("objective", "seqreg")
class SequenceRegression(SequenceClassification):
    config_extras: ClassVar[dict[str, Any]] = {"problem_type": "regression"}
    task = Task(
        pipeline_tag="text-classification",
        name="Text regression",
        metrics={
            "pearson": ("pearsonr", "Pearson r"),
            "spearman": ("spearmanr", "Spearman rho"),
            "mse": ("mse", "mean squared error"),
        },
        finetuned=True,
    )
    regression = True

    @dataclass
    class Config(SequenceClassification.Config):
        name: str = "seqreg"

        def validate(self) -> list[str]:
            if self.label_smoothing:
                return ["label_smoothing applies to classes; regression has none (set 0)"]
            return []

    def load_data(self, ctx: RunContext, tokenizer: Any) -> LabelledData:
        from pipeline.finetune.data import load_labelled

        data = load_labelled(ctx, tokenizer, regression=True)
        labels = data.train["label"][:10_000]
        self.center = sum(labels) / len(labels)
        return data

    def wrap(self, model: nn.Module) -> nn.Module:
        return SequenceRegressor(model, getattr(self, "center", 0.0))

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        if COUNT not in metrics:
            return metrics
        out = {k: v for k, v in metrics.items() if k not in (LOSS_SUM, COUNT, *SUMS)}
        if metrics[COUNT] > 0:
            out["loss"] = out["mse"] = metrics[LOSS_SUM] / metrics[COUNT]
            out["pearson"] = pearson_from_sums(metrics)
        return out
