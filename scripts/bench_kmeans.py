"""K-means benchmark: ours vs scikit-learn (lloyd, elkan) and faiss-cpu, at 1 and 2 threads.

    python scripts/bench_kmeans.py                      # digits, 200k x 64, 1M x 32; 1, 2 threads
    python scripts/bench_kmeans.py --quick              # 20k x 64 and 100k x 32 instead
    python scripts/bench_kmeans.py --sizes 3000x8 --seeds 2 --max-iter 10   # a smoke run
    python scripts/bench_kmeans.py --threads 1 2 4 --no-faiss --json results.json

One invocation runs every method at every thread count, interleaved: for each seed, each
thread count in turn (the order alternates between seeds), each method in turn (the order
rotates), so a change in the machine's load hits all of them alike. The table gives medians
over the seeds and the spread (min-max).

What the Lloyd table compares: for each seed, greedy k-means++ centres (2 + log k candidates
per centre) are drawn ONCE, untimed, by scikit-learn (sklearn.cluster.kmeans_plusplus, what
KMeans uses), and every method starts from them:
  ours          pipeline.stages.kmeans_ops.lloyd (Hamerly's bounds; a pool of row chunks)
  sklearn lloyd KMeans(init=centres, n_init=1, algorithm="lloyd", tol=0)
  sklearn elkan KMeans(init=centres, n_init=1, algorithm="elkan", tol=0)
  faiss-cpu     faiss.Kmeans(...).train(x, init_centroids=centres), no subsampling
with the same stopping rule: stop after the first pass that changes no label, or after
--max-iter passes. faiss has no such test (it always runs niter passes): it is given the
number of passes scikit-learn's Lloyd took from the same start (an untimed reference run per
seed), so it stops where the others do. Wall time includes each method's setup (checks, norms,
copies) and, when a run stops at --max-iter, the assignment to the final centres that gives
labels and inertia (scikit-learn and ours do it inside fit; faiss: one index.search). With
n_init > 1 (digits) each method runs from each of the n_init starts and keeps its best; the
time is the total.

Equal final inertia: every method's final centres are scored the same way (float64 distances
to the nearest centre, untimed). A method's time counts against ours for a seed only when its
inertia is within --tolerance (default 0.5%) of ours from the same start; a seed beyond it is
marked and left out of the ratio. "time / ours" is the median over those seeds of the method's
seconds over ours: above 1, ours is faster.

The k-means++ table times the initialisation alone: ours (kmeans_ops.init_kmeans_pp, as fit
runs it) and scikit-learn's kmeans_plusplus, the same greedy algorithm; their inertia is the
start's (different random draws, so only close on average).

Threads: torch.set_num_threads (ours' chunk pool is that size), threadpoolctl for every OpenMP
and BLAS pool loaded (scikit-learn's, numpy's, faiss's), faiss.omp_set_num_threads. The
threads each method actually ran with are read back and printed (ours' pool size,
KMeans._n_threads, faiss.omp_get_max_threads, every pool threadpoolctl sees).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from pipeline.stages import kmeans_ops as ops  # noqa: E402
from pipeline.stages.dist import Comm  # noqa: E402

OURS = "ours (torch, Hamerly)"
METHODS = [OURS, "sklearn lloyd", "sklearn elkan", "faiss-cpu"]
INIT_METHODS = ["ours k-means++", "sklearn kmeans_plusplus"]

try:
    import faiss
except ImportError:  # optional: pip install faiss-cpu (the test extra has it)
    faiss = None


# --------------------------------------------------------------------------- data


def parse_size(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(n), int(d)


def datasets(sizes: list[tuple[int, int]], k: int) -> list[tuple[str, np.ndarray, int, int]]:
    """(name, data, k, n_init): digits (standardised, k=10, n_init=10), then make_blobs sets."""
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.preprocessing import StandardScaler

    digits = StandardScaler().fit_transform(load_digits().data).astype(np.float32)
    out = [("digits 1797x64", digits, 10, 10)]
    for n, d in sizes:
        # overlapping blobs (std 5 in a [-10, 10] box): iterations matter, the optimum is not trivial
        x, _ = make_blobs(n, n_features=d, centers=50, cluster_std=5.0, random_state=0)
        label = f"{n // 1000}k" if n >= 10_000 and n % 1000 == 0 else str(n)
        label = f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else label
        out.append((f"{label} x {d}", np.ascontiguousarray(x, dtype=np.float32), k, 1))
    return out


def inertia(x: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre, in float64: one scale for every method."""
    c = centers.astype(np.float64)
    c_sq = (c * c).sum(1)
    total = 0.0
    for i in range(0, len(x), 65536):
        b = x[i : i + 65536].astype(np.float64)
        dist = (b * b).sum(1)[:, None] - 2.0 * (b @ c.T) + c_sq
        total += float(np.maximum(dist.min(1), 0.0).sum())
    return total


