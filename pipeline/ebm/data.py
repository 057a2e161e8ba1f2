"""Datasets of points or small images for the energy-based objectives.

`data.path` (and `data.eval_path`) take
  - `toy:NAME`: a built-in 2-D density (toys.py); eval points are a fresh independent sample,
  - `.npy` / `.csv` files of points (one row per point, numeric columns; a CSV header is skipped),
  - `sklearn:digits`: scikit-learn's 8x8 digits (shipped with the wheel), scaled to [0, 1].
Without `data.eval_path`, files and digits hold out `data.eval_fraction` of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.sources import DataError
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
    eval: Points
    toy: Toy | None
    """The known density when data.path is a built-in toy (enables kl and tv)."""


def load_points(
    paths: list[str], eval_paths: list[str] | None, num_train: int, num_eval: int,
    eval_fraction: float, seed: int,
) -> PointData:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    toy = None
    if len(paths) == 1 and paths[0].startswith("toy:"):
        toy = _toy(paths[0], "data.path")
        train = toy.sample(num_train, g)
        ev = None if eval_paths else toy.sample(num_eval, g)
    else:
        train = _rows(paths, "data.path")
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
            ev = _rows(eval_paths, "data.eval_path")
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


def _rows(paths: list[str], key: str) -> torch.Tensor:
    if len(paths) == 1 and paths[0] == "sklearn:digits":
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32) / 16.0
        return torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    parts = [_read_file(p, key) for p in paths]
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise DataError(f"{key}: files have different point shapes {sorted(widths)}")
    return torch.cat(parts)


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
