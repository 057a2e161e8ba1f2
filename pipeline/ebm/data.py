"""Datasets of points or small images for the energy-based objectives.

`data.path` (and `data.eval_path`) take
  - `toy:NAME`: a built-in 2-D density (toys.py); eval points are a fresh independent sample,
  - `.npy` / `.csv` files of points (one row per point, numeric columns; a CSV header is skipped),
  - `sklearn:digits`: scikit-learn's 8x8 digits (shipped with the wheel), served as a
    `datasets.Dataset` with an `image` column of float arrays in [0, 1] (the path below),
  - anything `datasets` reads: a Hub name (`data.name`, `data.split`), local .parquet / .arrow /
    .csv / .json / .jsonl files, a `save_to_disk` folder or an image folder (`imagefolder`).
    Rows become examples through `data.image_column` or `data.feature_columns` (a .csv with
    either set goes this way too).
Without `data.eval_path`, files and datasets hold out `data.eval_fraction` of the rows;
`data.eval_path=split:NAME` reads split NAME of the same dataset.

`data.streaming=true` (`load_stream`): a `datasets` source is read as an IterableDataset, each
process (and DataLoader worker) its own share, with the same transform (`column_examples`) and
an exact position in checkpoints (`ExampleStream`, a pipeline/data/streaming.py ShardStream);
the first data.eval_documents rows are held out unless data.eval_path is set.

The image transform (`image_tensor`), applied to every value of `data.image_column`:
  - a PIL image becomes an array: modes L/1/P/I/F as one channel (P via L), others as RGB;
  - arrays are (H, W) -> one channel, (C, H, W) when C <= 4 < W, else (H, W, C);
  - integer pixels (PIL images, uint8 arrays) are divided by 255, floats are kept as they are;
  - with `data.image_size` [H, W] (or [S]) each image is resized bilinearly (antialiased);
    without it every image must have the same size.
The result is float32 (N, C, H, W). Problems (a missing column, a value that is not an image,
mixed sizes, non-numeric or NaN features) raise `DataError` naming the source and the column
(and row) before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.sources import DataError
from pipeline.data.streaming import ShardStream
from pipeline.ebm.toys import Toy, get_toy


class Points:
    """Map-style: `__getitem__(list of indices) -> {"x": (B, *shape)[, "true_logp": (B,)]}`."""

    def __init__(self, x: torch.Tensor, true_logp: torch.Tensor | None = None):
        self.x, self.true_logp = x, true_logp

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        out = {"x": self.x[idx]}
        if self.true_logp is not None:
            out["true_logp"] = self.true_logp[idx]
        return out

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass
class PointData:
    train: Points
    """Every training example; streaming: the bounded sample of the stream (StreamData)."""
    eval: Points | None
    toy: Toy | None
    """The known density when data.path is a built-in toy (enables kl and tv)."""


@dataclass
class Columns:
    """How rows of a `datasets` table become examples (data.name/split/image_column/...)."""

    image_column: str | None = None
    feature_columns: list[str] | None = None
    image_size: list[int] | None = None
    name: str | None = None
    split: str = "train"

    @classmethod
    def of(cls, data: object) -> Columns:
        """From a DataConfig (any object with these attributes; missing ones take defaults)."""
        return cls(**{k: getattr(data, k) for k in cls.__dataclass_fields__ if hasattr(data, k)})

    @property
    def set(self) -> bool:
        return bool(self.image_column or self.feature_columns)


def load_points(
    paths: list[str], eval_paths: list[str] | None, num_train: int, num_eval: int,
    eval_fraction: float, seed: int, columns: Columns | None = None,
) -> PointData:  # fmt: skip
    columns = columns or Columns()
    g = torch.Generator().manual_seed(seed)
    toy = None
    if eval_paths and len(eval_paths) == 1 and eval_paths[0].startswith("split:"):
        split = eval_paths[0].split(":", 1)[1]
        eval_cols = Columns(**{**columns.__dict__, "split": split})
        eval_paths = None
        train, ev = read_examples(paths, "data.path", columns), None
        ev = read_examples(paths, "data.eval_path", eval_cols)
        if ev.shape[1:] != train.shape[1:]:
            raise DataError(
                f"data.eval_path split {split!r} has examples of shape {tuple(ev.shape[1:])} "
                f"but the training split has {tuple(train.shape[1:])}"
            )
    elif len(paths) == 1 and paths[0].startswith("toy:"):
        toy = _toy(paths[0], "data.path")
        train = toy.sample(num_train, g)
        ev = None if eval_paths else toy.sample(num_eval, g)
    else:
        train = read_examples(paths, "data.path", columns)
        ev = None
        if not eval_paths:
            if not 0 < eval_fraction < 1:
                raise DataError("data.eval_fraction must be in (0, 1) when data.eval_path is unset")
            perm = torch.randperm(len(train), generator=g)
            n_eval = max(1, int(len(train) * eval_fraction))
            train, ev = train[perm[n_eval:]], train[perm[:n_eval]]
    if eval_paths:
        if len(eval_paths) == 1 and eval_paths[0].startswith("toy:"):
            ev = _toy(eval_paths[0], "data.eval_path").sample(num_eval, g)
        else:
            ev = read_examples(eval_paths, "data.eval_path", columns)
        if ev.shape[1:] != train.shape[1:]:
            raise DataError(
                f"data.eval_path points have shape {tuple(ev.shape[1:])} but data.path points "
                f"have {tuple(train.shape[1:])}"
            )
    if not torch.isfinite(train).all() or not torch.isfinite(ev).all():
        raise DataError("data holds NaN or infinite values")
    true_logp = (lambda x: toy.log_prob(x)) if toy is not None else (lambda x: None)
    return PointData(Points(train, true_logp(train)), Points(ev, true_logp(ev)), toy)


def _toy(path: str, key: str) -> Toy:
    try:
        return get_toy(path.split(":", 1)[1])
    except KeyError as err:
        raise DataError(f"{key}: {err.args[0]}") from None


def read_examples(paths: list[str], key: str, columns: Columns | None = None) -> torch.Tensor:
    """Every example of `paths`, in order: (N, *shape) float32 (points or (C, H, W) images)."""
    columns = columns or Columns()
    if len(paths) == 1 and paths[0] == "sklearn:digits":
        return table_examples(digits_dataset(), "sklearn:digits", _digit_columns(columns))
    if len(paths) == 1 and paths[0].startswith("toy:"):
        raise DataError(f"{key}: {paths[0]} is a density, not a dataset of examples")
    suffixes = {Path(p).suffix.lower() for p in paths}
    plain = suffixes <= {".npy"} or (suffixes <= {".csv", ".txt"} and not columns.set)
    if plain:
        parts = [_read_file(p, key) for p in paths]
    else:
        table, source = open_table(paths, key, columns)
        parts = [table_examples(table, source, columns)]
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise DataError(f"{key}: files have different point shapes {sorted(widths)}")
    return torch.cat(parts)


def _digit_columns(columns: Columns) -> Columns:
    if columns.feature_columns:
        return columns
    return Columns(**{**columns.__dict__, "image_column": columns.image_column or "image"})


def digits_dataset():
    """scikit-learn's 8x8 digits as a `datasets.Dataset`: `image` (8x8 float32 in [0, 1]),
    `label`, and `pixel_0` ... `pixel_63` for data.feature_columns."""
    import datasets
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32) / 16.0
    cols = {"image": list(images), "label": d.target.astype(np.int64)}
    cols.update({f"pixel_{i}": images.reshape(len(images), -1)[:, i] for i in range(64)})
    return datasets.Dataset.from_dict(cols)


BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json",
            ".jsonl": "json"}  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_table(paths: list[str], key: str, columns: Columns, streaming: bool = False):
    """(a `datasets.Dataset`, a description for messages) for local files, a saved dataset,
    an image folder or a Hub name; `streaming`: an IterableDataset for files, image folders and
    Hub names (a saved dataset stays a Dataset: open_stream makes it iterable)."""
    import datasets

    first = Path(paths[0]).expanduser()
    desc = ", ".join(paths)
    try:
        if first.is_dir():
            if len(paths) > 1:
                raise DataError(f"{key}: give one folder, not {len(paths)} paths")
            if (first / "dataset_info.json").is_file() or (first / "dataset_dict.json").is_file():
                table = datasets.load_from_disk(str(first))
                if isinstance(table, datasets.DatasetDict):
                    if columns.split not in table:
                        raise DataError(
                            f"{key}: {desc} has splits {sorted(table)}, not data.split="
                            f"{columns.split!r}"
                        )
                    table = table[columns.split]
                return table, desc
            if any(f.suffix.lower() in IMAGE_SUFFIXES for f in first.rglob("*") if f.is_file()):
                table = datasets.load_dataset(
                    "imagefolder", data_dir=str(first), split="train", streaming=streaming
                )
                return table, desc
            raise DataError(
                f"{key}: folder {desc} is neither a saved dataset (save_to_disk) nor an image folder"
            )
        local = [Path(p).expanduser() for p in paths]
        if any(p.suffix.lower() in BUILDERS for p in local):
            missing = [str(p) for p in local if not p.is_file()]
            if missing:
                raise DataError(f"{key}: {missing[0]!r} is not a file")
            builders = {BUILDERS.get(p.suffix.lower()) for p in local}
            if len(builders) != 1 or None in builders:
                raise DataError(f"{key}: mixed or unknown file types in {desc}")
            files = [str(p) for p in local]
            table = datasets.load_dataset(
                builders.pop(), data_files=files, split="train", streaming=streaming
            )
            return table, desc
        if len(paths) > 1:
            raise DataError(f"{key}: {desc}: one Hub dataset at a time")
        if ":" in paths[0] or first.suffix:
            raise DataError(
                f"{key}: {paths[0]!r} is not a file, folder or Hub dataset (built-in: "
                "sklearn:digits, toy:8gaussians, toy:rings, toy:2spirals, toy:checkerboard)"
            )
        table = datasets.load_dataset(
            paths[0], columns.name, split=columns.split, streaming=streaming
        )
        return table, paths[0] + (f" ({columns.name})" if columns.name else "")
    except DataError:
        raise
    except Exception as err:  # datasets' own errors: one line naming the source
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{key}: cannot read {desc}: {msg}") from None


def table_examples(table, source: str, columns: Columns) -> torch.Tensor:
    """Examples of a `datasets.Dataset`: images of `image_column` or points of
    `feature_columns` (or the table's only image column when neither is set)."""
    columns = resolve_columns(list(table.column_names), table.features, source, columns)
    if len(table) == 0:
        raise DataError(f"{source}: no rows")
    return column_examples(table, source, columns)


def resolve_columns(names: list[str], features: Any, source: str, columns: Columns) -> Columns:
    """`columns` with the image column filled in when neither image_column nor feature_columns
    is set (the only `datasets.Image` column of `features`); DataError when a column is missing
    (the check a stream makes on its first row, before training)."""
    if not columns.set:
        import datasets

        images = [c for c, f in (features or {}).items() if isinstance(f, datasets.Image)]
        if len(images) == 1:
            columns = Columns(**{**columns.__dict__, "image_column": images[0]})
        else:
            raise DataError(
                f"{source}: set data.image_column or data.feature_columns; columns: "
                f"{', '.join(names)}"
            )
    wanted = [columns.image_column] if columns.image_column else list(columns.feature_columns)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{source}: no column {missing[0]!r}; columns: {', '.join(names)}")
    return columns


def column_examples(table: Any, source: str, columns: Columns, first_row: int = 0) -> torch.Tensor:
    """The examples of resolved `columns` (see resolve_columns) of `table`: a `datasets.Dataset`
    or a mapping column -> values (a batch of streamed rows, whose first is row `first_row`
    in messages). The one transform of in-memory and streamed data."""
    features = getattr(table, "features", None) or {}
    if columns.image_column:
        col = columns.image_column
        size = _size(columns.image_size)
        images = [image_tensor(v, f"{source}, column {col!r}, row {first_row + i}", size)
                  for i, v in enumerate(table[col])]  # fmt: skip
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) > 1:
            first = tuple(images[0].shape)
            row = next(i for i, t in enumerate(images) if tuple(t.shape) != first)
            raise DataError(
                f"{source}, column {col!r}: images of different sizes ({first} at row "
                f"{first_row}, {tuple(images[row].shape)} at row {first_row + row}); set "
                "data.image_size=[H, W]"
            )
        x = torch.stack(images)
        wanted = [col]
    else:
        wanted = list(columns.feature_columns)
        cols = []
        for c in wanted:
            try:
                v = np.asarray(table[c], dtype=np.float32)
            except (TypeError, ValueError):
                kind = features[c] if c in features else type(table[c][0]).__name__
                raise DataError(f"{source}: column {c!r} is not numeric ({kind})") from None
            if v.ndim != 1:
                raise DataError(f"{source}: column {c!r} holds {v.ndim - 1}-D values, not numbers")
            cols.append(v)
        x = torch.from_numpy(np.stack(cols, axis=1))
        col = None
    bad = ~torch.isfinite(x.flatten(1))
    if bad.any():
        row, pos = (int(v) for v in bad.nonzero()[0])
        name = col if col is not None else wanted[pos]
        raise DataError(
            f"{source}: column {name!r} holds NaN or infinite values ({int(bad.sum())}), "
            f"first at row {first_row + row}"
        )
    return x