# --------------------------------------------------------------------------- threads


@contextlib.contextmanager
def limited(n: int) -> Iterator[None]:
    """Every thread pool at n threads: torch, each OpenMP/BLAS library loaded, faiss's OpenMP."""
    from threadpoolctl import threadpool_limits

    torch_before = torch.get_num_threads()
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    with threadpool_limits(n):
        torch.set_num_threads(n)
        if faiss is not None:
            faiss.omp_set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(torch_before)
            if faiss_before is not None:
                faiss.omp_set_num_threads(faiss_before)


def pools() -> dict[str, int]:
    """Threads of every pool in effect now: torch's, faiss's, and each OpenMP/BLAS library."""
    from threadpoolctl import threadpool_info

    out = {"torch": torch.get_num_threads()}
    if faiss is not None:
        out["faiss omp"] = faiss.omp_get_max_threads()
    for p in threadpool_info():
        where = Path(p["filepath"]).parent  # e.g. faiss_cpu.libs, torch/lib
        lib = f"{where.parent.name}/{where.name}" if where.name == "lib" else where.name
        out[f"{p['internal_api']} ({lib})"] = int(p["num_threads"])
    return out


# --------------------------------------------------------------------------- runners
# each returns (seconds, final centres per start, passes per start, threads it ran with)


def run_ours(x: np.ndarray, starts: list[np.ndarray], max_iter: int, device: str) -> tuple:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    points = ops.Points(x, dev)
    fits = [
        ops.lloyd(points, torch.from_numpy(s).to(dev), Comm(), max_iter=max_iter, tol=0.0)
        for s in starts
    ]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    centers = [f.centers.cpu().numpy() for f in fits]
    return seconds, centers, [f.n_iter for f in fits], points.workers


def sklearn_runner(algorithm: str) -> Callable[..., tuple]:
    def run(x: np.ndarray, starts: list[np.ndarray], max_iter: int, device: str) -> tuple:
        from sklearn.cluster import KMeans

        start = time.perf_counter()
        fits = [
            KMeans(len(s), init=s, n_init=1, max_iter=max_iter, tol=0.0, algorithm=algorithm).fit(x)
            for s in starts
        ]
        seconds = time.perf_counter() - start
        used = getattr(fits[0], "_n_threads", None)  # the OpenMP threads its loop ran with
        return seconds, [f.cluster_centers_ for f in fits], [int(f.n_iter_) for f in fits], used

    return run


def run_faiss(
    x: np.ndarray, starts: list[np.ndarray], max_iter: int, device: str, passes: list[int]
) -> tuple:
    """faiss runs a fixed number of passes (no convergence test): the passes scikit-learn's Lloyd
    took from the same start (`passes`, from an untimed reference run), so that it stops where
    the others do. When that is the whole budget (not converged), one index.search gives labels
    and inertia for the final centres, as the others' fit does."""
    seconds, centers = 0.0, []
    for s, m in zip(starts, passes):
        start = time.perf_counter()
        # all points (faiss subsamples to 256 per centroid by default), the shared start
        km = faiss.Kmeans(x.shape[1], len(s), niter=m, nredo=1, verbose=False,
                          max_points_per_centroid=10**9)  # fmt: skip
        km.train(x, init_centroids=s)
        if m >= max_iter:
            km.index.search(x, 1)
        seconds += time.perf_counter() - start
        centers.append(km.centroids.copy())
    return seconds, centers, list(passes), faiss.omp_get_max_threads()


