"""Classification metrics that survive averaging over micro batches and processes.

The engine averages every metric a forward returns: over micro batches, then over processes
(`Averager.reduce`). Accuracy and macro-F1 are not means of per-batch values, so a forward
returns *counts* instead (per class: true positives, predicted, actual; plus the weighted loss
sum and the example count). Averaging counts divides each by the same number (batches x
processes; the engine gives every process the same number of batches), and every metric
below is a ratio of counts, so the result equals the metric over the whole held-out set.
"""

from __future__ import annotations

from typing import Any

import torch

LOSS_SUM, COUNT = "loss_sum", "n"
RESULTS_FILE = "eval_results.json"  # in the export: {eval set: {metric: value}} after training
IGNORE = -100  # label of tokens no loss or metric counts (specials, later sub-tokens, padding)


ENTITY_KEYS = ("ent_correct", "ent_pred", "ent_true")  # entity counts (tokcls, IOB tags)


def count_keys(num_labels: int) -> list[str]:
    return [f"{kind}_{c}" for c in range(num_labels) for kind in ("tp", "pred", "true")]


def is_iob(names: list[str]) -> bool:
    """Tags that name entities (O, B-X, I-X; IOBES's E-X and S-X too): entity-level scores
    apply. Other tag sets (POS tags, plain class names) are scored per token only."""
    prefixed = [n for n in names if n != "O"]
    return bool(prefixed) and all(n[:2] in ("B-", "I-", "E-", "S-") for n in prefixed)


def entity_counts(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    """Weighted entity counts of one batch of tag sequences, as seqeval finds entities
    (`get_entities`, its default non-strict IOB2 mode; an I-X after O starts an entity, as in
    conlleval). `logits` (batch, tokens, tags), `labels` IGNORE where no tag is scored: the
    scored positions of a row are its words' tags, in order. Counts sum over batches and
    processes, so micro precision, recall and F1 from them equal seqeval's over the whole set."""
    from seqeval.metrics.sequence_labeling import get_entities

    pred = logits.argmax(-1).tolist()
    gold = labels.tolist()
    correct = n_pred = n_true = 0.0
    for p_row, g_row, w in zip(pred, gold, weight.tolist()):
        if not w:
            continue
        scored = [(names[p], names[g]) for p, g in zip(p_row, g_row) if g != IGNORE]
        p_ents = set(get_entities([p for p, _ in scored]))
        g_ents = set(get_entities([g for _, g in scored]))
        correct += w * len(p_ents & g_ents)
        n_pred += w * len(p_ents)
        n_true += w * len(g_ents)
    device = logits.device
    return {
        k: torch.tensor(v, device=device) for k, v in zip(ENTITY_KEYS, (correct, n_pred, n_true))
    }


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
    """loss, accuracy and macro-F1 from (averaged) counts; with entity counts also entity-level
    (seqeval) precision, recall and F1; other keys pass through.

    Macro-F1 averages over the classes that occur among the labels or the predictions, as
    scikit-learn's `f1_score(average="macro")` does by default."""
    if COUNT not in metrics:
        return metrics
    out = {k: v for k, v in metrics.items() if k not in (LOSS_SUM, COUNT)}
    for key in count_keys(num_labels):
        out.pop(key, None)
    for key in ENTITY_KEYS:
        out.pop(key, None)
    n = metrics[COUNT]
    if n <= 0:
        return out
    if ENTITY_KEYS[0] in metrics:
        correct, n_pred, n_true = (metrics[k] for k in ENTITY_KEYS)
        precision = correct / n_pred if n_pred else 0.0
        recall = correct / n_true if n_true else 0.0
        out["entity_precision"] = precision
        out["entity_recall"] = recall
        out["entity_f1"] = 2 * correct / (n_pred + n_true) if n_pred + n_true else 0.0
    tp = [metrics[f"tp_{c}"] for c in range(num_labels)]
    pred = [metrics[f"pred_{c}"] for c in range(num_labels)]
    true = [metrics[f"true_{c}"] for c in range(num_labels)]
    f1 = [2 * t / (p + a) for t, p, a in zip(tp, pred, true) if p + a > 0]
    out["loss"] = metrics[LOSS_SUM] / n
    out["accuracy"] = sum(tp) / n
    out["macro_f1"] = sum(f1) / len(f1) if f1 else 0.0
    return out


def glue_scores(pred: Any, true: Any, num_labels: int, regression: bool) -> dict[str, float]:
    """Scores as the GLUE benchmark defines them, by scikit-learn and scipy, from predictions
    (class ids, or scores for regression) and gold labels over a whole held-out set:
    classification: accuracy, macro_f1, mcc (Matthews correlation, CoLA's metric) and for two
    classes f1 (F1 of class 1, MRPC's and QQP's); regression: pearson and spearman (STS-B's)
    and mse."""
    import numpy as np
    from scipy import stats
    from sklearn import metrics as skm

    pred, true = np.asarray(pred), np.asarray(true)
    if regression:
        pred, true = pred.astype(np.float64), true.astype(np.float64)
        constant = np.ptp(pred) == 0 or np.ptp(true) == 0  # correlation undefined: report 0
        return {
            "pearson": 0.0 if constant else float(stats.pearsonr(pred, true)[0]),
            "spearman": 0.0 if constant else float(stats.spearmanr(pred, true)[0]),
            "mse": float(np.mean((pred - true) ** 2)),
            "n": int(len(true)),
        }
    out = {
        "accuracy": float(skm.accuracy_score(true, pred)),
        "macro_f1": float(skm.f1_score(true, pred, average="macro")),
        "mcc": float(skm.matthews_corrcoef(true, pred)),
        "n": int(len(true)),
    }
    if num_labels == 2:
        out["f1"] = float(skm.f1_score(true, pred, pos_label=1, average="binary", zero_division=0))
    return out
