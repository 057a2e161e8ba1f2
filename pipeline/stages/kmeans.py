"""The K-means stage: fit, report inertia (the summed free energy), ARI, pictures, outputs.

python -m pipeline stage configs/stages/kmeans.yaml stage.k=10 --output-dir runs/km
torchrun --nproc_per_node 2 -m pipeline stage configs/stages/kmeans.yaml ...   (shards)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.data.sources import DataError
from pipeline.registry import register
from pipeline.stages import kmeans_ops as ops
from pipeline.stages import pictures
from pipeline.stages.base import Stage, begin_outputs, finish_outputs, load_data, metrics_log
from pipeline.stages.schema import StageRunConfig
from pipeline.train_config import StageConfig

log = logging.getLogger("pipeline")

BETAS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


@dataclass
class KMeansConfig(StageConfig):
    name: str = "kmeans"
    k: int = 8
    """Number of clusters (columns of W in E(y, z) = ||y - W z||^2)."""
    n_init: int = 1
    """Restarts with different seeds; the lowest inertia wins."""
    init: Literal["k-means++", "random"] = "k-means++"
    """Initial centroids: greedy k-means++ (as scikit-learn) or k random points."""
    max_iter: int = 300
    """Lloyd iterations at most (per restart)."""
    tol: float = 1e-4
    """Stop when the summed squared centroid shift is at most tol x the mean feature variance
    (scikit-learn's convention); also stops when no label changes. 0 = only those two."""
    mode: Literal["lloyd", "minibatch"] = "lloyd"
    """lloyd: full passes; minibatch: Sculley's mini-batch updates (data larger than memory,
    with data.mmap=true), then one full assignment pass."""
    batch_size: int = 4096
    """Rows per mini-batch (per process) in minibatch mode."""
    steps: int = 300
    """Mini-batch updates in minibatch mode."""
    chunk_size: int = 16384
    """Rows per distance matmul (memory: chunk_size x k floats); CPU threads share the chunks."""
    beta: float = 1.0
    """Inverse temperature of the reported soft free energy -1/beta log sum_z exp(-beta E)."""

    def validate(self) -> list[str]:
        problems = []
        for name in ("k", "n_init", "max_iter", "batch_size", "steps", "chunk_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tol < 0:
            problems.append(f"tol must be >= 0, got {self.tol}")
        if self.beta <= 0:
            problems.append(f"beta must be > 0, got {self.beta}")
        return problems


@register("stage", "kmeans")
class KMeansStage(Stage):
    Config = KMeansConfig

    def run(self, cfg: StageRunConfig, run_dir: Path) -> dict[str, float]:
        kc: KMeansConfig = cfg.stage
        comm = self.comm
        data = load_data(cfg)
        n = len(data.x)
        if kc.k > n:
            raise DataError(
                f"stage.k={kc.k} is larger than the number of points ({n}) in {data.source}"
            )
        device = comm.device(cfg.train.device)
        points = ops.Points(data.x[comm.shard(n)], device, kc.chunk_size)
        if points.mmap:
            _check_finite(points, data.source)
        metrics = metrics_log(run_dir, comm)

        def on_iter(restart: int, it: int, inertia: float) -> None:
            metrics.write(it, "train", {"inertia": inertia, "restart": restart})

        start = time.perf_counter()
        fit = ops.fit(
            points,
            kc.k,
            comm,
            seed=cfg.train.seed,
            n_init=kc.n_init,
            init=kc.init,
            max_iter=kc.max_iter,
            tol=kc.tol,
            mode=kc.mode,
            batch_size=kc.batch_size,
            steps=kc.steps,
            on_iter=on_iter,
        )
        seconds = time.perf_counter() - start
        soft = _soft_free_energy(points, fit.centers, kc.beta, comm)
        labels = comm.gather(fit.labels).cpu().numpy()
        result = {
            "inertia": fit.inertia,
            "free_energy_mean": fit.inertia / n,
            "soft_free_energy": soft,
            "beta": kc.beta,
            "n_iter": fit.n_iter,
            "converged": float(fit.converged),
            "k": kc.k,
            "points": n,
            "processes": comm.world,
            "seconds": seconds,
        }
        if data.labels is not None:
            from sklearn.metrics import adjusted_rand_score

            result["ari"] = float(adjusted_rand_score(data.labels, labels))
        metrics.write(fit.n_iter, "train", result)
        if comm.is_main:
            centers = fit.centers.cpu().numpy()
            self._outputs(run_dir, centers, labels, data, result)
            if cfg.log.plots:
                self._plots(run_dir, cfg, data, centers, labels, fit.history, device)
            log.info(
                "kmeans: k=%d inertia=%.6g iterations=%d%s",
                kc.k,
                fit.inertia,
                fit.n_iter,
                f" ari={result['ari']:.3f}" if "ari" in result else "",
            )
        return result

    def _outputs(self, run_dir: Path, centers, labels, data, result: dict) -> None:
        out = begin_outputs(run_dir)
        np.save(out / "centroids.npy", centers)
        np.save(out / "assignments.npy", labels.astype(np.int64))
        if data.labels is not None:
            np.save(out / "labels.npy", np.asarray(data.labels))
        meta = {"source": data.source, "image_shape": data.image_shape, **result}
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        finish_outputs(run_dir)

    def _plots(self, run_dir, cfg, data, centers, labels, history, device) -> None:
        plots = run_dir / "plots"
        its = list(range(1, len(history) + 1))
        pictures.curve({"inertia": (its, history)}, plots / "inertia.png", "iteration", "inertia")
        if data.image_shape is not None:
            pictures.image_grid(
                data.unscaled(centers),
                data.image_shape,
                plots / "centroids.png",
                "K-means centroids",
            )
        elif cfg.input:  # centroids of an autoencoder's codes: decode them into images
            from pipeline.stages.autoencoder import decode_codes

            decoded = decode_codes(Path(cfg.input) / "outputs", data.unscaled(centers))
            if decoded is not None:
                title = "K-means centroids of the codes, decoded"
                pictures.image_grid(decoded[0], decoded[1], plots / "centroids.png", title)
        # a sample is enough for pictures of 1M points
        pick = np.random.default_rng(0).permutation(len(data.x))[:5000]
        pick.sort()
        x = np.asarray(data.x[pick], dtype=np.float32)
        if x.shape[1] == 2:
            view, c2 = x, centers
            how = ""
        else:
            from sklearn.decomposition import PCA

            pca = PCA(2, random_state=0).fit(x)
            view, c2, how = pca.transform(x), pca.transform(centers), " (PCA)"
        pictures.scatter_2d(
            view, labels[pick], plots / "clusters.png", f"clusters{how}", c2, "cluster"
        )
        # the soft free energy tends to the hard one (the inertia) as beta grows
        y = torch.from_numpy(x).to(device)
        e = ops.energies(y, torch.from_numpy(centers).to(device))
        hard = ops.free_energy(e).double()
        gap = [float((hard - ops.free_energy(e, b)).mean()) for b in BETAS]
        bound = [np.log(len(centers)) / b for b in BETAS]
        pictures.curve(
            {"F - F_beta (mean over points)": (BETAS, gap), "log(k) / beta": (BETAS, bound)},
            plots / "free_energy.png",
            "beta",
            "hard minus soft free energy",
            logx=True,
            logy=True,
        )


def _soft_free_energy(points: ops.Points, centers: torch.Tensor, beta: float, comm) -> float:
    total = torch.zeros(1, dtype=torch.float64, device=points.device)
    for _, xa, _ in points.chunks():
        total += ops.free_energy(ops.energies(xa[:, : points.dim], centers), beta).sum()
    return float(comm.sum_(total))


def _check_finite(points: ops.Points, source: str) -> None:
    for start, xa, _ in points.chunks():
        bad = ~torch.isfinite(xa)
        if bad.any():
            row, col = (int(v) for v in torch.nonzero(bad)[0])
            raise DataError(
                f"{source}: non-finite value (NaN or inf) at row {start + row}, column {col} "
                "(row within this process's shard)"
            )
