"""Numeric data for stages: rows of numbers (N, D), optional labels, optional image shape.

`data.path` is one of
  - `sklearn:digits`   scikit-learn's 1797 8x8 digits (ships offline), labels 0-9
  - `sklearn:blobs`    2-D Gaussian clusters (for pictures of clusters), labels = true cluster
  - a `.npy` array: (N, D) rows or (N, H, W) images; labels from data.labels_path
  - a `.csv` of numbers (a header row; data.label_column, if present, holds labels)
  - any other local file or a Hugging Face dataset name, read with `datasets.load_dataset`:
    images in data.image_column (or numeric columns), labels in data.label_column
Problems (missing file, wrong shape, NaN, non-numeric column) raise `DataError` naming the
file and the row or column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.data.sources import DataError


@dataclass
class DataConfig:
    path: str = "sklearn:digits"
    """`sklearn:digits`, `sklearn:blobs`, a .npy array (N, D) or images (N, H, W), a .csv of
    numbers, another local data file or a Hugging Face dataset name (images or numbers)."""
    name: str | None = None
    """Hub dataset configuration, as `datasets.load_dataset(path, name)`."""
    split: str = "train"
    """Split to read (Hub datasets and local files through `datasets`)."""
    labels_path: str | None = None
    """A .npy of N labels for a .npy data.path (used for colours and ARI only)."""
    label_column: str | None = "label"
    """Column of labels (csv and datasets), used when present; null = no labels."""
    image_column: str = "image"
    """Column of images (datasets); when absent every numeric column is a feature."""
    text_column: str = "text"
    """Column of text (the embed stage)."""
    max_examples: int | None = None
    """Keep at most this many rows (the first ones)."""
    scale: Literal["none", "standardize", "unit"] = "none"
    """none; standardize: zero mean, unit variance per column (constant columns left at 0);
    unit: divide by the largest absolute value, so non-negative images land in [0, 1]."""
    eval_fraction: float = 0.2
    """Held-out fraction (random, seeded by train.seed) for held-out metrics."""
    mmap: bool = False
    """Memory-map a .npy instead of reading it (larger than memory; use stage.mode=minibatch)."""

    def validate(self) -> list[str]:
        problems = []
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append(f"max_examples must be >= 1, got {self.max_examples}")
        if self.mmap and self.scale != "none":
            problems.append("mmap reads rows as they are: use scale=none with mmap=true")
        return problems


@dataclass
class ArrayData:
    x: np.ndarray  # (N, D) float32, or a float32 memmap
    labels: np.ndarray | None = None  # (N,) int
    image_shape: tuple[int, ...] | None = None  # (H, W) or (C, H, W) when rows are images
    source: str = ""
    # data.scale undone for pictures: original = x * factor + offset
    offset: np.ndarray | float = 0.0
    factor: np.ndarray | float = 1.0

    def unscaled(self, rows: np.ndarray) -> np.ndarray:
        return rows * self.factor + self.offset

    @property
    def in_unit_range(self) -> bool:
        return bool(self.x.min() >= 0.0 and self.x.max() <= 1.0)


def load(cfg: DataConfig, seed: int = 0) -> ArrayData:
    """Read, check, scale and truncate `data.path`."""
    data = _read(cfg)
    if cfg.max_examples is not None:
        data.x = data.x[: cfg.max_examples]
        data.labels = None if data.labels is None else data.labels[: cfg.max_examples]
    check(data)
    scale(data, cfg.scale)
    return data


def check(data: ArrayData) -> None:
    x = data.x
    if x.ndim != 2:
        raise DataError(f"{data.source}: expected rows of numbers (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{data.source}: no data (shape {x.shape})")
    if not isinstance(x, np.memmap):  # a memmap is checked chunk by chunk where it is read
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"{data.source}: {int(bad.sum())} non-finite values (NaN or inf), "
                f"first at row {row}, column {col}"
            )
    if data.labels is not None and len(data.labels) != len(x):
        raise DataError(f"{data.source}: {len(data.labels)} labels for {len(x)} rows")


def scale(data: ArrayData, how: str) -> None:
    """Apply data.scale in place, remembering how to undo it."""
    x = data.x
    if how == "standardize":
        std = x.std(0)
        data.offset, data.factor = x.mean(0), np.where(std > 0, std, 1.0)
    elif how == "unit":
        top = float(np.abs(x).max())
        data.factor = top if top > 0 else 1.0
    else:
        return
    data.x = ((x - data.offset) / data.factor).astype(np.float32)


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows), a seeded random split."""
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * fraction))
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


# --------------------------------------------------------------------------- readers


def _read(cfg: DataConfig) -> ArrayData:
    path = cfg.path
    if path.startswith("sklearn:"):
        return _sklearn(path.split(":", 1)[1])
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _npy(p, cfg)
    if suffix == ".csv":
        return _csv(p, cfg)
    if suffix in (".npz", ".pt", ".pkl"):
        raise DataError(f"data.path {path!r}: use a .npy array (N, D) or (N, H, W)")
    return _datasets(cfg)


