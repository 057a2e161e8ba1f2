"""K-means benchmark: our torch K-means vs scikit-learn's KMeans (and faiss-cpu if installed).

    python scripts/bench_kmeans.py            # digits, 200k x 64, 1M x 32
    python scripts/bench_kmeans.py --quick    # smaller synthetic sets (a smoke run)
    python scripts/bench_kmeans.py --device cuda
    python scripts/bench_kmeans.py --threads 1 --no-faiss --seeds 5

Same data, k, initialisation method (greedy k-means++ with 2 + log k candidates per centre;
faiss only has random init), n_init and iteration budget for every method (tol=0: iterate until
the labels stop changing or --max-iter). Wall time includes initialisation. Inertia is the sum
of squared distances to the nearest centroid, computed for every method by the method itself
(faiss: one search pass).

With n_init=1 the inertia a run reaches depends on its start (+-2% between seeds on the
synthetic sets), so every method runs --seeds seeds, interleaved (a change in the machine's load
hits all methods alike); the table gives the mean inertia and iterations, the median seconds,
and the speed-up as scikit-learn's total time over the method's. For n_init=1 the last column
compares Lloyd alone, like with like: ours run from scikit-learn's own k-means++ centres for the
same seed (sklearn.cluster.kmeans_plusplus, which KMeans uses): the gap to its inertia, mean
and per seed. It is 0 while the two runs stay on the same path; within --max-iter a rounding
tie can send them to different local optima, either way. Every method may use all the
cores: torch's thread count and scikit-learn's OpenMP/BLAS thread counts are printed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
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


def ours(x: np.ndarray, k: int, n_init: int, max_iter: int, seed: int, device: str) -> tuple:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit = ops.fit(
        ops.Points(x, dev), k, Comm(), seed=seed, n_init=n_init, max_iter=max_iter, tol=0.0
    )
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, fit.inertia, fit.n_iter


def sklearn(x: np.ndarray, k: int, n_init: int, max_iter: int, seed: int) -> tuple:
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    km = KMeans(k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=0.0, random_state=seed)
    km.fit(x)
    return time.perf_counter() - start, float(km.inertia_), int(km.n_iter_)


def same_start(x: np.ndarray, k: int, max_iter: int, seed: int, device: str) -> float:
    """Inertia of our Lloyd from scikit-learn's k-means++ centres for `seed` (untimed)."""
    from sklearn.cluster import kmeans_plusplus

    start, _ = kmeans_plusplus(x, k, random_state=seed)
    dev = torch.device(device)
    start_t = torch.from_numpy(start).to(dev)
    return ops.lloyd(ops.Points(x, dev), start_t, Comm(), max_iter=max_iter, tol=0.0).inertia


def faiss_kmeans(x: np.ndarray, k: int, n_init: int, max_iter: int, seed: int) -> tuple | None:
    try:
        import faiss
    except ImportError:
        return None
    start = time.perf_counter()
    # all points (faiss subsamples to 256 per centroid by default), random init (its only one)
    km = faiss.Kmeans(x.shape[1], k, niter=max_iter, nredo=n_init, seed=seed + 1,
                      max_points_per_centroid=10**9)  # fmt: skip
    km.train(x)
    seconds = time.perf_counter() - start
    dist, _ = km.index.search(x, 1)
    return seconds, float(dist.sum(dtype=np.float64)), max_iter


def threads() -> str:
    from threadpoolctl import threadpool_info

    pools = sorted({f"{p['user_api']} {p['num_threads']}" for p in threadpool_info()})
    return f"torch threads {torch.get_num_threads()}; scikit-learn/numpy pools: {', '.join(pools)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller synthetic sets")
    parser.add_argument("--max-iter", type=int, default=50, help="iteration budget per init")
    parser.add_argument("--seeds", type=int, default=3, help="runs per method, seeds 0..N-1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for every method (default: all)")
    parser.add_argument("--no-faiss", action="store_true", help="skip faiss-cpu")
    args = parser.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        importlib.import_module("sklearn.cluster")  # loads its OpenMP and BLAS for the limit

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # scikit-learn's OpenMP and BLAS
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    rows = []
    print(f"{os.cpu_count()} cores; {threads()}; device: {args.device}")
    print("load average (1, 5, 15 min) at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for name, x, k, n_init in datasets(args.quick):
        print(f"... {name}", flush=True)
        runs: dict[str, list[tuple]] = {}
        gaps = []
        for seed in range(args.seeds):
            runs.setdefault("sklearn", []).append(sklearn(x, k, n_init, args.max_iter, seed))
            runs.setdefault("ours (torch)", []).append(
                ours(x, k, n_init, args.max_iter, seed, args.device)
            )
            found = None if args.no_faiss else faiss_kmeans(x, k, n_init, args.max_iter, seed)
            if found is not None:
                runs.setdefault("faiss-cpu (random init)", []).append(found)
            if n_init == 1:
                ref = runs["sklearn"][-1][1]
                gaps.append(same_start(x, k, args.max_iter, seed, args.device) / ref - 1)
        ref_total = sum(r[0] for r in runs["sklearn"])
        ref_inertia = statistics.fmean(r[1] for r in runs["sklearn"])
        for method, results in runs.items():
            secs, inertias, iters = zip(*results)
            inertia = statistics.fmean(inertias)
            gap = ""
            if gaps and method.startswith("ours"):  # mean, then each seed's
                gap = f"{statistics.fmean(gaps):+.3%} ({', '.join(f'{g:+.2%}' for g in gaps)})"
            rows.append((name, f"{x.shape[0]}x{x.shape[1]}", k, n_init, len(results), method,
                         statistics.fmean(iters), statistics.median(secs), inertia,
                         inertia / ref_inertia - 1, ref_total / sum(secs), gap))  # fmt: skip
    print("load average (1, 5, 15 min) at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    head = ("data", "n x d", "k", "n_init", "runs", "method", "iters", "seconds (median)",
            "inertia (mean)", "vs sklearn", "speed-up", "same start vs sklearn")  # fmt: skip
    print()
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.0f} | {r[7]:.2f} | "
              f"{r[8]:.6g} | {r[9]:+.3%} | {r[10]:.2f}x | {r[11]}")  # fmt: skip


if __name__ == "__main__":
    main()
