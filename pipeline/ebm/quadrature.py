"""Exact quality of a 2-D energy model: log Z by quadrature on a fine grid.

The grid covers the data's bounding box widened by a margin on every side (a fraction of the
data's span), not a fixed box, so any 2-D density of any scale is measured the same way. With
Z = sum over cells of exp(-E) * cell area (midpoint rule):
  nll = mean E(x) + log Z over held-out points (nats per point),
  kl  = nll - true nll (a Monte Carlo estimate of KL(p_data || p_model)) when the density is known,
  tv  = 1/2 sum |p_model - p_true| * cell area, on the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Grid:
    lo: tuple[float, float]
    hi: tuple[float, float]
    size: int

    @classmethod
    def around(cls, points: torch.Tensor, margin: float, size: int) -> Grid:
        lo, hi = points.min(0).values, points.max(0).values
        pad = margin * (hi - lo).max().clamp_min(1e-3)
        return cls(tuple((lo - pad).tolist()), tuple((hi + pad).tolist()), size)

    def axes(self) -> tuple[torch.Tensor, torch.Tensor]:
        # cell midpoints
        out = []
        for lo, hi in zip(self.lo, self.hi):
            step = (hi - lo) / self.size
            out.append(lo + step * (torch.arange(self.size, dtype=torch.float64) + 0.5))
        return out[0], out[1]

    def points(self) -> torch.Tensor:
        """(size*size, 2) cell midpoints, x varying fastest (row i = y index)."""
        xs, ys = self.axes()
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).float()

    @property
    def cell_area(self) -> float:
        return (self.hi[0] - self.lo[0]) * (self.hi[1] - self.lo[1]) / self.size**2


def grid_energies(energy: nn.Module, grid: Grid, chunk: int = 16384) -> torch.Tensor:
    """E on every grid point, in float32 whatever autocast says (log Z needs the precision)."""
    device = next(energy.parameters()).device
    pts = grid.points()
    out = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for i in range(0, len(pts), chunk):
            out.append(energy(pts[i : i + chunk].to(device)).float().double())
    return torch.cat(out)


def log_partition(grid_e: torch.Tensor, grid: Grid) -> torch.Tensor:
    return torch.logsumexp(-grid_e, 0) + math.log(grid.cell_area)


def total_variation(grid_e: torch.Tensor, true_log_p: torch.Tensor, grid: Grid) -> torch.Tensor:
    log_z = log_partition(grid_e, grid)
    p_model = (-grid_e - log_z).exp()
    p_true = true_log_p.to(grid_e).exp()
    return 0.5 * (p_model - p_true).abs().sum() * grid.cell_area


@dataclass
class GridStats:
    """What one evaluation needs of the grid: log Z and (for known densities) total variation."""

    log_z: torch.Tensor
    tv: torch.Tensor | None


def grid_stats(energy: nn.Module, grid: Grid, true_log_p: torch.Tensor | None) -> GridStats:
    e = grid_energies(energy, grid)
    tv = None if true_log_p is None else total_variation(e, true_log_p.to(e.device), grid)
    return GridStats(log_partition(e, grid), tv)


def outside_mass(energy: nn.Module, grid: Grid, widen: float = 3.0) -> float:
    """The fraction of exp(-E)'s mass that lies outside `grid`'s box, measured by quadrature
    on a box `widen` times as wide (same centre, same cell size). log Z on `grid` is low by
    -log(1 - this) nats (plus whatever lies beyond the wide box, unmeasured)."""
    cx, cy = ((grid.lo[0] + grid.hi[0]) / 2, (grid.lo[1] + grid.hi[1]) / 2)
    hx, hy = ((grid.hi[0] - grid.lo[0]) * widen / 2, (grid.hi[1] - grid.lo[1]) * widen / 2)
    size = int(round(grid.size * widen))
    wide = Grid((cx - hx, cy - hy), (cx + hx, cy + hy), size)
    e = grid_energies(energy, wide)
    pts = wide.points().double()
    inside = (
        (pts[:, 0] >= grid.lo[0]) & (pts[:, 0] <= grid.hi[0])
        & (pts[:, 1] >= grid.lo[1]) & (pts[:, 1] <= grid.hi[1])
    )  # fmt: skip
    log_w = -e
    total = torch.logsumexp(log_w, 0)
    if (~inside).any():
        return float(torch.exp(torch.logsumexp(log_w[~inside], 0) - total))
    return 0.0
