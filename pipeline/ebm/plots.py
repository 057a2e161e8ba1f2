"""Pictures of energy models (matplotlib Agg, PNG): cheap enough to run at every evaluation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from pipeline.ebm.quadrature import Grid  # noqa: E402


def density_panels(
    path: Path,
    grid: Grid,
    grid_energy: torch.Tensor,
    data: torch.Tensor,
    negatives: torch.Tensor | None = None,
    true_log_p: torch.Tensor | None = None,
    title: str = "",
    max_points: int = 1000,
) -> None:
    """Energy and normalised density heatmaps, data (white) and negatives (red) overlaid,
    and the true density when known."""
    n = grid.size
    extent = (grid.lo[0], grid.hi[0], grid.lo[1], grid.hi[1])
    e = grid_energy.double().view(n, n)
    log_p = -e - torch.logsumexp(-e.flatten(), 0)
    panels = [("energy E(x)", e), ("model density", log_p.exp())]
    if true_log_p is not None:
        panels.append(("true density", true_log_p.double().view(n, n).exp()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    d = data[:max_points].cpu()
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="equal")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].scatter(d[:, 0], d[:, 1], s=1, c="white", alpha=0.5, label="data")
    if negatives is not None and len(negatives):
        neg = negatives[:max_points].cpu()
        axes[0].scatter(neg[:, 0], neg[:, 1], s=1, c="red", alpha=0.5, label="negatives")
        axes[0].legend(loc="upper right", fontsize=7, markerscale=5)
    axes[0].set_xlim(extent[0], extent[1])
    axes[0].set_ylim(extent[2], extent[3])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def image_grid(path: Path, images: torch.Tensor, title: str = "", columns: int = 8) -> None:
    """A grid of samples (B, C, H, W) with values in [0, 1], e.g. Langevin digits."""
    images = images[: columns * columns].detach().float().cpu().clamp(0, 1)
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9))
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def completion_rows(
    path: Path, inputs: torch.Tensor, completions: torch.Tensor, truth: torch.Tensor,
    mask: torch.Tensor, title: str = "", columns: int = 12,
) -> None:  # fmt: skip
    """Images side by side: the masked inputs (missing pixels grey), the completions, the truth."""
    n = min(columns, len(inputs))
    shown = inputs[:n].detach().float().cpu().clone()
    shown[:, mask] = 0.5
    rows = [("input", shown), ("completion", completions[:n]), ("truth", truth[:n])]
    fig, axes = plt.subplots(3, n, figsize=(n * 0.9, 3 * 0.95), squeeze=False)
    lo = float(min(truth.min(), completions.min(), 0))
    hi = float(max(truth.max(), completions.max(), 1))
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            img = imgs[c].detach().float().cpu().permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        axes[r][0].set_title(name, fontsize=7, loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def topographic_map(
    path: Path, grid: Grid, grid_energy: torch.Tensor, minus_grad: torch.Tensor,
    data: torch.Tensor | None = None, dae_field: torch.Tensor | None = None,
    arrow_points: torch.Tensor | None = None, title: str = "", max_points: int = 1000,
) -> None:  # fmt: skip
    """Energy contours of a 2-D energy with -grad E arrows (black) at `arrow_points`, and the
    denoising autoencoder's reconstruction field r(x) - x (red) at the same points when given:
    both point up the density."""
    n = grid.size
    pts = grid.points()
    e = grid_energy.double().view(n, n).cpu().numpy()
    xs, ys = pts[:, 0].view(n, n).cpu().numpy(), pts[:, 1].view(n, n).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.contourf(xs, ys, e, levels=30, cmap="viridis")
    ax.contour(xs, ys, e, levels=15, colors="white", linewidths=0.4)
    if data is not None:
        d = data[:max_points].cpu()
        ax.scatter(d[:, 0], d[:, 1], s=1, c="white", alpha=0.4)
    a = arrow_points.detach().cpu()

    def unit(v: torch.Tensor) -> torch.Tensor:  # arrows show direction; length ~ sqrt(norm)
        norm = v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return v / norm * norm.sqrt() / norm.sqrt().max()

    g = unit(minus_grad.detach().cpu())
    ax.quiver(a[:, 0], a[:, 1], g[:, 0], g[:, 1], color="black", width=0.003, label="-grad E")
    if dae_field is not None:
        r = unit(dae_field.detach().cpu())
        ax.quiver(a[:, 0], a[:, 1], r[:, 0], r[:, 1], color="red", width=0.003, label="r(x) - x")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def sample_shift(
    path: Path, grid: Grid, grid_energy: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
    data: torch.Tensor | None = None, title: str = "", max_chains: int = 300,
) -> None:  # fmt: skip
    """Where CD's contrastive samples went in one step: energy contours, each chain's start
    (blue) joined to its end after Langevin (red); data in white."""
    n = grid.size
    pts = grid.points()
    e = grid_energy.double().view(n, n).cpu().numpy()
    xs, ys = pts[:, 0].view(n, n).cpu().numpy(), pts[:, 1].view(n, n).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.contourf(xs, ys, e, levels=30, cmap="viridis")
    if data is not None:
        d = data[:1000].cpu()
        ax.scatter(d[:, 0], d[:, 1], s=1, c="white", alpha=0.3)
    s, t = start[:max_chains].detach().cpu(), end[:max_chains].detach().cpu()
    ax.add_collection(LineCollection(torch.stack([s, t], 1).numpy(), colors="0.85", lw=0.5))
    ax.scatter(s[:, 0], s[:, 1], s=4, c="tab:blue", label="chain start")
    ax.scatter(t[:, 0], t[:, 1], s=4, c="tab:red", label="after Langevin")
    ax.set_xlim(grid.lo[0], grid.hi[0])
    ax.set_ylim(grid.lo[1], grid.hi[1])
    ax.legend(loc="upper right", fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
