"""LR schedules over the run's budget: step budgets are transformers' own schedules bit for
bit; token and time budgets warm up and decay to the end of that budget; wsd's shapes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_scheduler

from pipeline import config as config_lib
from pipeline.engine.schedule import build_schedule, factor
from pipeline.train_config import RunConfig


def cfg(*overrides: str) -> RunConfig:
    return config_lib.load_config(RunConfig, None, list(overrides))


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=3e-3)


def run(schedule, steps: int, clock: list[float] | None = None, dt: float = 0.0) -> list[float]:
    lrs = [schedule.get_last_lr()[0]]
    for _ in range(steps):
        state["step"] += 1
        if clock is not None:
            clock[0] += dt
        schedule.step()
        lrs.append(schedule.get_last_lr()[0])
    return lrs


state = {"step": 0}


@pytest.mark.parametrize("name, hf", [("linear", "linear"), ("cosine", "cosine"),
                                      ("constant", "constant_with_warmup")])  # fmt: skip
def test_step_budget_is_transformers_schedule_bit_for_bit(name, hf):
    c = cfg("train.max_steps=50", f"optim.schedule={name}", "optim.warmup_steps=7")
    state["step"] = 0
    ours = run(
        build_schedule(optimizer(), c.optim, c.train, 0, lambda: state["step"], lambda: 0.0), 50
    )
    opt = optimizer()
    ref = get_scheduler(hf, opt, num_warmup_steps=7, num_training_steps=50)
    theirs = [ref.get_last_lr()[0]]
    for _ in range(50):
        opt.step()
        ref.step()
        theirs.append(ref.get_last_lr()[0])
    assert ours == theirs


def test_token_budget_decays_to_zero_when_the_tokens_run_out():
    c = cfg("train.max_steps=1000000", "train.max_tokens=4096", "optim.warmup_ratio=0.1")
    state["step"] = 0
    lrs = run(
        build_schedule(optimizer(), c.optim, c.train, 128, lambda: state["step"], lambda: 0.0), 32
    )
    assert lrs[3] == pytest.approx(3e-3 * 3 / 3)  # warmup: int(32 * 0.1) = 3 steps
    assert lrs[32] == 0.0 and lrs[16] == pytest.approx(3e-3 * 16 / 29)


def test_time_budget_decays_to_the_end_of_the_time():
    c = cfg("train.max_steps=1000000", "train.max_time_s=100", "optim.warmup_ratio=0.1")
    clock, state["step"] = [0.0], 0
    schedule = build_schedule(
        optimizer(), c.optim, c.train, 0, lambda: state["step"], lambda: clock[0]
    )
    lrs = run(schedule, 100, clock, dt=1.0)  # one step a second
    assert lrs[5] == pytest.approx(3e-3 * 0.5)  # half way through the 10 s warmup
    assert lrs[55] == pytest.approx(3e-3 * 45 / 90) and lrs[100] == 0.0


def test_wsd_is_flat_then_decays_over_its_last_fraction():
    c = cfg("optim.schedule=wsd", "optim.decay_fraction=0.2", "optim.decay_shape=1-sqrt").optim
    assert factor(c, 10, 100, 10) == 1.0 and factor(c, 80, 100, 10) == 1.0
    assert factor(c, 85, 100, 10) == pytest.approx(1 - math.sqrt(0.25))
    assert factor(c, 100, 100, 10) == 0.0
    c.decay_shape = "linear"
    assert factor(c, 90, 100, 10) == pytest.approx(0.5)


def test_resume_puts_the_lr_back_and_continues_the_same():
    c = cfg("train.max_steps=20", "optim.warmup_steps=3")
    state["step"] = 0
    straight = build_schedule(optimizer(), c.optim, c.train, 0, lambda: state["step"], lambda: 0.0)
    lrs = run(straight, 20)
    state["step"] = 9  # a resumed run: counters from the checkpoint, schedule state loaded
    opt = optimizer()
    resumed = build_schedule(opt, c.optim, c.train, 0, lambda: state["step"], lambda: 0.0)
    saved = {"base_lrs": [3e-3], "_last_lr": [lrs[9]]}
    resumed.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == lrs[9]
    assert run(resumed, 11) == lrs[9:]