def _sklearn(name: str) -> ArrayData:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return ArrayData(d.data.astype(np.float32), d.target, (8, 8), "sklearn:digits")
    if name == "blobs":
        from sklearn.datasets import make_blobs

        x, y = make_blobs(n_samples=1500, centers=5, cluster_std=1.2, random_state=0)
        return ArrayData(x.astype(np.float32), y, None, "sklearn:blobs")
    raise DataError(
        f"data.path 'sklearn:{name}' is unknown; choices: sklearn:digits, sklearn:blobs"
    )


def _npy(p: Path, cfg: DataConfig) -> ArrayData:
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist")
    try:
        arr = np.load(p, mmap_mode="r" if cfg.mmap else None, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"data file {str(p)!r} is not a plain numeric .npy: {err}") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"data file {str(p)!r} holds {arr.dtype}, not numbers")
    image_shape = None
    if arr.ndim in (3, 4):  # images (N, H, W) or (N, C, H, W)
        image_shape = tuple(arr.shape[1:])
        arr = arr.reshape(len(arr), -1)
    elif arr.ndim != 2:
        raise DataError(
            f"data file {str(p)!r} has shape {arr.shape}; expected (N, D) rows or (N, H, W) images"
        )
    if cfg.mmap:
        if arr.dtype != np.float32:
            raise DataError(f"data.mmap needs a float32 .npy; {str(p)!r} is {arr.dtype}")
        x = arr
    else:
        x = np.asarray(arr, dtype=np.float32)
    labels = None
    if cfg.labels_path:
        lp = Path(cfg.labels_path).expanduser()
        if not lp.is_file():
            raise DataError(f"data.labels_path {str(lp)!r} does not exist")
        labels = np.load(lp, allow_pickle=False).reshape(-1)
    return ArrayData(x, labels, image_shape, str(p))


def _csv(p: Path, cfg: DataConfig) -> ArrayData:
    import pandas as pd

    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist")
    frame = pd.read_csv(p)
    labels = None
    if cfg.label_column and cfg.label_column in frame.columns:
        labels = label_codes(frame.pop(cfg.label_column).to_numpy())
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(f"data file {str(p)!r}: column {bad[0]!r} is not numeric")
    return ArrayData(frame.to_numpy(dtype=np.float32), labels, None, str(p))


def _datasets(cfg: DataConfig) -> ArrayData:
    from pipeline.data import sources

    source = sources.resolve([cfg.path], cfg.name, cfg.split)
    ds = sources.load(source)
    if cfg.max_examples is not None and len(ds) > cfg.max_examples:
        ds = ds.select(range(cfg.max_examples))
    columns = list(ds.column_names)
    labels = None
    if cfg.label_column and cfg.label_column in columns:
        labels = label_codes(np.asarray(ds[cfg.label_column]))
    if cfg.image_column in columns:
        images = [np.asarray(img, dtype=np.float32) for img in ds[cfg.image_column]]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DataError(
                f"{source.describe()}: images in column {cfg.image_column!r} differ in size "
                f"({', '.join(map(str, sorted(shapes)[:3]))}); resize them first"
            )
        shape = images[0].shape
        if len(shape) == 3:  # HWC -> CHW, the layout of the convolutional autoencoder
            images = [im.transpose(2, 0, 1) for im in images]
            shape = images[0].shape
        x = np.stack(images).reshape(len(images), -1)
        return ArrayData(x, labels, tuple(shape), source.describe())
    features = [c for c in columns if c != cfg.label_column]
    try:
        x = np.stack([np.asarray(ds[c], dtype=np.float32) for c in features], 1)
    except (TypeError, ValueError):
        raise DataError(
            f"{source.describe()}: no image column {cfg.image_column!r} and not every column "
            f"is numeric (columns: {', '.join(columns)})"
        ) from None
    return ArrayData(x, labels, None, source.describe())


def label_codes(values: np.ndarray) -> np.ndarray:
    """Labels as integers (strings become category codes)."""
    if np.issubdtype(values.dtype, np.integer):
        return values
    _, codes = np.unique(values.astype(str), return_inverse=True)
    return codes


# --------------------------------------------------------------------------- stage outputs


def save_outputs(folder: Path, data: ArrayData, features: np.ndarray, extra: dict) -> None:
    """What a downstream stage reads: features.npy (N, D'), labels.npy, meta.json."""
    np.save(folder / "features.npy", np.asarray(features, dtype=np.float32))
    if data.labels is not None:
        np.save(folder / "labels.npy", np.asarray(data.labels))
    meta = {"source": data.source, "image_shape": data.image_shape, **extra}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def load_outputs(folder: Path, mmap: bool = False) -> ArrayData:
    x = np.load(folder / "features.npy", mmap_mode="r" if mmap else None)
    labels = np.load(folder / "labels.npy") if (folder / "labels.npy").is_file() else None
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    shape = meta.get("feature_image_shape")
    return ArrayData(x, labels, tuple(shape) if shape else None, f"{folder}/features.npy")