def _size(size: list[int] | None) -> tuple[int, int] | None:
    if not size:
        return None
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def image_tensor(value: object, where: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One image value (PIL image, array or nested list) -> float32 (C, H, W); see the module
    docstring for the transform."""
    from PIL import Image

    if isinstance(value, Image.Image):
        mode = "L" if value.mode in ("L", "1", "P", "I", "F", "I;16") else "RGB"
        arr = np.asarray(value.convert(mode))
        if value.mode in ("I", "F", "I;16"):
            arr = np.asarray(value, dtype=np.float32)
    elif isinstance(value, dict) and ("bytes" in value or "path" in value):
        raise DataError(f"{where}: an undecoded image (cast the column to datasets.Image)")
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            arr = np.asarray([], dtype=object)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ) or arr.ndim not in (2, 3):  # fmt: skip
        kind = type(value).__name__
        raise DataError(
            f"{where}: not an image ({kind}"
            + (f" of shape {arr.shape}" if arr.dtype != object and arr.ndim else "")
            + "); expected a PIL image or an array (H, W), (H, W, C) or (C, H, W)"
        )
    integer = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if integer and arr.dtype != np.bool_:
        t = t / 255.0
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif not (t.shape[0] <= 4 < t.shape[2]):
        t = t.permute(2, 0, 1)
    if size is not None and tuple(t.shape[1:]) != size:
        t = torch.nn.functional.interpolate(
            t[None], size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
    return t.contiguous()


def _read_file(path: str, key: str) -> torch.Tensor:
    p = Path(path).expanduser()
    if not p.is_file():
        hint = " (built-in: toy:8gaussians, toy:rings, toy:2spirals, toy:checkerboard)"
        raise DataError(f"{key}: {path!r} is not a file{hint if ':' in path else ''}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            arr = _read_csv(p)
        else:
            raise DataError(f"{key}: {path!r} is not .npy or .csv")
    except ValueError as err:
        raise DataError(f"{key}: cannot read points from {path!r}: {err}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim < 2 or len(arr) == 0:
        raise DataError(f"{key}: {path!r} holds no points (shape {arr.shape})")
    return torch.as_tensor(np.asarray(arr, dtype=np.float32))


def _read_csv(p: Path) -> np.ndarray:
    with open(p, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    return np.loadtxt(p, delimiter=",", skiprows=skip, dtype=np.float32, ndmin=2)


# --------------------------------------------------------------------------- streaming


@dataclass
class StreamData:
    """data.streaming=true: this process's endless training stream, plus what needs data in
    memory, kept bounded: `sample`, the first rows of the whole training stream (the same on
    every process: the chain-start noise box, the 2-D quadrature grid, plots, the export's
    value range), and `eval`, the held-out examples (at most data.max_eval_examples)."""

    train: ExampleStream
    sample: Points
    eval: Points | None


class ExampleStream(ShardStream):
    """Endless `{"x": (*shape)}` examples of this process's (and DataLoader worker's) share of
    a `datasets` IterableDataset, converted by `column_examples`, the in-memory path's
    transform (pipeline/data/streaming.py: sharding, shuffle buffer, exact position)."""

    key = "x"

    def __init__(
        self, rows: Any, source: str, columns: Columns, shape: tuple[int, ...], *,
        shuffle_buffer: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        super().__init__(
            rows, shuffle_buffer=shuffle_buffer, seed=seed, rank=rank, world_size=world_size
        )
        self.source, self.columns, self.shape = source, columns, shape
        self.wanted = [columns.image_column] if columns.image_column else columns.feature_columns
        self._read = 0  # rows of this share read in this epoch: the row named in messages

    def _open(self, epoch: int, source_state: dict | None) -> None:
        super()._open(epoch, source_state)
        self._read = 0

    def _prepare(self, share: Any) -> Any:
        # only the example's columns: a wide table's other columns are never decoded
        return share.select_columns(list(self.wanted))

    def _example(self, row: dict[str, Any]) -> torch.Tensor:
        where = f"{self.source} (process {self.rank}'s share)"
        x = column_examples({c: [row[c]] for c in self.wanted}, where, self.columns, self._read)[0]
        if tuple(x.shape) != self.shape:
            raise DataError(
                f"{where}: an example of shape {tuple(x.shape)} at row {self._read}, but the "
                f"first rows have {self.shape}"
                + ("; set data.image_size=[H, W]" if self.columns.image_column else "")
            )
        self._read += 1
        return x

    def _empty_message(self, worker: int, workers: int) -> str:
        return (
            f"data: {self.source}: the training stream of process {self.rank} (DataLoader "
            f"worker {worker} of {workers}) holds no row: fewer rows are left than readers "
            "(processes x data.num_workers) after data.eval_documents are held out"
        )


def _head(rows: Any, n: int, source: str, columns: Columns) -> Points | None:
    """The first `n` rows of a stream as in-memory examples (None when it has none)."""
    wanted = [columns.image_column] if columns.image_column else list(columns.feature_columns)
    batch: dict[str, list] = {c: [] for c in wanted}
    for row in rows.select_columns(wanted).take(n):
        for c in wanted:
            batch[c].append(row[c])
    if not batch[wanted[0]]:
        return None
    return Points(column_examples(batch, source, columns))


def open_stream(paths: list[str], key: str, columns: Columns) -> tuple[Any, str]:
    """(an IterableDataset, a description) for a `datasets` source: files, an image folder and
    Hub names are read as they stream; a saved dataset and sklearn:digits are on disk or in
    memory already and are served through `to_iterable_dataset`."""
    if len(paths) == 1 and paths[0] == "sklearn:digits":
        return digits_dataset().to_iterable_dataset(), "sklearn:digits"
    suffixes = {Path(p).suffix.lower() for p in paths}
    plain = suffixes <= {".npy"} or (suffixes <= {".csv", ".txt"} and not columns.set)
    if plain or any(p.startswith("toy:") for p in paths):
        raise DataError(
            f"{key}: data.streaming=true reads `datasets` sources (Hub names, .parquet/.arrow/"
            f".csv/.json files with data.feature_columns or data.image_column, image folders, "
            f"saved datasets); {', '.join(paths)} is read into memory: set data.streaming=false"
        )
    table, desc = open_table(paths, key, columns, streaming=True)
    if not hasattr(table, "state_dict"):  # a saved dataset: mapped from disk, not streamed
        table = table.to_iterable_dataset()
    return table, desc


def load_stream(
    d: Any, seed: int, rank: int, world_size: int, sample_size: int | None = None
) -> StreamData:
    """The streamed form of `load_points` for the DataConfig `d` (data.streaming=true).

    Held out: data.eval_path (files, or `split:NAME` of the same source) when set, else the
    first data.eval_documents rows of the stream, which training then skips (as the text
    objectives do); at most data.max_eval_examples of them are evaluated. data.eval_fraction
    does not apply (a stream has no length). Missing columns and bad values in the first rows
    stop the run before training; a bad row later in the stream stops it when it is read."""
    from pipeline.data.streaming import stream_columns

    columns = Columns.of(d)
    if list(d.path) == ["sklearn:digits"]:  # its default column, as read_examples has it
        columns = _digit_columns(columns)
    rows, source = open_stream(list(d.path), "data.path", columns)
    names = stream_columns(rows)
    columns = resolve_columns(names, rows.features, source, columns)
    limit = d.max_eval_examples
    ev = None
    if d.eval_path:
        eval_paths = list(d.eval_path)
        eval_cols = columns
        if len(eval_paths) == 1 and eval_paths[0].startswith("split:"):
            eval_cols = Columns(**{**columns.__dict__, "split": eval_paths[0].split(":", 1)[1]})
            eval_paths = list(d.path)
        held, eval_source = open_stream(eval_paths, "data.eval_path", eval_cols)
        resolve_columns(stream_columns(held), held.features, eval_source, eval_cols)
        ev = _head(held, limit, eval_source, eval_cols)
        if ev is None:
            raise DataError(f"data.eval_path: {eval_source}: no rows")
    elif d.eval_documents:
        held, rows = rows.take(d.eval_documents), rows.skip(d.eval_documents)
        ev = _head(held, min(limit, d.eval_documents), source, columns)
    sample = _head(rows, sample_size or limit, source, columns)
    if sample is None:
        raise DataError(
            f"data.path: {source}: no rows to train on"
            + (f" after the first data.eval_documents={d.eval_documents}" if ev is not None else "")
        )
    if ev is not None and ev.shape != sample.shape:
        raise DataError(
            f"data.eval_path examples have shape {ev.shape} but data.path examples have "
            f"{sample.shape}"
        )
    stream = ExampleStream(
        rows, source, columns, sample.shape, shuffle_buffer=d.shuffle_buffer, seed=seed,
        rank=rank, world_size=world_size,
    )  # fmt: skip
    return StreamData(stream, sample, ev)
