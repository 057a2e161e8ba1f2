"""Every shipped stage/chain recipe parses; the array readers (npy images, csv, datasets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.chain import ChainConfig, _recipe, _schema
from pipeline.config import describe, load_config
from pipeline.stages import arrays
from pipeline.stages.schema import StageRunConfig

REPO = Path(__file__).resolve().parents[2]
STAGES = sorted((REPO / "configs" / "stages").glob("*.yaml"))
CHAINS = sorted((REPO / "configs" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_every_stage_recipe_parses(path):
    cfg = load_config(StageRunConfig, path)
    assert cfg.stage.name in ("autoencoder", "kmeans", "embed")


@pytest.mark.parametrize("path", CHAINS, ids=lambda p: p.name)
def test_every_chain_and_its_steps_parse(path, monkeypatch):
    monkeypatch.chdir(REPO)
    chain = load_config(ChainConfig, path)
    for step in chain.stages:
        overrides = [*step.overrides, "output_dir=/tmp/unused"]
        if step.input:
            overrides.append(f"input=/tmp/{step.input}")
        load_config(_schema(step.command), _recipe(step, path), overrides)


def test_required_recipes_and_help():
    names = {p.name for p in STAGES}
    assert {"autoencoder.yaml", "denoising-autoencoder.yaml", "kmeans.yaml"} <= names
    assert load_config(StageRunConfig, REPO / "configs/stages/kmeans.yaml").stage.k == 10
    lines = describe(StageRunConfig)
    assert any(line.startswith("  stage.k (int, default 8): Number of clusters") for line in lines)


def test_npy_images_and_labels(tmp_path):
    x = np.arange(6 * 3 * 4, dtype=np.uint8).reshape(6, 3, 4)
    np.save(tmp_path / "img.npy", x)
    np.save(tmp_path / "y.npy", np.array([0, 1, 0, 1, 2, 2]))
    cfg = arrays.DataConfig(path=str(tmp_path / "img.npy"), labels_path=str(tmp_path / "y.npy"),
                            scale="unit")  # fmt: skip
    data = arrays.load(cfg)
    assert data.x.shape == (6, 12) and data.x.dtype == np.float32
    assert data.image_shape == (3, 4)
    assert data.x.max() == 1.0 and data.unscaled(data.x).max() == pytest.approx(71)
    assert data.labels.tolist() == [0, 1, 0, 1, 2, 2]


def test_csv_with_label_column_and_standardize(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n1,10,x\n2,10,y\n3,10,x\n")
    data = arrays.load(arrays.DataConfig(path=str(tmp_path / "t.csv"), scale="standardize"))
    assert data.x.shape == (3, 2)
    np.testing.assert_allclose(data.x[:, 0], [-1.2247449, 0, 1.2247449], rtol=1e-5)
    assert (data.x[:, 1] == 0).all()  # a constant column stays finite
    assert data.labels.tolist() == [0, 1, 0]
    (tmp_path / "s.csv").write_text("a,b\n1,z\n")
    with pytest.raises(arrays.DataError, match=r"column 'b' is not numeric"):
        arrays.load(arrays.DataConfig(path=str(tmp_path / "s.csv")))


def test_image_dataset_through_datasets(tmp_path):
    # the code path of a Hugging Face image dataset by name, on a local parquet file
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (5, 7), dtype=np.uint8)) for _ in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [3, 1, 3, 0]})
    ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(tmp_path / "imgs.parquet")
    data = arrays.load(arrays.DataConfig(path=str(tmp_path / "imgs.parquet")))
    assert data.x.shape == (4, 35) and data.image_shape == (5, 7)
    np.testing.assert_array_equal(data.x[0], np.asarray(images[0], dtype=np.float32).ravel())
    assert data.labels.tolist() == [3, 1, 3, 0]
