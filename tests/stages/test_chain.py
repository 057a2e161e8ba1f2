"""Chains: each step reads its upstream's run folder; a second invocation skips completed steps;
a changed step (and everything downstream of it) runs again."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.chain import MARKER, ChainConfig, run_chain
from pipeline.config import ConfigError, load_config

CHAIN = "configs/pipeline/ae-kmeans.yaml"
FAST = {
    "autoencoder": ["train.max_steps=150", "log.plots=false", "log.progress_bar=false"],
    "kmeans": ["stage.n_init=2", "log.plots=false"],
}


def _run(tmp_path, per_step=FAST):
    cfg = load_config(ChainConfig, CHAIN, [f"output_dir={tmp_path / 'chain'}"])
    records = run_chain(cfg, CHAIN, per_step)
    return {r["name"]: r for r in records}


def test_second_invocation_skips_completed_steps(tmp_path, capsys):
    first = _run(tmp_path)
    assert [r["status"] for r in first.values()] == ["ran", "ran"]
    root = tmp_path / "chain"
    # K-means read the autoencoder's codes: 8 columns, one row per digit
    codes = np.load(root / "autoencoder" / "outputs" / "features.npy")
    assignments = np.load(root / "kmeans" / "outputs" / "assignments.npy")
    assert codes.shape == (1797, 8) and assignments.shape == (1797,)
    assert first["kmeans"]["metrics"]["ari"] > 0.3  # codes keep the digit identity
    stamp = (root / "kmeans" / MARKER).stat().st_mtime_ns

    # the same chain through the CLI: nothing runs again
    overrides = [f"{step}.{o}" for step, items in FAST.items() for o in items]
    assert main(["run", CHAIN, *overrides, "--output-dir", str(root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["autoencoder", "skipped"],
        ["kmeans", "skipped"],
    ]
    assert (root / "kmeans" / MARKER).stat().st_mtime_ns == stamp

    # a changed downstream step reruns alone
    third = _run(tmp_path, {**FAST, "kmeans": [*FAST["kmeans"], "stage.k=5"]})
    assert [r["status"] for r in third.values()] == ["skipped", "ran"]
    assert third["kmeans"]["metrics"]["k"] == 5


def test_broken_outputs_make_a_step_run_again(tmp_path):
    _run(tmp_path)
    # corrupt the autoencoder's outputs: its manifest no longer checks out
    features = tmp_path / "chain" / "autoencoder" / "outputs" / "features.npy"
    features.write_bytes(features.read_bytes()[:-8])
    again = _run(tmp_path)
    assert [r["status"] for r in again.values()] == ["ran", "ran"]


def test_chain_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "stages:\n"
        "  - {name: km, config: configs/stages/kmeans.yaml, input: ae}\n"
        "  - {name: ae, config: configs/stages/autoencoder.yaml}\n"
        "  - {name: ae, config: configs/stages/autoencoder.yaml, command: fit}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(ChainConfig, bad)
    text = str(err.value)
    assert "stages[2].command must be one of 'stage', 'train'" in text
    missing = tmp_path / "missing.yaml"
    missing.write_text("stages:\n  - {name: km, config: configs/stages/nope.yaml}\n")
    cfg = load_config(ChainConfig, missing, [f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(
        ConfigError, match=r"step 'km': config 'configs/stages/nope.yaml' not found"
    ):
        run_chain(cfg, missing)
    order = tmp_path / "order.yaml"
    order.write_text(
        "stages:\n"
        "  - {name: km, config: configs/stages/kmeans.yaml, input: ae}\n"
        "  - {name: ae, config: configs/stages/autoencoder.yaml}\n"
    )
    with pytest.raises(ConfigError, match=r"stages\[0\].input 'ae' is not an earlier step"):
        load_config(ChainConfig, order)