RUNNERS = {
    OURS: run_ours,
    "sklearn lloyd": sklearn_runner("lloyd"),
    "sklearn elkan": sklearn_runner("elkan"),
    "faiss-cpu": run_faiss,
}


def init_ours(x: np.ndarray, k: int, seed: int, device: str) -> tuple:
    points = ops.Points(x, torch.device(device))  # untimed: the Lloyd table times it
    gen = torch.Generator().manual_seed(seed)
    pp = ops.serial_ops(ops.init_kmeans_pp)  # as fit() runs it: one intra-op thread, the pool
    start = time.perf_counter()
    centers = pp(points, k, gen, Comm())
    if points.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, centers.cpu().numpy(), points.workers


def init_sklearn(x: np.ndarray, k: int, seed: int, device: str) -> tuple:
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_info

    start = time.perf_counter()
    centers, _ = kmeans_plusplus(x, k, random_state=seed)  # its distances: numpy's BLAS
    seconds = time.perf_counter() - start
    blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    return seconds, centers, "BLAS " + "/".join(map(str, blas))


INIT_RUNNERS = {"ours k-means++": init_ours, "sklearn kmeans_plusplus": init_sklearn}


# --------------------------------------------------------------------------- summary


def summarise(runs: list[dict], tolerance: float, reference: str = OURS) -> list[dict]:
    """One row per (data, threads, method): median seconds and spread, the inertia gap to the
    reference method (ours) on the same seed, and the time ratio over the seeds within
    `tolerance` of it (the others are listed in "beyond")."""
    ref = {(r["data"], r["threads"], r["seed"]): r for r in runs if r["method"] == reference}
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["data"], r["threads"], r["method"]), []).append(r)
    rows = []
    for (data, threads, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        secs = [r["seconds"] for r in rs]
        row = {
            "data": data, "threads": threads, "method": method, "runs": len(rs),
            "threads_used": sorted({r["threads_used"] for r in rs}, key=str),
            "iters": statistics.median(statistics.fmean(r["passes"]) for r in rs),
            "seconds": statistics.median(secs), "min": min(secs), "max": max(secs),
            "inertia": statistics.median(r["inertia"] for r in rs),
        }  # fmt: skip
        if method != reference:
            gaps, ratios, beyond = {}, [], []
            for r in rs:
                ours = ref.get((data, threads, r["seed"]))
                if ours is None:
                    continue
                gap = r["inertia"] / ours["inertia"] - 1
                gaps[r["seed"]] = gap
                if abs(gap) <= tolerance:
                    ratios.append(r["seconds"] / ours["seconds"])
                else:
                    beyond.append(r["seed"])
            row.update(
                gaps=gaps, beyond=beyond, equal=len(ratios),
                ratio=statistics.median(ratios) if ratios else None,
            )  # fmt: skip
        rows.append(row)
    order = {m: i for i, m in enumerate(METHODS + INIT_METHODS)}
    rows.sort(key=lambda r: (r["threads"], order.get(r["method"], 99)))
    data_order = list(dict.fromkeys(r["data"] for r in runs))
    rows.sort(key=lambda r: data_order.index(r["data"]))  # stable: data, threads, method
    return rows


def headlines(rows: list[dict]) -> list[dict]:
    """Per (data, threads): ours against the fastest other method at equal inertia."""
    out = []
    for data, threads in dict.fromkeys((r["data"], r["threads"]) for r in rows):
        mine = [r for r in rows if (r["data"], r["threads"]) == (data, threads)]
        ours = next(r for r in mine if r["method"] == OURS)
        rivals = [r for r in mine if r["method"] != OURS and r.get("ratio") is not None]
        skipped = [r["method"] for r in mine if r["method"] != OURS and r.get("ratio") is None]
        best = min(rivals, key=lambda r: r["ratio"]) if rivals else None
        out.append({
            "data": data, "threads": threads, "ours_s": ours["seconds"],
            "best": best["method"] if best else None,
            "best_s": best["seconds"] if best else None,
            "ratio": best["ratio"] if best else None, "not_equal": skipped,
        })  # fmt: skip
    return out


def spread(r: dict) -> str:
    return f"{r['seconds']:.3f} ({r['min']:.3f}-{r['max']:.3f})"


def lloyd_table(rows: list[dict], tolerance: float) -> list[str]:
    tol = f"{tolerance:.1%}"
    lines = [
        f"Lloyd from the same k-means++ centres, same stopping rule (no label changes, or "
        f"--max-iter passes); inertia of every method's final centres vs ours from the same "
        f"start, per seed; time / ours = median over the seeds within {tol} of ours of "
        f"(method s / ours s), >1: ours faster; seeds beyond {tol} are marked and not counted",
        "",
        f"| data | threads | method | threads in effect | passes | seconds median (min-max) "
        f"| inertia vs ours, per seed | equal inertia (<= {tol}) | time / ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        used = ", ".join(str(t) for t in r["threads_used"])
        if r["method"] == OURS:
            gap, equal, ratio = f"(reference, {r['inertia']:.6g})", "", "1.00x"
        else:
            gap = ", ".join(
                f"{round(g, 5) + 0.0:+.3%}" + (f" (> {tol}, seed {s})" if s in r["beyond"] else "")
                for s, g in r["gaps"].items()
            )
            equal = f"{r['equal']}/{len(r['gaps'])}"
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else f"n/a: gap > {tol}"
        lines.append(
            f"| {r['data']} | {r['threads']} | {r['method']} | {used} | {r['iters']:.0f} "
            f"| {spread(r)} | {gap} | {equal} | {ratio} |"
        )
    return lines


def init_table(rows: list[dict]) -> list[str]:
    lines = [
        "k-means++ initialisation alone (greedy, 2 + log k candidates per centre); inertia of "
        "the start, median over seeds; time / ours = median of (sklearn s / ours s)",
        "",
        "| data | threads | method | threads in effect | seconds median (min-max) "
        "| start inertia (median) | time / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        used = ", ".join(str(t) for t in r["threads_used"])
        ratio = "1.00x" if r["method"] == INIT_METHODS[0] else f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['data']} | {r['threads']} | {r['method']} | {used} | {spread(r)} "
            f"| {r['inertia']:.6g} | {ratio} |"
        )
    return lines


def headline_lines(heads: list[dict], tolerance: float) -> list[str]:
    lines = [f"Headline: ours vs the fastest other method at equal inertia (<= {tolerance:.1%})"]
    for h in heads:
        if h["best"] is None:
            text = "no other method reached equal inertia"
        else:
            side = "ours faster" if h["ratio"] > 1 else "ours slower"
            text = (f"fastest other {h['best']} {h['best_s']:.3f} s vs ours {h['ours_s']:.3f} s: "
                    f"{h['ratio']:.2f}x ({side})")  # fmt: skip
        if h["not_equal"]:
            text += f"; not at equal inertia on any seed: {', '.join(h['not_equal'])}"
        lines.append(f"- {h['data']}, {h['threads']} thread(s): {text}")
    return lines


# --------------------------------------------------------------------------- main


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k x 64 and 100k x 32")
    parser.add_argument("--sizes", nargs="+", type=parse_size, metavar="NxD",
                        help="synthetic sets (default 200000x64 1000000x32)")  # fmt: skip
    parser.add_argument("--k", type=int, default=50, help="clusters on the synthetic sets")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                        help="thread counts, all in this one run (default 1 2)")  # fmt: skip
    parser.add_argument("--max-iter", type=int, default=50, help="pass budget per start")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (>= 3 for a spread)")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="equal final inertia: relative gap to ours (default 0.005)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="ours' device (cpu or cuda)")
    parser.add_argument("--no-faiss", action="store_true", help="skip faiss-cpu")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args()
    sizes = args.sizes or ([(20_000, 64), (100_000, 32)] if args.quick else
                           [(200_000, 64), (1_000_000, 32)])  # fmt: skip
    from sklearn.cluster import kmeans_plusplus  # loads its OpenMP and BLAS: the limits reach them

    methods = [m for m in METHODS if m != "faiss-cpu" or (faiss is not None and not args.no_faiss)]
    if faiss is None and not args.no_faiss:
        print("faiss-cpu is not installed (pip install faiss-cpu, or the test extra): "
              "its rows are left out; --no-faiss silences this")  # fmt: skip

    print(f"{os.cpu_count()} cores; torch {torch.__version__}; device for ours: {args.device}")
    versions = {"sklearn": __import__("sklearn").__version__, "numpy": np.__version__}
    if faiss is not None:
        versions["faiss"] = faiss.__version__
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("methods: " + ", ".join(methods) + f"; threads: {args.threads}")
    loads = {"start": load()}
    print("load average (1, 5, 15 min) at start: {} {} {}".format(*loads["start"]))
    in_effect = {}
    for n in args.threads:
        with limited(n):
            in_effect[n] = pools()
        print(
            f"threads in effect at {n}: " + ", ".join(f"{k} {v}" for k, v in in_effect[n].items())
        )
        if any(v != n for v in in_effect[n].values()):
            print(f"WARNING: not every pool is at {n} threads (see above)")

    runs: list[dict] = []
    init_runs: list[dict] = []
    for name, x, k, n_init in datasets(sizes, args.k):
        loads[name] = load()
        print(f"... {name}, k={k}, n_init={n_init}; load average {loads[name][0]}", flush=True)
        for seed in range(args.seeds):
            starts = [
                kmeans_plusplus(x, k, random_state=seed * 1000 + r)[0].astype(np.float32)
                for r in range(n_init)
            ]  # the shared starts, untimed
            with limited(max(args.threads)):  # faiss's pass counts: scikit-learn's, untimed
                passes = sklearn_runner("lloyd")(x, starts, args.max_iter, args.device)[2]
            order = args.threads if seed % 2 == 0 else args.threads[::-1]
            print(f"    seed {seed}: threads {order}, load average {load()[0]}", flush=True)
            for t_i, n in enumerate(order):
                shift = seed + t_i
                jobs = [("lloyd", m) for m in methods] + [("init", m) for m in INIT_METHODS]
                jobs = jobs[shift % len(jobs) :] + jobs[: shift % len(jobs)]
                for kind, method in jobs:
                    with limited(n):
                        if kind == "init":
                            secs, c, used = INIT_RUNNERS[method](x, k, seed, args.device)
                            centers, done = [c], [0]
                        else:
                            extra = {"passes": passes} if method == "faiss-cpu" else {}
                            secs, centers, done, used = RUNNERS[method](
                                x, starts, args.max_iter, args.device, **extra
                            )
                    scores = [inertia(x, c) for c in centers]  # untimed; best of the starts
                    record = {
                        "data": name, "threads": n, "method": method, "seed": seed,
                        "seconds": secs, "inertia": min(scores), "passes": done,
                        "threads_used": used,
                    }  # fmt: skip
                    (runs if kind == "lloyd" else init_runs).append(record)
    loads["end"] = load()
    print("load average (1, 5, 15 min) at end: {} {} {}".format(*loads["end"]))

    rows = summarise(runs, args.tolerance)
    init_rows = summarise(init_runs, tolerance=float("inf"), reference=INIT_METHODS[0])
    heads = headlines(rows)
    print()
    print("\n".join(lloyd_table(rows, args.tolerance)))
    print()
    print("\n".join(headline_lines(heads, args.tolerance)))
    print()
    print("\n".join(init_table(init_rows)))
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "versions": versions, "cores": os.cpu_count(), "load": loads,
            "threads_in_effect": in_effect, "methods": methods,
            "lloyd": rows, "headline": heads, "init": init_rows, "runs": runs,
            "init_runs": init_runs,
        }, indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
