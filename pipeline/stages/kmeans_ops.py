"""K-means as a latent-variable energy-based model, in torch (CPU or GPU, 1 or N processes).

Energy E(y, z) = ||y - W z||^2 with z one-hot over k columns of W (the centroids).
  hard free energy  F(y)   = min_z E(y, z)                       (inertia = sum over y)
  soft free energy  F_b(y) = -1/b log sum_z exp(-b E(y, z))      (tends to F as b grows:
                                                                  F - log(k)/b <= F_b <= F)
Lloyd's algorithm alternates minimising E over z (assignment) and over W (means), so the
inertia never increases. Distances use ||x||^2 - 2 x.c + ||c||^2: one float32 matmul per chunk
of rows, so memory stays at chunk x k. Per-process sums and counts are all-reduced, so N
processes holding shards compute exactly the update one process would.

Speed on CPU: chunks run in a thread pool and every other op in one thread (see serial_ops);
after the first pass, Hamerly's bounds skip the rows whose label cannot change and only rows
that move update the float64 sums, from which the inertia follows without the distances.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from pipeline.stages.dist import Comm

P = ParamSpec("P")
R = TypeVar("R")


def serial_ops(fn: Callable[P, R]) -> Callable[P, R]:
    """Run fn with one intra-op CPU thread: the parallelism is Points.map's pool of chunks.

    On a busy machine an OpenMP region waits for its slowest thread's next time slice, so a
    cat or sum over all rows in the calling thread could take 50x its serial time."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


