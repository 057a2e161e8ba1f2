"""K-means benchmark: our torch K-means vs scikit-learn's KMeans (and faiss-cpu if installed).

    python scripts/bench_kmeans.py            # digits, 200k x 64, 1M x 32
    python scripts/bench_kmeans.py --quick    # smaller synthetic sets (a smoke run)
    python scripts/bench_kmeans.py --device cuda

Same data, k, initialisation method (k-means++; faiss only has random init), n_init and
iteration budget for every method (tol=0: iterate until the labels stop changing or
--max-iter). Wall time includes initialisation. Inertia is the sum of squared distances to the
nearest centroid, computed for every method by the method itself (faiss: one search pass).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from pipeline.stages import kmeans_ops as ops  # noqa: E402
from pipeline.stages.dist import Comm  # noqa: E402


def datasets(quick: bool) -> list[tuple[str, np.ndarray, int, int]]:
    """(name, data, k, n_init)."""
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.preprocessing import StandardScaler

    digits = StandardScaler().fit_transform(load_digits().data).astype(np.float32)
    out = [("digits (standardised)", digits, 10, 10)]
    sizes = [(20_000, 64), (100_000, 32)] if quick else [(200_000, 64), (1_000_000, 32)]
    for n, d in sizes:
        # overlapping blobs (std 5 in a [-10, 10] box): iterations matter, the optimum is not trivial
        x, _ = make_blobs(n, n_features=d, centers=50, cluster_std=5.0, random_state=0)
        out.append((f"synthetic {n // 1000}k x {d}", x.astype(np.float32), 50, 1))
    return out


def ours(x: np.ndarray, k: int, n_init: int, max_iter: int, device: str) -> tuple:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit = ops.fit(ops.Points(x, dev), k, Comm(), seed=0, n_init=n_init, max_iter=max_iter, tol=0.0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, fit.inertia, fit.n_iter


def sklearn(x: np.ndarray, k: int, n_init: int, max_iter: int) -> tuple:
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    km = KMeans(k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=0.0, random_state=0)
    km.fit(x)
    return time.perf_counter() - start, float(km.inertia_), int(km.n_iter_)


def faiss_kmeans(x: np.ndarray, k: int, n_init: int, max_iter: int) -> tuple | None:
    try:
        import faiss
    except ImportError:
        return None
    start = time.perf_counter()
    # all points (faiss subsamples to 256 per centroid by default), random init (its only one)
    km = faiss.Kmeans(x.shape[1], k, niter=max_iter, nredo=n_init, seed=1,
                      max_points_per_centroid=10**9)  # fmt: skip
    km.train(x)
    seconds = time.perf_counter() - start
    dist, _ = km.index.search(x, 1)
    return seconds, float(dist.sum(dtype=np.float64)), max_iter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller synthetic sets")
    parser.add_argument("--max-iter", type=int, default=50, help="iteration budget per init")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rows = []
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}")
    for name, x, k, n_init in datasets(args.quick):
        print(f"... {name}", flush=True)
        results = {"sklearn": sklearn(x, k, n_init, args.max_iter)}
        results["ours (torch)"] = ours(x, k, n_init, args.max_iter, args.device)
        found = faiss_kmeans(x, k, n_init, args.max_iter)
        if found is not None:
            results["faiss-cpu (random init)"] = found
        ref_s, ref_inertia, _ = results["sklearn"]
        for method, (seconds, inertia, iters) in results.items():
            rows.append((name, f"{x.shape[0]}x{x.shape[1]}", k, n_init, method, iters, seconds,
                         inertia, inertia / ref_inertia - 1, ref_s / seconds))  # fmt: skip
    head = ("data", "n x d", "k", "n_init", "method", "iters", "seconds", "inertia",
            "vs sklearn", "speed-up")  # fmt: skip
    print()
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.2f} | {r[7]:.6g} | "
              f"{r[8]:+.3%} | {r[9]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
