"""EBM data through `datasets`: every local form (parquet, arrow, csv, json, save_to_disk,
image folder, sklearn:digits) gives the same examples, in order; bad input is one clear line
naming the source and column, raised before any training."""

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.data.sources import DataError
from pipeline.ebm.data import Columns, digits_dataset, read_examples
from pipeline.train_config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)
POINTS = RNG.normal(size=(40, 3)).astype(np.float32)
IMAGES = RNG.integers(0, 256, size=(10, 6, 5), dtype=np.uint8)  # (N, H, W) grey images


def table() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"a": POINTS[:, 0], "b": POINTS[:, 1], "c": POINTS[:, 2]})


FEATURES = Columns(feature_columns=["a", "b", "c"])


@pytest.mark.parametrize("form", ["parquet", "arrow", "csv", "json", "saved"])
def test_feature_columns_from_each_file_form(tmp_path, form):
    t = table()
    if form == "parquet":
        path = tmp_path / "p.parquet"
        t.to_parquet(str(path))
    elif form == "csv":
        path = tmp_path / "p.csv"
        t.to_csv(str(path), index=False)
    elif form == "json":
        path = tmp_path / "p.jsonl"
        t.to_json(str(path))
    elif form == "arrow":
        saved = tmp_path / "saved"
        t.save_to_disk(str(saved))
        path = next(saved.glob("*.arrow"))
    else:
        path = tmp_path / "saved"
        datasets.DatasetDict({"train": t, "test": t.select(range(5))}).save_to_disk(str(path))
    x = read_examples([str(path)], "data.path", FEATURES)
    assert x.shape == (40, 3) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), POINTS, rtol=1e-6, atol=1e-6)  # every row, in order
    # two of three columns: points of width 2
    assert read_examples([str(path)], "data.path", Columns(feature_columns=["c", "a"])).shape == (
        40,
        2,
    )


def test_image_column_arrays_and_pil_in_a_saved_dataset(tmp_path):
    pil = [Image.fromarray(a) for a in IMAGES]
    ds = datasets.Dataset.from_dict(
        {"img": pil, "arr": [a.astype(np.float32) / 255 for a in IMAGES]}
    )
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "d"))
    a = read_examples([str(tmp_path / "d")], "data.path", Columns(image_column="img"))
    b = read_examples([str(tmp_path / "d")], "data.path", Columns(image_column="arr"))
    assert a.shape == b.shape == (10, 1, 6, 5)
    # uint8 PIL pixels are divided by 255; float arrays are kept as they are: the same numbers
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[3, 0], torch.from_numpy(IMAGES[3] / 255.0).float())
    resized = read_examples(
        [str(tmp_path / "d")], "data.path", Columns(image_column="img", image_size=[4])
    )
    assert resized.shape == (10, 1, 4, 4) and 0 <= resized.min() <= resized.max() <= 1


def test_image_folder_rgb_and_mixed_sizes(tmp_path):
    folder = tmp_path / "imgs"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
    for i in range(4):
        rgb = RNG.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / ("cat" if i % 2 else "dog") / f"{i}.png")
    x = read_examples([str(folder)], "data.path", Columns(image_column="image"))
    assert x.shape == (4, 3, 6, 6) and 0 <= x.min() and x.max() <= 1
    # the table's only image column is found without data.image_column
    assert read_examples([str(folder)], "data.path").shape == (4, 3, 6, 6)
    Image.fromarray(RNG.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)).save(folder / "cat/x.png")
    with pytest.raises(DataError, match=r"column 'image': images of different sizes .*image_size"):
        read_examples([str(folder)], "data.path", Columns(image_column="image"))
    fixed = read_examples(
        [str(folder)], "data.path", Columns(image_column="image", image_size=[6, 6])
    )
    assert fixed.shape == (5, 3, 6, 6)


def test_sklearn_digits_is_served_through_the_datasets_path():
    x = read_examples(["sklearn:digits"], "data.path")
    assert x.shape == (1797, 1, 8, 8) and float(x.max()) == 1.0
    table = digits_dataset()
    assert table.column_names[:2] == ["image", "label"]
    flat = read_examples(
        ["sklearn:digits"], "data.path", Columns(feature_columns=["pixel_0", "pixel_9"])
    )
    torch.testing.assert_close(flat, x.flatten(1)[:, [0, 9]])


def test_bad_input_is_one_line_naming_the_column(tmp_path):
    text = datasets.Dataset.from_dict({"image": ["a", "b"], "v": [1.0, float("nan")]})
    text.to_parquet(str(tmp_path / "t.parquet"))
    src = str(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet, column 'image', row 0: not an image \(str\)"):
        read_examples([src], "data.path", Columns(image_column="image"))
    with pytest.raises(DataError, match=r"t\.parquet: column 'v' holds NaN .* first at row 1"):
        read_examples([src], "data.path", Columns(feature_columns=["v"]))
    with pytest.raises(DataError, match=r"column 'image' is not numeric"):
        read_examples([src], "data.path", Columns(feature_columns=["image"]))
    with pytest.raises(DataError, match=r"no column 'pixels'; columns: image, v"):
        read_examples([src], "data.path", Columns(image_column="pixels"))
    with pytest.raises(DataError, match=r"set data.image_column or data.feature_columns"):
        read_examples([src], "data.path")
    for err in (DataError("x"),):
        assert "\n" not in str(err)


def test_bad_input_stops_the_run_before_training(tmp_path):
    """The CLI prints one line and exits 2 (no run folder with checkpoints)."""
    from tests.conftest import run_cli

    bad = datasets.Dataset.from_dict({"a": [0.0, 1.0, float("nan"), 2.0], "b": [1.0] * 4})
    bad.to_csv(str(tmp_path / "bad.csv"), index=False)
    proc = run_cli(
        ["train", "configs/ebm/cd-2d.yaml", f"data.path={tmp_path / 'bad.csv'}",
         "data.feature_columns=[a, b]", "--output-dir", str(tmp_path / "run")],
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "column 'a' holds NaN" in lines[-1], lines[-3:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_accepts_the_data_keys():
    cfg = load_config(
        RunConfig, ROOT / "configs/ebm/cd-digits.yaml",
        ["data.path=some/folder", "data.image_column=img", "data.image_size=[16, 16]"],
    )  # fmt: skip
    assert Columns.of(cfg.data) == Columns(image_column="img", image_size=[16, 16])
