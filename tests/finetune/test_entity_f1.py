"""Entity-level NER scores: counts per batch, averaged over batches and processes as the engine
does, give seqeval's micro precision, recall and F1 over the whole set (padding rows and
unscored sub-tokens left out)."""

from __future__ import annotations

import pytest
import seqeval.metrics as seqeval
import torch

from pipeline.finetune import metrics as M
from pipeline.finetune.metrics import IGNORE

NAMES = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


def test_reduced_entity_counts_equal_seqeval_over_the_whole_set():
    g = torch.Generator().manual_seed(0)
    world, batches, micro, length = 2, 5, 4, 12
    n = world * batches * micro
    labels = torch.randint(0, len(NAMES), (n, length), generator=g)
    labels[:, 0] = labels[:, -1] = IGNORE  # [CLS], [SEP]
    labels[torch.rand(n, length, generator=g) < 0.2] = IGNORE  # later sub-tokens, padding
    logits = torch.randn(n, length, len(NAMES), generator=g)
    # mostly right, so there are matched entities as well as wrong ones
    right = torch.rand(n, length, generator=g) < 0.7
    logits[right] += 6 * torch.nn.functional.one_hot(labels.clamp(min=0), len(NAMES))[right]
    weight = torch.ones(n)
    weight[-3:] = 0  # padding copies (data.PaddedEval)
    per_process = []
    for rank in range(world):
        sums: dict[str, float] = {}
        for b in range(batches):
            i = torch.arange((b * world + rank) * micro, (b * world + rank + 1) * micro)
            for k, v in M.entity_counts(logits[i], labels[i], weight[i], NAMES).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        per_process.append({k: v / batches for k, v in sums.items()})
    mean = {k: sum(p[k] for p in per_process) / world for k in per_process[0]}
    out = M.from_counts({**mean, "n": 1.0, "loss_sum": 0.0}, num_labels=0)

    y, pred = [], []
    for row in range(n - 3):
        keep = labels[row] != IGNORE
        y.append([NAMES[t] for t in labels[row][keep].tolist()])
        pred.append([NAMES[t] for t in logits[row].argmax(-1)[keep].tolist()])
    f1 = seqeval.f1_score(y, pred)
    assert 0.2 < f1 < 0.9  # a set where miscounting would show
    assert out["entity_f1"] == pytest.approx(f1, abs=1e-6)
    assert out["entity_precision"] == pytest.approx(seqeval.precision_score(y, pred), abs=1e-6)
    assert out["entity_recall"] == pytest.approx(seqeval.recall_score(y, pred), abs=1e-6)
    assert not any(k.startswith("ent_") for k in out)


def test_entity_scores_only_for_iob_tag_sets():
    assert M.is_iob(NAMES)
    assert M.is_iob(["O", "S-LOC", "B-LOC", "I-LOC", "E-LOC"])  # IOBES
    assert not M.is_iob(["O", "land", "sea"])  # plain classes: token scores only
    assert not M.is_iob(["NOUN", "VERB", "ADJ"])  # POS tags
    assert not M.is_iob(["O"])
