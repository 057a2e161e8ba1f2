"""Classification metrics that survive averaging over micro batches and processes.

The engine averages every metric a forward returns: over micro batches, then over processes
(`Averager.reduce`). Accuracy and macro-F1 are not means of per-batch values, so a forward
returns *counts* instead (per class: true positives, predicted, actual; plus the weighted loss
sum and the example count). Averaging counts divides each by the same number (batches x
processes; the engine gives every process the same number of batches), and every metric
below is a ratio of counts, so the result equals the metric over the whole held-out set.
"""

from __future__ import annotations

import torch

LOSS_SUM, COUNT = "loss_sum", "n"
IGNORE = -100  # label of tokens no loss or metric counts (specials, later sub-tokens, padding)


def count_keys(num_labels: int) -> list[str]:
    return [f"{kind}_{c}" for c in range(num_labels) for kind in ("tp", "pred", "true")]


def counts(
    logits: torch.Tensor,
    labels: torch.Tensor,
    losses: torch.Tensor,
    weight: torch.Tensor,
    num_labels: int,
) -> dict[str, torch.Tensor]:
    """Weighted counts of one batch; `weight` is 0 for padding rows (see data.PaddedEval)."""
    with torch.no_grad():
        pred = logits.argmax(-1)
        w = weight.float()
        out = {LOSS_SUM: (losses.detach().float() * w).sum(), COUNT: w.sum()}
        onehot_pred = torch.nn.functional.one_hot(pred, num_labels).float() * w[:, None]
        onehot_true = torch.nn.functional.one_hot(labels, num_labels).float() * w[:, None]
        tp = (onehot_pred * onehot_true).sum(0)
        n_pred, n_true = onehot_pred.sum(0), onehot_true.sum(0)
        for c in range(num_labels):
            out[f"tp_{c}"] = tp[c]
            out[f"pred_{c}"] = n_pred[c]
            out[f"true_{c}"] = n_true[c]
    return out


def from_counts(metrics: dict[str, float], num_labels: int) -> dict[str, float]:
    """loss, accuracy and macro-F1 from (averaged) counts; other keys pass through.

    Macro-F1 averages over the classes that occur among the labels or the predictions, as
    scikit-learn's `f1_score(average="macro")` does by default."""
    if COUNT not in metrics:
        return metrics
    out = {k: v for k, v in metrics.items() if k not in (LOSS_SUM, COUNT)}
    for key in count_keys(num_labels):
        out.pop(key, None)
    n = metrics[COUNT]
    if n <= 0:
        return out
    tp = [metrics[f"tp_{c}"] for c in range(num_labels)]
    pred = [metrics[f"pred_{c}"] for c in range(num_labels)]
    true = [metrics[f"true_{c}"] for c in range(num_labels)]
    f1 = [2 * t / (p + a) for t, p, a in zip(tp, pred, true) if p + a > 0]
    out["loss"] = metrics[LOSS_SUM] / n
    out["accuracy"] = sum(tp) / n
    out["macro_f1"] = sum(f1) / len(f1) if f1 else 0.0
    return out
