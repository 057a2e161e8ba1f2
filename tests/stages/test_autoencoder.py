"""Autoencoders on digits: beating PCA, denoising, noises, conv, exact resume, pictures."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.metrics import read_metrics
from pipeline.stages import ae_models
from pipeline.stages.autoencoder import AutoencoderConfig
from pipeline.stages.runner import run_stage


def test_undercomplete_autoencoder_beats_pca_at_code_size_8(stage_cfg):
    cfg = stage_cfg("configs/stages/autoencoder.yaml", "train.max_steps=600", "log.plots=false")
    assert cfg.stage.code_size == 8 and cfg.data.path == "sklearn:digits"
    result = run_stage(cfg)
    # PCA at 8 components is the best *linear* autoencoder: 0.0238 on these held-out digits
    assert 0.02 < result["pca_mse"] < 0.03
    assert result["mse"] < 0.8 * result["pca_mse"], result


def test_denoising_reconstruction_is_closer_to_clean_than_the_noisy_input(stage_cfg, tmp_path):
    cfg = stage_cfg("configs/stages/denoising-autoencoder.yaml", "train.max_steps=400")
    assert cfg.stage.code_size > 64  # over-complete: only the noise stops the identity
    result = run_stage(cfg)
    assert result["denoised_mse"] < 0.5 * result["noisy_mse"], result
    run = tmp_path / "run"
    for name in ("reconstructions.png", "filters.png", "codes.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    assert {r["split"] for r in read_metrics(run)} == {"train", "eval"}


def test_masking_keeps_survivors_dropout_rescales_them():
    x = torch.ones(200, 64)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    masked = ae_models.corrupt(x, AutoencoderConfig(noise="masking", mask_prob=0.25), gen())
    dropped = ae_models.corrupt(x, AutoencoderConfig(noise="dropout", mask_prob=0.25), gen())
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert set(dropped.unique().tolist()) == pytest.approx([0.0, 1 / 0.75])
    assert (masked == 0).float().mean() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(masked == 0, dropped == 0)  # same mask, only the scale differs


def test_convolutional_autoencoder_learns(stage_cfg):
    cfg = stage_cfg(
        "configs/stages/conv-autoencoder.yaml", "train.max_steps=300", "log.plots=false"
    )
    assert cfg.stage.arch == "conv"
    result = run_stage(cfg)
    # the mean image scores 0.073 on unit-scaled digits, PCA at 8 components 0.0238
    assert result["mse"] < result["pca_mse"], result


def test_resume_continues_exactly(stage_cfg, tmp_path):
    common = ["train.checkpoint_every=100", "train.eval_every=0", "log.plots=false"]
    straight = run_stage(stage_cfg("configs/stages/autoencoder.yaml", "train.max_steps=200",
                                   *common, name="straight"))  # fmt: skip
    run_stage(stage_cfg("configs/stages/autoencoder.yaml", "train.max_steps=100", *common,
                        name="resumed"))  # fmt: skip
    resumed = run_stage(stage_cfg("configs/stages/autoencoder.yaml", "train.max_steps=200",
                                  "train.resume=required", *common, name="resumed"))  # fmt: skip
    assert resumed["mse"] == pytest.approx(straight["mse"], rel=1e-5)
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed") if r["split"] == "train"]
    assert steps == [100, 200]  # step 100 by the first run, step 200 by the resumed one
