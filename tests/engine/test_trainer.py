"""The loop in-process, on a least-squares toy objective (seconds): counters, resume, and a
skipped step that changes nothing and consumes its batch."""

from __future__ import annotations

import torch

from pipeline.engine.hooks import Hook
from pipeline.engine.train import Trainer
from tests.conftest import metrics
from tests.engine.toy import toy_config


class NaNOnce(Hook):
    """The first attempt at step `at` gets a NaN loss; snapshots around it."""

    def __init__(self, trainer: Trainer, at: int):
        self.trainer, self.at, self.attempts = trainer, at, 0
        self.before: dict | None = None
        self.after: dict | None = None

    def snapshot(self) -> dict:
        t = self.trainer
        return {
            "params": {k: v.detach().clone() for k, v in t.module.state_dict().items()},
            "optim": _clone(t.optimizer.state_dict()),
            "lr": t.scheduler.get_last_lr()[0],
            "scheduler": t.scheduler.state_dict(),
        }

    def on_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        if step != self.at:
            return loss
        self.attempts += 1
        if self.attempts == 1:
            self.before = self.snapshot()
            return loss * float("nan")
        self.after = self.snapshot()  # the second attempt, before anything of it is applied
        return loss


def _clone(obj):
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def _equal(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_parameters(a: Trainer, b: Trainer) -> None:
    """Tensor by tensor, bit for bit."""
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _fit(out, *overrides: str, hook_at: int | None = None) -> tuple[Trainer, NaNOnce | None]:
    with Trainer(toy_config(out, *overrides)) as trainer:
        hook = None
        if hook_at is not None:
            hook = NaNOnce(trainer, hook_at)
            trainer.hooks.hooks.append(hook)
        trainer.fit()
    return trainer, hook


def test_loss_falls_and_counters_follow(tmp_path):
    trainer, _ = _fit(tmp_path, "train.max_steps=60", "optim.lr=0.3")
    losses = [r["loss"] for r in metrics(tmp_path)]
    assert len(losses) == 60 and sum(losses[-5:]) < 0.01 * sum(losses[:5]), losses
    assert (trainer.state.step, trainer.state.batches) == (60, 60)


def test_resume_continues_bitwise(tmp_path):
    straight, _ = _fit(tmp_path / "a", "train.max_steps=12")
    _fit(tmp_path / "b", "train.max_steps=5")
    resumed, _ = _fit(tmp_path / "b", "train.max_steps=12")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    _assert_same_parameters(straight, resumed)


def test_a_skipped_step_changes_nothing_and_consumes_its_batch(tmp_path):
    trainer, hook = _fit(tmp_path, "train.max_steps=8", hook_at=4)
    assert hook.attempts == 2
    assert _equal(hook.before, hook.after)  # parameters, AdamW moments, scheduler, lr
    rows = [r["first_row"] for r in metrics(tmp_path)]
    plain = [
        r["first_row"] for r in metrics(_fit(tmp_path / "plain", "train.max_steps=9")[0].run_dir)
    ]
    # step 4 trained on the batch after the skipped one: the data position moved on
    assert rows[:3] == plain[:3] and rows[3:] == plain[4:9]
    assert (trainer.state.step, trainer.state.batches) == (8, 9)


def test_resume_after_a_skip_continues_with_the_next_unseen_batch(tmp_path):
    _fit(tmp_path / "a", "train.max_steps=8", hook_at=4)
    _fit(tmp_path / "b", "train.max_steps=5", hook_at=4)
    _fit(tmp_path / "b", "train.max_steps=8")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [(r["loss"], r["first_row"]) for r in a] == [(r["loss"], r["first_row"]) for r in b]


def test_an_unset_lr_is_the_objectives_default_and_is_recorded(tmp_path):
    """optim.lr=null: the objective's default (the toy is not a transformer: OTHER_LR), used by
    the optimizer and written to run_info.json; a set lr is used as given."""
    import json

    from pipeline.objectives.base import OTHER_LR

    trainer, _ = _fit(tmp_path / "auto", "train.max_steps=1", "optim.lr=null")
    assert trainer.optimizer.param_groups[0]["initial_lr"] == OTHER_LR
    assert json.loads((tmp_path / "auto" / "run_info.json").read_text())["lr"] == OTHER_LR
    trainer, _ = _fit(tmp_path / "set", "train.max_steps=1", "optim.lr=0.07")
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 0.07


class CountMicroBatches(Hook):
    """Micro batches trained on per step (on_loss runs once for each)."""

    def __init__(self):
        self.per_step: dict[int, int] = {}

    def on_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        self.per_step[step] = self.per_step.get(step, 0) + 1
        return loss


WARMUP = ["train.global_batch_size=32", "train.batch_warmup_steps=8"]  # 4 micro batches of 8


def _fit_counting(out, *overrides: str) -> tuple[Trainer, CountMicroBatches]:
    with Trainer(toy_config(out, *overrides)) as trainer:
        hook = CountMicroBatches()
        trainer.hooks.hooks.append(hook)
        trainer.fit()
    return trainer, hook


def test_batch_warmup_grows_the_batch_and_resumes_bitwise(tmp_path):
    straight, hook = _fit_counting(tmp_path / "a", *WARMUP, "train.max_steps=12")
    assert list(hook.per_step.values()) == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4, 4]
    # the data position is one global batch per step, warmup or not: after the warmup the
    # steps train on the very rows of a run without it
    _fit_counting(tmp_path / "full", "train.global_batch_size=32", "train.max_steps=12")
    rows = [r["first_row"] for r in metrics(tmp_path / "a")]
    full = [r["first_row"] for r in metrics(tmp_path / "full")]
    assert rows[8:] == full[8:] and rows[:8] != full[:8]
    assert straight.state.batches == 12
    _fit_counting(tmp_path / "b", *WARMUP, "train.max_steps=5")
    resumed, again = _fit_counting(tmp_path / "b", *WARMUP, "train.max_steps=12")
    assert list(again.per_step.values()) == [3, 4, 4, 4, 4, 4, 4]  # steps 6..12
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    _assert_same_parameters(straight, resumed)


def test_a_one_micro_batch_warmup_step_is_a_plain_step_on_that_micro_batch(tmp_path):
    """The gradient of a warmup step is the mean over the micro batches it trains on: its
    first step (one micro batch) equals a run whose global batch is that micro batch."""
    warm, _ = _fit_counting(tmp_path / "warm", *WARMUP, "train.max_steps=1")
    plain, _ = _fit_counting(tmp_path / "plain", "train.max_steps=1")
    assert metrics(tmp_path / "warm")[0]["first_row"] == metrics(tmp_path / "plain")[0]["first_row"]
    _assert_same_parameters(warm, plain)
    full, _ = _fit_counting(tmp_path / "full", "train.global_batch_size=32", "train.max_steps=1")
    assert not torch.equal(full.module.state_dict()["linear.weight"],
                           warm.module.state_dict()["linear.weight"])  # fmt: skip


def test_batch_warmup_without_accumulation_is_refused(tmp_path):
    import pytest

    from pipeline.engine.launch import SetupError

    with pytest.raises(SetupError, match="batch_warmup_steps grows the batch in micro batches"):
        Trainer(toy_config(tmp_path, "train.batch_warmup_steps=4"))