class Points:
    """A process's rows: an in-memory tensor (moved to the device once) or a numpy memmap
    (read chunk by chunk: data larger than memory).

    Rows are kept augmented with a column of ones, so one matmul with [-2c, ||c||^2] gives
    ||c||^2 - 2 x.c without a separate pass to add ||c||^2. On CPU, chunks run in a pool of
    threads with one intra-op thread each (scikit-learn's OpenMP loop over chunks, in effect):
    one synchronisation per pass instead of one per tensor op, which matters on a busy machine.
    """

    def __init__(self, data: np.ndarray | torch.Tensor, device: torch.device, chunk: int = 16384):
        self.device = device
        self.chunk = max(1, chunk)
        self.mmap = isinstance(data, np.memmap)
        self.n, self.dim = int(data.shape[0]), int(data.shape[1])
        self.workers = torch.get_num_threads() if device.type == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None
        self.sq_total: float | None = None  # sum ||x||^2, all processes (see _sq_total)
        if self.mmap:
            self.data = data
            self._aug = self._sq = None
        else:
            x = torch.as_tensor(np.asarray(data) if isinstance(data, np.ndarray) else data)
            self._aug = torch.ones(self.n, self.dim + 1, device=device)
            self._aug[:, : self.dim] = x.to(device=device, dtype=torch.float32)
            self.data = self._aug[:, : self.dim]
            self._sq = (self.data * self.data).sum(1)

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._aug is not None:
            return self._aug[start:stop], self._sq[start:stop]
        block = np.ones((stop - start, self.dim + 1), dtype=np.float32)
        block[:, : self.dim] = self.data[start:stop]
        xa = torch.from_numpy(block).to(self.device)
        x = xa[:, : self.dim]
        return xa, (x * x).sum(1)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(start, augmented rows [x, 1], squared norms ||x||^2)."""
        for start in range(0, self.n, self.chunk):
            yield (start, *self.block(start, min(start + self.chunk, self.n)))

    def map(self, fn: Callable[[int, torch.Tensor, torch.Tensor], Any]) -> list[Any]:
        """fn(start, augmented rows, squared norms) on every chunk, results in chunk order."""
        if self.workers <= 1 or self.n <= self.chunk:
            return [fn(*c) for c in self.chunks()]
        threads = torch.get_num_threads()
        if self._pool is None:  # kept: a pass is cheap enough for thread start-up to show
            self._pool = ThreadPoolExecutor(
                self.workers, initializer=torch.set_num_threads, initargs=(1,)
            )
        try:
            if not self.mmap:  # all chunks at once: a thread never waits for a slow sibling
                return list(self._pool.map(lambda c: fn(*c), self.chunks()))
            chunks, results = self.chunks(), []
            # a few chunks at a time: a memmap is never read into memory at once
            while wave := list(itertools.islice(chunks, 2 * self.workers)):
                results.extend(self._pool.map(lambda c: fn(*c), wave))
            return results
        finally:
            torch.set_num_threads(threads)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        if not self.mmap:
            return self.data[index.to(self.device)]
        order = np.sort(index.cpu().numpy())  # sorted reads are sequential on disk
        return torch.from_numpy(np.asarray(self.data[order], dtype=np.float32)).to(self.device)


def augmented(centers: torch.Tensor) -> torch.Tensor:
    """[-2c, ||c||^2]: rows [x, 1] times its transpose give ||c||^2 - 2 x.c."""
    return torch.cat([-2.0 * centers, (centers * centers).sum(1, keepdim=True)], 1)


# --------------------------------------------------------------------------- energies


def energies(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """E(y, z) for every row of y and every one-hot z: squared distances, shape (n, k)."""
    cross = torch.addmm((w * w).sum(1), y, w.T, alpha=-2.0)
    return (cross + (y * y).sum(1, keepdim=True)).clamp_min_(0.0)


def free_energy(e: torch.Tensor, beta: float | None = None) -> torch.Tensor:
    """Per-row free energy from energies (n, k): hard (beta None or inf) or soft at beta."""
    if beta is None or math.isinf(beta):
        return e.min(1).values
    return -torch.logsumexp(-beta * e.double(), dim=1) / beta


# --------------------------------------------------------------------------- one pass


@dataclass
class PassStats:
    inertia: float
    sums: torch.Tensor  # (k, d) float64, all processes
    counts: torch.Tensor  # (k,) float64, all processes
    labels: torch.Tensor  # (n_local,) int64
    mind: torch.Tensor | None  # (n_local,) float32 squared distance to the nearest centroid
    centers: torch.Tensor  # the centres these labels are for
    upper: torch.Tensor  # (n_local,) float32 >= distance to the assigned centre
    lower: torch.Tensor  # (n_local,) float32 <= distance to every other centre
    changed: int = -1  # rows (all processes) whose label differs from the previous pass


def _sq_total(points: Points, comm: Comm) -> float:
    """sum ||x||^2 over all processes, in float64 from the rows (cached on `points`)."""
    if points.sq_total is None:
        parts = points.map(lambda _, xa, __: (xa[:, :-1].double() ** 2).sum().reshape(1))
        local = torch.cat(parts).sum() if parts else torch.zeros((), dtype=torch.float64)
        points.sq_total = float(comm.sum_(local.reshape(1).to(points.device)))
    return points.sq_total


def _margin(dim: int) -> float:
    """Relative error bound of a float32 ||c||^2 - 2 x.c + ||x||^2 (dot products over dim + 1
    terms), times (||x||^2 + max ||c||^2): the bounds are widened by it, so a row is skipped
    only when even the rounding of a full recomputation could not change its label."""
    return 2.4e-7 * (dim + 2)


def _reduce(
    points: Points,
    centers: torch.Tensor,
    total: torch.Tensor,
    comm: Comm,
    moved: int = -1,
    prev: PassStats | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """One all-reduce of this process's (k, d + 1) sums-and-counts (or their change since
    `prev`) and moved rows; the inertia from the sums, in float64:
    sum_i ||x_i - c_z(i)||^2 = sum ||x||^2 - 2 sum_j c_j . S_j + sum_j n_j ||c_j||^2."""
    k, d = centers.shape
    extra = torch.tensor([float(moved)], dtype=torch.float64, device=total.device)
    packed = comm.sum_(torch.cat([total.flatten(), extra]))
    total = packed[:-1].view(k, d + 1)
    sums, counts = total[:, :d], total[:, d]
    if prev is not None:
        sums, counts = prev.sums + sums, prev.counts + counts
    c = centers.double()
    inertia = _sq_total(points, comm) - 2 * float((c * sums).sum())
    inertia += float((counts * (c * c).sum(1)).sum())
    return max(inertia, 0.0), sums, counts, int(packed[-1]) if moved >= 0 else -1


@serial_ops
def assign(points: Points, centers: torch.Tensor, comm: Comm) -> PassStats:
    """E-step over this process's rows, then all-reduce of sums and counts; also the
    distances to the nearest and second-nearest centres, which start reassign()'s bounds."""
    k, d = centers.shape
    ca = augmented(centers).contiguous()
    labels = torch.empty(points.n, dtype=torch.int64, device=points.device)
    mind = torch.empty(points.n, dtype=torch.float32, device=points.device)
    upper, lower = torch.empty_like(mind), torch.empty_like(mind)
    eps, c_sq = _margin(d), float((centers * centers).sum(1).max())

    def one_chunk(start: int, xa: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
        stop = start + len(xa)
        # argmin of ||c||^2 - 2 x.c is the argmin of the distance; ||x||^2 is added after.
        # (k, chunk) layout: reductions over dim 0 run along contiguous rows (vectorised)
        e = ca @ xa.T
        best, lab = e.min(0)
        labels[start:stop] = lab
        mind[start:stop] = (best + x_sq).clamp_min_(0.0)
        second = e.scatter_(0, lab[None], math.inf).amin(0)
        tol = eps * (x_sq + c_sq)
        upper[start:stop] = (best + x_sq + tol).clamp_min_(0.0).sqrt_()
        lower[start:stop] = (second + x_sq - tol).clamp_min_(0.0).sqrt_()
        # per-cluster sums, and counts in the last column (the ones of [x, 1]); float64 sums
        # of float32 rows are exact in practice, so they can be updated incrementally
        return torch.zeros(k, d + 1, dtype=torch.float64, device=points.device).index_add_(
            0, lab, xa.double()
        )

    total = torch.zeros(k, d + 1, dtype=torch.float64, device=points.device)
    for part in points.map(one_chunk):
        total += part
    inertia, sums, counts, _ = _reduce(points, centers, total, comm)
    return PassStats(inertia, sums, counts, labels, mind, centers, upper, lower)


@serial_ops
def reassign(points: Points, centers: torch.Tensor, prev: PassStats, comm: Comm) -> PassStats:
    """assign() after the centres moved from prev.centers, skipping the rows whose label
    cannot change (Hamerly 2010). Each row carries an upper bound u on the distance to its
    centre and a lower bound l on the distance to any other; when the centres move by
    delta_j, u grows by delta of its centre and l shrinks by the largest other delta. A row
    keeps its label while u <= max(l, half the distance from its centre to the nearest other
    centre); only the other rows are recomputed, and only those that move update the sums.

    A recomputed row keeps its label unless another centre is strictly nearer, so labels equal
    assign()'s except on exact ties (assign() takes the lowest index). prev's labels and bounds
    are updated in place. `mind` is None: the inertia comes from the sums.
    """
    k, d = centers.shape
    ca = augmented(centers).contiguous()
    c64, p64 = centers.double(), prev.centers.double()
    # widen by a relative 1e-6 so that float32 rounding never tightens a bound
    delta = ((c64 - p64) ** 2).sum(1).sqrt().float() * (1 + 1e-6)
    if k > 1:
        top, arg = torch.topk(delta, 2)
        other = torch.full_like(delta, float(top[0]))
        other[arg[0]] = top[1]  # the centre that moved most: the runner-up bounds the others
        gaps = torch.cdist(c64, c64).fill_diagonal_(math.inf)
        half = (0.5 * gaps.min(1).values).float() * (1 - 1e-6)
    else:
        other, half = torch.zeros_like(delta), torch.full_like(delta, math.inf)
    labels, upper, lower = prev.labels, prev.upper, prev.lower
    eps, c_sq = _margin(d), float((centers * centers).sum(1).max())
    zero = torch.zeros(k, d + 1, dtype=torch.float64, device=points.device)

    def one_chunk(start: int, xa: torch.Tensor, x_sq: torch.Tensor) -> tuple[torch.Tensor, int]:
        stop = start + len(xa)
        lab, up, lo = labels[start:stop], upper[start:stop], lower[start:stop]
        up += delta[lab]
        lo -= other[lab]
        rows = torch.nonzero(up > torch.maximum(lo, half[lab])).flatten()
        if not len(rows):
            return zero, 0
        xr, old, xr_sq = xa[rows], lab[rows], x_sq[rows]
        e = ca @ xr.T  # (k, rows): ||c||^2 - 2 x.c
        best = e.amin(0)  # values only: several times cheaper than min()'s indices
        moved = torch.nonzero(e.gather(0, old[None])[0] > best).flatten()
        new = old.clone()
        if len(moved):
            new[moved] = e[:, moved].argmin(0)
        second = e.scatter_(0, new[None], math.inf).amin(0)
        tol = eps * (xr_sq + c_sq)
        up[rows] = (best + xr_sq + tol).clamp_min_(0.0).sqrt_()
        lo[rows] = (second + xr_sq - tol).clamp_min_(0.0).sqrt_()
        if not len(moved):
            return zero, 0
        xm = xr[moved].double()
        change = torch.zeros_like(zero).index_add_(0, new[moved], xm)
        change.index_add_(0, old[moved], xm, alpha=-1.0)
        lab[rows[moved]] = new[moved]
        return change, len(moved)

    local, moved = zero.clone(), 0
    for change, m in points.map(one_chunk):
        local += change
        moved += m
    # the changes are all-reduced, so every process adds the same change to the same sums
    inertia, sums, counts, changed = _reduce(points, centers, local, comm, moved, prev)
    return PassStats(inertia, sums, counts, labels, None, centers, upper, lower, changed)


def farthest(points: Points, mind: torch.Tensor, m: int, comm: Comm) -> torch.Tensor:
    """The m rows (over all processes) farthest from their centroid: new homes for empty
    clusters, as scikit-learn does."""
    m_local = min(m, points.n)
    top = torch.topk(mind, m_local).indices
    cand = torch.cat([mind[top, None].double(), points.take(top).double()], 1)
    everyone = comm.gather(cand)
    pick = torch.topk(everyone[:, 0], m).indices.sort().values
    return everyone[pick, 1:].float()


# --------------------------------------------------------------------------- initialisation


def _global_rows(points: Points, index: torch.Tensor, comm: Comm, offset: int) -> torch.Tensor:
    """Rows at global indices: the owning process fills them, a sum shares them."""
    out = torch.zeros(len(index), points.dim, dtype=torch.float64, device=points.device)
    local = index - offset
    mine = (local >= 0) & (local < points.n)
    if mine.any():
        out[mine] = points.take(local[mine]).double()
    return comm.sum_(out).float()


def _layout(points: Points, comm: Comm) -> tuple[int, int]:
    """(rows before this process, rows in all processes)."""
    sizes = comm.gather(torch.tensor([points.n], device=points.device))
    return int(sizes[: comm.rank].sum()), int(sizes.sum())


@serial_ops
def init_random(points: Points, k: int, gen: torch.Generator, comm: Comm) -> torch.Tensor:
    offset, total = _layout(points, comm)
    index = torch.randperm(total, generator=gen)[:k].to(points.device)
    return _global_rows(points, index, comm, offset)


def _pp_pass(
    points: Points,
    cand: torch.Tensor,
    out: torch.Tensor,
    closest: torch.Tensor | None,
) -> torch.Tensor:
    """out[:, :m] = min(closest, ||c||^2 - 2 x.c) for the m candidates c, chunk by chunk in
    the pool; returns each chunk's potential sum D^2 per candidate, (chunks, m) float64.

    Distances are kept without ||x||^2 (the same for every centre, so the minimum commutes
    with it): adding it would cost more than the matmul; the sums add it per chunk."""
    ca = augmented(cand).T.contiguous()
    m = len(cand)

    def one_chunk(start: int, xa: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
        dist = out[start : start + len(xa), :m]
        torch.mm(xa, ca, out=dist)
        if closest is not None:
            torch.minimum(dist, closest[start : start + len(xa), None], out=dist)
        return dist.sum(0, dtype=torch.float64) + x_sq.sum(dtype=torch.float64)

    parts = points.map(one_chunk)
    if not parts:
        return torch.zeros(0, m, dtype=torch.float64, device=points.device)
    return torch.stack(parts)


def _locate(
    points: Points, u: torch.Tensor, closest: torch.Tensor, chunk_pots: torch.Tensor, comm: Comm
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows where the draws u (in [0, total potential)) fall in the concatenation of all
    shards' cumulative D^2 (closest + ||x||^2): (mask of draws this process owns, their local
    row indices)."""
    local_pot = chunk_pots.sum().reshape(1)
    before = float(comm.gather(local_pot)[: comm.rank].sum())
    top = before + float(local_pot)
    mine = (u >= before) & (u < top) if points.n else torch.zeros_like(u, dtype=torch.bool)
    if comm.rank == comm.world - 1 and points.n:  # draws at the very top (rounding): the last
        mine |= u >= top
    index = torch.zeros(len(u), dtype=torch.int64, device=points.device)
    if mine.any():
        # the chunk first (its potential is known), then a cumsum over that chunk only
        chunk_cum = torch.cumsum(chunk_pots, 0) + before
        for i in torch.nonzero(mine).flatten().tolist():
            c = min(
                int(torch.searchsorted(chunk_cum, u[i : i + 1], right=True)), len(chunk_cum) - 1
            )
            start, stop = c * points.chunk, min((c + 1) * points.chunk, points.n)
            d2 = (closest[start:stop] + points.block(start, stop)[1]).clamp_min_(0.0)
            cum = torch.cumsum(d2.double(), 0)
            cum += float(chunk_cum[c - 1]) if c else before
            row = int(torch.searchsorted(cum, u[i : i + 1], right=True))
            index[i] = start + min(row, stop - start - 1)
    return mine, index


@serial_ops
def init_kmeans_pp(
    points: Points, k: int, gen: torch.Generator, comm: Comm, trials: int | None = None
) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant): each new centre
    is the best of `trials` candidates drawn with probability proportional to D^2.

    Every process draws the same uniform numbers from `gen`, and the candidate is located in
    the concatenation of all shards, so the centres do not depend on the number of processes.
    Candidates' distances go to one of two (n, trials) buffers; the winner's column becomes
    `closest` in place, without a copy.
    """
    trials = trials or 2 + int(math.log(k))
    offset, total = _layout(points, comm)
    first = torch.randint(total, (1,), generator=gen).to(points.device)
    centers = [_global_rows(points, first, comm, offset)]
    bufs = [torch.empty(points.n, trials, device=points.device) for _ in range(2)]
    chunk_pots = _pp_pass(points, centers[0], bufs[0], None)[:, 0]
    closest = bufs[0][:, 0]
    potential = float(comm.sum_(chunk_pots.sum().reshape(1)))
    for step in range(1, k):
        u = torch.rand(trials, generator=gen, dtype=torch.float64).to(points.device) * potential
        mine, index = _locate(points, u, closest, chunk_pots, comm)
        cand = torch.zeros(trials, points.dim, dtype=torch.float64, device=points.device)
        if mine.any():
            cand[mine] = points.take(index[mine]).double()
        cand = comm.sum_(cand).float()
        buf = bufs[step % 2]  # the other buffer holds `closest`
        pots = _pp_pass(points, cand, buf, closest)
        new_pots = comm.sum_(pots.sum(0))
        best = int(torch.argmin(new_pots))
        centers.append(cand[best : best + 1])
        closest, chunk_pots, potential = buf[:, best], pots[:, best], float(new_pots[best])
    return torch.cat(centers)


# --------------------------------------------------------------------------- fitting


@dataclass
class Fit:
    centers: torch.Tensor
    labels: torch.Tensor  # this process's rows
    inertia: float
    n_iter: int
    history: list[float] = field(default_factory=list)  # inertia at each assignment step
    converged: bool = False


@serial_ops
def lloyd(
    points: Points,
    centers: torch.Tensor,
    comm: Comm,
    max_iter: int = 300,
    tol: float = 0.0,
    on_iter: Callable[[int, float], None] | None = None,
) -> Fit:
    """Lloyd iterations until labels stop changing, the centre shift (sum of squared moves)
    is at most `tol`, or max_iter. Ends with an assignment to the final centres."""
    history: list[float] = []
    stats: PassStats | None = None
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        stats = (
            assign(points, centers, comm)
            if stats is None
            else reassign(points, centers, stats, comm)
        )
        history.append(stats.inertia)
        if on_iter:
            on_iter(it, stats.inertia)
        if stats.changed == 0:  # strict convergence: the assignment is a fixed point
            converged = True
            break
        empty = torch.nonzero(stats.counts == 0).flatten()
        if len(empty) and stats.mind is None:  # a full pass gives the distances (and bounds)
            stats = assign(points, centers, comm)
            empty = torch.nonzero(stats.counts == 0).flatten()
        new = stats.sums / stats.counts.clamp_min(1)[:, None]
        if len(empty):
            new[empty] = farthest(points, stats.mind, len(empty), comm).double()
        new = new.float()
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= tol:
            converged = True
            break
    if stats is None:
        final = assign(points, centers, comm)
    elif stats.changed == 0:  # the centres are the ones this pass assigned to
        final = stats
    else:
        final = reassign(points, centers, stats, comm)
    return Fit(centers, final.labels, final.inertia, it, history, converged)


@serial_ops
def minibatch(
    points: Points,
    centers: torch.Tensor,
    comm: Comm,
    steps: int,
    batch_size: int,
    gen: torch.Generator,
    on_iter: Callable[[int, float], None] | None = None,
) -> Fit:
    """Mini-batch k-means (Sculley 2010): each centre moves toward its batch mean with rate
    batch count / total count seen. Each process draws its own batch; the batch sums and
    counts are all-reduced. Only the batch is in memory, so a memmap can exceed RAM."""
    k, d = centers.shape
    centers = centers.double()
    seen = torch.zeros(k, dtype=torch.float64, device=points.device)
    for step in range(1, steps + 1):
        index = torch.randint(points.n, (min(batch_size, points.n),), generator=gen)
        x = points.take(index)
        lab = torch.cdist(x, centers.float()).argmin(1)
        sums = torch.zeros(k, d, dtype=torch.float64, device=points.device)
        sums.index_add_(0, lab, x.double())
        counts = torch.bincount(lab, minlength=k).double()
        packed = comm.sum_(torch.cat([sums.flatten(), counts]))
        sums, counts = packed[: k * d].view(k, d), packed[k * d :]
        seen += counts
        centers += (sums - counts[:, None] * centers) / seen.clamp_min(1)[:, None]
        if on_iter and (step % 50 == 0 or step == steps):
            on_iter(step, float("nan"))
    final = assign(points, centers.float(), comm)
    return Fit(centers.float(), final.labels, final.inertia, steps, [final.inertia], True)


@serial_ops
def fit(
    points: Points,
    k: int,
    comm: Comm,
    seed: int = 0,
    n_init: int = 1,
    init: str = "k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    mode: str = "lloyd",
    batch_size: int = 4096,
    steps: int = 200,
    on_iter: Callable[[int, int, float], None] | None = None,
) -> Fit:
    """Best of `n_init` runs (lowest inertia). `tol` is relative to the mean feature variance,
    as in scikit-learn, so it means the same on any scale."""
    tol_abs = tol * _mean_variance(points, comm) if tol > 0 else 0.0
    best: Fit | None = None
    for run in range(n_init):
        gen = torch.Generator().manual_seed(seed * 1000 + run)
        if init == "k-means++":
            centers = init_kmeans_pp(points, k, gen, comm)
        else:
            centers = init_random(points, k, gen, comm)
        hook = (lambda i, v, r=run: on_iter(r, i, v)) if on_iter else None
        if mode == "minibatch":
            # each process draws its own batches: seed with its rank
            local = torch.Generator().manual_seed(seed * 1000 + run + 7919 * (comm.rank + 1))
            result = minibatch(points, centers, comm, steps, batch_size, local, hook)
        else:
            result = lloyd(points, centers, comm, max_iter, tol_abs, hook)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


def _mean_variance(points: Points, comm: Comm) -> float:
    s = torch.zeros(points.dim, dtype=torch.float64, device=points.device)
    s2 = torch.zeros_like(s)
    for _, xa, _ in points.chunks():
        x = xa[:, : points.dim]
        s += x.sum(0, dtype=torch.float64)
        s2 += (x.double() ** 2).sum(0)
    n = comm.sum_(torch.tensor([float(points.n)], dtype=torch.float64, device=points.device))
    s, s2 = comm.sum_(s), comm.sum_(s2)
    var = s2 / n - (s / n) ** 2
    return float(var.mean())
