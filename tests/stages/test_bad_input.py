"""Bad input gets one clear error naming the key, file, row or folder; the CLI exits 2."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.config import ConfigError
from pipeline.data.sources import DataError
from pipeline.engine.setup import SetupError
from pipeline.stages.runner import run_stage


def test_k_larger_than_the_number_of_points(stage_cfg, tmp_path):
    np.save(tmp_path / "five.npy", np.random.default_rng(0).normal(size=(5, 3)))
    cfg = stage_cfg("configs/stages/kmeans.yaml", f"data.path={tmp_path / 'five.npy'}")
    with pytest.raises(DataError, match=r"stage.k=10 is larger than the number of points \(5\)"):
        run_stage(cfg)


def test_nan_in_the_data_names_row_and_column(stage_cfg, tmp_path):
    x = np.ones((20, 4), dtype=np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    cfg = stage_cfg("configs/stages/kmeans.yaml", f"data.path={tmp_path / 'nan.npy'}")
    with pytest.raises(DataError, match=r"nan.npy.*first at row 3, column 1"):
        run_stage(cfg)


def test_nan_in_a_memmap_is_found_while_reading(stage_cfg, tmp_path):
    x = np.ones((50, 4), dtype=np.float32)
    x[42, 2] = np.inf
    np.save(tmp_path / "inf.npy", x)
    cfg = stage_cfg("configs/stages/kmeans.yaml", f"data.path={tmp_path / 'inf.npy'}",
                    "data.mmap=true", "data.scale=none", "stage.chunk_size=16")  # fmt: skip
    with pytest.raises(DataError, match=r"row 42, column 2"):
        run_stage(cfg)


@pytest.mark.parametrize("shape", [(30,), (2, 3, 4, 5, 6)])
def test_wrong_shape(stage_cfg, tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, dtype=np.float32))
    cfg = stage_cfg("configs/stages/kmeans.yaml", f"data.path={tmp_path / 'bad.npy'}")
    with pytest.raises(DataError, match=r"bad.npy' has shape .*expected \(N, D\)"):
        run_stage(cfg)


def test_conv_autoencoder_on_rows_that_are_not_images(stage_cfg, tmp_path):
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).random((40, 6)).astype(np.float32))
    cfg = stage_cfg("configs/stages/conv-autoencoder.yaml", f"data.path={tmp_path / 'rows.npy'}")
    with pytest.raises(DataError, match=r"arch=conv needs images"):
        run_stage(cfg)


def test_bce_on_data_outside_unit_range(stage_cfg):
    cfg = stage_cfg("configs/stages/denoising-autoencoder.yaml", "data.scale=standardize")
    with pytest.raises(DataError, match=r"loss=bce needs data in \[0, 1\].*data.scale=unit"):
        run_stage(cfg)


def test_upstream_stage_missing_or_unfinished(stage_cfg, tmp_path):
    cfg = stage_cfg("configs/stages/kmeans.yaml", f"input={tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match=r"nowhere'.*no such run folder; run the upstream"):
        run_stage(cfg)
    half = tmp_path / "half"
    (half / "outputs.tmp").mkdir(parents=True)  # killed while writing its outputs
    cfg = stage_cfg("configs/stages/kmeans.yaml", f"input={half}")
    with pytest.raises(DataError, match=r"half'.*no complete outputs.*did not finish"):
        run_stage(cfg)
    cfg = stage_cfg("configs/stages/embed.yaml", f"input={half}")
    with pytest.raises(DataError, match=r"no export/config.json.*run it first"):
        run_stage(cfg)


def test_checkpoints_of_another_autoencoder_are_refused(stage_cfg):
    run_stage(stage_cfg("configs/stages/autoencoder.yaml", "train.max_steps=5", "log.plots=false"))
    cfg = stage_cfg("configs/stages/autoencoder.yaml", "train.max_steps=10",
                    "stage.code_size=4", "log.plots=false")  # fmt: skip
    with pytest.raises(SetupError, match=r"different autoencoder.*train.resume=never"):
        run_stage(cfg)


def test_config_problems_are_listed_together(stage_cfg):
    with pytest.raises(ConfigError) as err:
        stage_cfg("configs/stages/kmeans.yaml", "stage.k=0", "train.max_steps=0", "data.bogus=1")
    text = str(err.value)
    assert "3 config errors" in text
    assert "unknown key data.bogus" in text
    assert "stage.k must be >= 1, got 0" in text
    assert "train.max_steps must be >= 1, got 0" in text
    # the stage is chosen by name, like an objective: unknown names list the choices
    with pytest.raises(ConfigError, match=r"unknown stage 'kmean'; choices: autoencoder, embed"):
        stage_cfg("configs/stages/kmeans.yaml", "stage.name=kmean")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    np.save(tmp_path / "five.npy", np.zeros((5, 2), dtype=np.float32))
    rc = main(["stage", "configs/stages/kmeans.yaml", f"data.path={tmp_path / 'five.npy'}",
               "--output-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: stage.k=10 is larger than the number of points (5)")
