"""Non-finite steps are skipped by every process with parameters and optimizer state unchanged,
or stop the run (by config, or after train.max_bad_steps in a row) with the last good state
saved; loss spikes are skipped when asked, with their window saved in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.engine import checkpoint
from pipeline.engine.guards import BadStepCounter, LossSpikeDetector
from pipeline.engine.train import Trainer
from tests.conftest import metrics, run_cli
from tests.faults.conftest import run_main, train_args

NO_EXPORT = "train.export=false"


def state_of(folder: Path) -> tuple[dict, dict]:
    """(model tensors, optimizer state) of a checkpoint, read safely."""
    model = load_file(str(folder / "model.safetensors"))
    optim = checkpoint.load_tensors(folder / "optimizer.bin")
    return model, optim


def assert_same_state(a: Path, b: Path) -> None:
    (ma, oa), (mb, ob) = state_of(a), state_of(b)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert oa["state"].keys() == ob["state"].keys() and len(oa["state"]) > 0
    for i in oa["state"]:
        for name, value in oa["state"][i].items():
            assert torch.equal(value, ob["state"][i][name]), (i, name)


def _optimizer_tensors(optimizer) -> dict[str, torch.Tensor]:
    """Every tensor of the optimizer state (AdamW moments, step counts), copied."""
    state = optimizer.state_dict()["state"]
    return {
        f"{i}.{name}": value.detach().clone()
        for i, entry in state.items()
        for name, value in entry.items()
        if torch.is_tensor(value)
    }


@pytest.fixture(scope="module")
def after_two_steps(tmp_path_factory) -> Path:
    """Reference: the state after 2 good steps."""
    from pipeline.__main__ import main

    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(train_args(out, "train.max_steps=2", NO_EXPORT)) == 0
    return out / "checkpoints/step-00000002"


@pytest.mark.parametrize(
    "policy,attempts,why",
    [
        ("skip", 3, "3 bad (non-finite or spiking) steps in a row"),
        ("stop", 1, "non-finite loss or gradient and train.on_nonfinite=stop"),
    ],
)
def test_nonfinite_step_changes_nothing_then_stops(
    capsys, caplog, monkeypatch, tmp_path, after_two_steps, policy, attempts, why
):
    """NaN loss and gradients at every attempt of step 3 (1 process): skipped `attempts`
    times, then the run stops; the saved state equals the state after step 2, bit for bit."""
    out = tmp_path / "run"
    monkeypatch.setenv("PIPELINE_FAULT", "nan_loss@3")
    args = ["train.max_steps=6", "train.checkpoint_every=100", f"train.on_nonfinite={policy}"]
    code, line = run_main(capsys, train_args(out, *args, "train.max_bad_steps=3", NO_EXPORT))
    assert code == 2
    assert line == (
        f"error: stopped after step 2: {why}; the last good state is saved in "
        f"{out}/checkpoints; lower optim.lr or check the data"
    )
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == ["step 3: non-finite loss, step skipped"] * attempts
    assert [r["step"] for r in metrics(out)] == [1, 2]
    saved = checkpoint.latest_valid(out)
    assert saved.name == "step-00000002"
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 2
    assert_same_state(saved, after_two_steps)


def test_two_processes_agree_on_skip_and_stop(tmp_path):
    """2 processes (torchrun); only process 1 sees a NaN loss value (its gradients stay
    finite, so process 0 cannot tell by itself). Step 3: one bad attempt, skipped by both,
    then taken. Step 5: bad at every attempt, both stop after 2 in a row with step 4 saved.
    A process that disagreed would step alone or leave the loop alone and hang the other."""
    out = tmp_path / "run"
    args = ["train.max_steps=8", "train.checkpoint_every=100", "train.max_bad_steps=2"]
    proc = run_cli(
        train_args(out, *args, NO_EXPORT),
        launcher="torchrun",
        nproc=2,
        check=False,
        timeout=400,
        PIPELINE_FAULT="nan_value@3x1,nan_value@5",
        PIPELINE_FAULT_RANK="1",
    )
    err = proc.stderr
    assert proc.returncode != 0
    message = (
        f"error: stopped after step 4: 2 bad (non-finite or spiking) steps in a row; the last "
        f"good state is saved in {out}/checkpoints; lower optim.lr or check the data"
    )
    assert err.count(message) == 2, err[-3000:]  # printed by each process
    assert err.count("step 3: non-finite loss, step skipped") == 1
    assert err.count("step 5: non-finite loss, step skipped") == 2
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    assert all(r["loss"] is not None for r in metrics(out))
    saved = checkpoint.latest_valid(out)
    assert saved.name == "step-00000004"
    assert sorted(p.name for p in saved.glob("rank-*.pt")) == ["rank-0.pt", "rank-1.pt"]


def test_loss_spike_skipped_and_window_saved(capsys, caplog, monkeypatch, tmp_path):
    """A loss x1000 at step 12 (one attempt) is skipped by the z-score guard; the run goes on
    and its checkpoint holds the window of the 13 losses it judged by."""
    out = tmp_path / "run"
    monkeypatch.setenv("PIPELINE_FAULT", "spike_loss@12x1")
    # every step attempt: was it applied, and which parameters / optimizer tensors changed
    attempts: list[tuple[bool, list[str], list[str]]] = []
    step = Trainer.train_step

    def watched(self):
        params = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        moments = _optimizer_tensors(self.optimizer)
        result = step(self)
        after = _optimizer_tensors(self.optimizer)
        attempts.append((
            result.applied,
            [n for n, p in self.module.named_parameters() if not torch.equal(p, params[n])],
            [k for k in after if k not in moments or not torch.equal(after[k], moments[k])],
        ))  # fmt: skip
        return result

    monkeypatch.setattr(Trainer, "train_step", watched)
    args = ["train.max_steps=13", "train.loss_spike_zscore=6", "train.loss_spike_window=20"]
    code, _ = run_main(capsys, train_args(out, *args, NO_EXPORT))
    assert code == 0
    # the spike never reached the parameters: the skipped attempt (the 12th) changed no
    # parameter and no optimizer tensor, tensor by tensor; every applied step changed them
    assert [applied for applied, _, _ in attempts] == [True] * 11 + [False] + [True] * 2
    assert attempts[11][1:] == ([], [])
    assert all(changed and moments for applied, changed, moments in attempts if applied)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].startswith("step 12: loss spike ")
    logged = [r["loss"] for r in metrics(out)]
    assert len(logged) == 13 and max(logged) < 20  # the spike never reached the parameters
    state = json.loads((out / "checkpoints/step-00000013/trainer_state.json").read_text())
    window = state["loss_spike"]["history"]
    assert window == pytest.approx(logged, rel=1e-6)


def test_spike_detector_scores_and_round_trips():
    d = LossSpikeDetector(window=5, zscore=3.0, min_history=3)
    for x in (2.0, 2.2):
        d.update(x)
    assert d.score(100.0) == 0.0 and not d.is_spike(100.0)  # too little history to judge
    for x in (1.8, 2.0, 2.0, 2.0):
        d.update(x)
    assert list(d.history) == [2.2, 1.8, 2.0, 2.0, 2.0]  # the window keeps the last 5
    # mean 2.0, sample std 0.1414: 2.5 is 3.54 sigma above, 2.4 is 2.83
    assert d.score(2.5) == pytest.approx(3.5355, rel=1e-4)
    assert d.is_spike(2.5) and not d.is_spike(2.4) and not d.is_spike(float("nan"))
    e = LossSpikeDetector(window=5, zscore=3.0, min_history=3)
    e.load_state_dict(json.loads(json.dumps(d.state_dict())))  # as in trainer_state.json
    assert e.score(2.5) == d.score(2.5) and list(e.history) == list(d.history)
    off = LossSpikeDetector(window=5, zscore=0.0)
    off.update(1.0)
    assert not off.enabled and not off.history and not off.is_spike(1e9)


def test_bad_step_counter_policy():
    skip = BadStepCounter("skip", max_bad_steps=3)
    assert [skip.bad(True), skip.bad(True)] == [False, False]
    skip.good()  # a good step resets the count
    assert [skip.bad(True), skip.bad(False), skip.bad(True)] == [False, False, True]
    stop = BadStepCounter("stop", max_bad_steps=3)
    assert stop.bad(nonfinite=False) is False  # a spike is skipped even under `stop`
    assert stop.bad(nonfinite=True) is True
