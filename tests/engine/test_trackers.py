"""Trackers: W&B really logs (offline mode, its run files in the run folder), the project name
is configurable, and a tracker whose package is missing is one line naming it, before training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.faults.conftest import BASE, RECIPE, run_main

QUICK = [*BASE, "train.max_steps=2", "train.export=false"]


def train(capsys, out: Path, *overrides: str) -> tuple[int, str]:
    return run_main(capsys, ["train", RECIPE, *QUICK, *overrides, "--output-dir", str(out)])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_writes_its_run_into_the_run_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for quiet in ("WANDB_DISABLE_GIT", "WANDB_DISABLE_CODE", "WANDB_X_DISABLE_STATS",
                  "WANDB_X_DISABLE_META", "WANDB_X_DISABLE_MACHINE_INFO"):  # fmt: skip
        monkeypatch.setenv(quiet, "true")  # faster start: no git, code, system metrics
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # we pass dir=RUN_DIR
    out = tmp_path / "run"
    code, err = train(capsys, out, "log.trackers=[wandb]", "log.project=my-proj",
                      "log.run_name=first")  # fmt: skip
    assert code == 0, err
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (out / "wandb").iterdir())
    (log_file,) = runs[0].glob("run-*.wandb")  # the run's records: config, history, summary
    data = log_file.read_bytes()
    assert b"my-proj" in data and b"first" in data  # project and run name
    assert b"train/loss" in data  # metrics went to W&B, not only to metrics.jsonl
    assert b"optim.lr" in data  # the flattened config


def test_project_name_sets_the_tensorboard_folder(capsys, tmp_path):
    out = tmp_path / "run"
    code, err = train(capsys, out, "log.trackers=[tensorboard]", "log.project=ablation-7")
    assert code == 0, err
    assert list((out / "logs" / "ablation-7").glob("events.out.tfevents.*"))
    assert not (out / "logs" / "pipeline").exists()


def test_missing_tracker_package_is_one_line_before_training(capsys, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    out = tmp_path / "run"
    code, err = train(capsys, out, "log.trackers=[tensorboard,wandb]")
    assert code == 2
    assert err == (
        "error: log.trackers asks for wandb but the package 'wandb' is not installed: "
        "pip install wandb (or remove wandb from log.trackers)"
    )
    assert not (out / "metrics.jsonl").exists() and not (out / "tokenizer").exists()


def test_unknown_tracker_is_refused(capsys, tmp_path):
    code, err = train(capsys, tmp_path / "run", "log.trackers=[wandbb]")
    assert code == 2 and "unknown tracker 'wandbb'" in err
