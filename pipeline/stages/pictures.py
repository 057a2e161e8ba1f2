"""PNG pictures of stages into RUN_DIR/plots: image grids, filters, 2-D views, curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _as_image(row: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    img = row.reshape(shape)
    if img.ndim == 3:  # CHW -> HWC, or a single channel -> HW
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    return img


def image_rows(
    rows: dict[str, np.ndarray], shape: tuple[int, ...], path: Path, title: str = ""
) -> Path:
    """One row of images per entry (e.g. input / noisy / reconstruction)."""
    n = min(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0 + 0.4), squeeze=False)
    lo = min(float(v[:n].min()) for v in rows.values())
    hi = max(float(v[:n].max()) for v in rows.values())
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_as_image(images[c], shape), cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def image_grid(images: np.ndarray, shape: tuple[int, ...], path: Path, title: str = "") -> Path:
    """Images (each scaled on its own: filters, centroids) on a square-ish grid."""
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_as_image(images[i], shape), cmap="gray")
            ax.set_title(str(i), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def scatter_2d(
    points: np.ndarray,
    colors: np.ndarray | None,
    path: Path,
    title: str,
    centers: np.ndarray | None = None,
    color_name: str = "label",
) -> Path:
    """A 2-D view (the first two coordinates; project before calling for more)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=colors, s=6, cmap="tab10", alpha=0.8)
    if colors is not None:
        fig.colorbar(sc, ax=ax, label=color_name)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], marker="x", c="black", s=60, label="centroids")
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def curve(
    series: dict[str, tuple[list[float], list[float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-" if len(xs) < 40 else "-", label=name, markersize=3)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def project_2d(x: np.ndarray) -> tuple[np.ndarray, str]:
    """x itself when it is 2-D, else its first two principal components."""
    if x.shape[1] <= 2:
        return (x if x.shape[1] == 2 else np.c_[x, np.zeros(len(x))]), ""
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(x), " (first 2 principal components)"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
