"""Stage tests: offline, one torch thread (the CI box has 2 shared cores), small recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stage_cfg(tmp_path):
    """Load a shipped stage recipe with overrides, writing into tmp_path/NAME."""
    from pipeline.config import load_config
    from pipeline.stages.schema import StageRunConfig

    def make(recipe: str, *overrides: str, name: str = "run"):
        base = [f"output_dir={tmp_path / name}", "log.progress_bar=false", "train.device=cpu"]
        return load_config(StageRunConfig, REPO / recipe, [*base, *overrides])

    return make
