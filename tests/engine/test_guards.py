"""Step guards decide on numbers that are the same on every process."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from pipeline.engine.guards import StepGuards


def train_cfg(**kw):
    base = dict(on_nonfinite="skip", max_bad_steps=3, loss_spike_window=20, loss_spike_zscore=0.0)
    return SimpleNamespace(**{**base, **kw})


def judge_all(guards: list[StepGuards], losses: list[list[float]], stops: list[bool]):
    """Every process's verdict, with the all-reduce simulated across the processes."""
    flags = []
    for g, mine, stop in zip(guards, losses, stops):
        captured = {}

        def reduce_sum(t, captured=captured):
            captured["t"] = t
            return t

        g.judge_losses(mine, stop, reduce_sum, torch.device("cpu"), len(guards))
        flags.append(captured["t"])
    total = torch.stack(flags).sum(0)
    return [g.judge_losses(m, s, lambda t: total, torch.device("cpu"), len(guards))
            for g, m, s in zip(guards, losses, stops)]  # fmt: skip


def test_one_process_nonfinite_skips_everywhere_and_the_mean_is_global():
    guards = [StepGuards(train_cfg()) for _ in range(2)]
    ok = judge_all(guards, [[1.0, 3.0], [2.0, 2.0]], [False, False])
    assert all(not v.skip and v.mean_loss == 2.0 for v in ok)
    bad = judge_all(guards, [[1.0, math.nan], [2.0, 2.0]], [False, True])
    assert all(v.skip and v.nonfinite and v.stop_requested for v in bad)


def test_spike_needs_history_and_counts_in_a_row():
    g = StepGuards(train_cfg(loss_spike_zscore=3.0, max_bad_steps=2))
    for i in range(12):
        v = judge_all([g], [[1.0 + 0.01 * (i % 3)]], [False])[0]
        assert not v.skip
        g.good(v.mean_loss)
    spike = judge_all([g], [[50.0]], [False])[0]
    assert spike.spike and not spike.nonfinite
    assert g.bad(13, "spike", nonfinite=False) is False
    assert g.bad(13, "spike", nonfinite=False) is True  # two in a row stop the run
    restored = StepGuards(train_cfg(loss_spike_zscore=3.0))
    restored.load_state_dict(g.state_dict())
    assert judge_all([restored], [[50.0]], [False])[0].spike


def test_stop_policy_stops_at_the_first_nonfinite_step():
    g = StepGuards(train_cfg(on_nonfinite="stop"))
    assert g.bad(3, "non-finite loss", nonfinite=True) is True
    assert "train.on_nonfinite=stop" in g.stop_message(2, "runs/x")
