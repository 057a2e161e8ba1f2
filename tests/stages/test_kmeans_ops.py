"""K-means as an EBM: monotone Lloyd steps, scikit-learn parity, free energies, edge cases."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.preprocessing import StandardScaler

from pipeline.stages import kmeans_ops as ops
from pipeline.stages.dist import Comm
from pipeline.stages.runner import run_stage

CPU = torch.device("cpu")


def _digits() -> np.ndarray:
    return StandardScaler().fit_transform(load_digits().data).astype(np.float32)


def test_inertia_never_increases_across_lloyd_steps():
    points = ops.Points(_digits(), CPU, chunk=500)  # several chunks per pass
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        start = ops.init_random(points, 10, gen, Comm())  # random init: many steps to watch
        fit = ops.lloyd(points, start, Comm(), max_iter=100, tol=0.0)
        steps = [*fit.history, fit.inertia]
        assert len(steps) > 10
        for before, after in zip(steps, steps[1:]):
            assert after <= before * (1 + 1e-9), (before, after)
        assert steps[-1] < 0.8 * steps[0]


def test_stage_matches_sklearn_on_standardised_digits(stage_cfg):
    # the shipped recipe: standardised digits, k=10, n_init=10, k-means++
    cfg = stage_cfg("configs/stages/kmeans.yaml", "log.plots=false")
    assert (cfg.stage.k, cfg.stage.n_init, cfg.stage.init) == (10, 10, "k-means++")
    ours = run_stage(cfg)["inertia"]
    theirs = KMeans(10, init="k-means++", n_init=10, random_state=0).fit(_digits()).inertia_
    assert abs(ours / theirs - 1) < 0.005, (ours, theirs)


def test_soft_free_energy_tends_to_hard_as_beta_grows():
    gen = torch.Generator().manual_seed(0)
    y, w = torch.randn(300, 5, generator=gen), torch.randn(7, 5, generator=gen)
    e = ops.energies(y, w)
    assert torch.allclose(e, torch.cdist(y, w) ** 2, atol=1e-4)
    hard = ops.free_energy(e).double()
    gaps = []
    for beta in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0):
        gap = hard - ops.free_energy(e, beta)
        # -1/b log sum exp(-b E) lies in [min E - log(k)/b, min E]
        assert (gap >= -1e-6).all() and (gap <= math.log(7) / beta + 1e-6).all()
        gaps.append(float(gap.mean()))
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-3 < gaps[0]


def test_empty_cluster_moves_to_the_farthest_point():
    x, _ = make_blobs(400, centers=[[0, 0], [10, 0]], cluster_std=0.5, random_state=0)
    points = ops.Points(x.astype(np.float32), CPU)
    start = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1000.0, 1000.0]])  # the last owns no point
    first = ops.assign(points, start, Comm())
    assert first.counts[2] == 0
    fit = ops.lloyd(points, start, Comm(), max_iter=50)
    counts = torch.bincount(fit.labels, minlength=3)
    assert (counts > 0).all()
    assert fit.inertia < first.inertia


def test_minibatch_close_to_lloyd_on_blobs():
    x, _ = make_blobs(20000, centers=8, n_features=4, random_state=1)
    points = ops.Points(x.astype(np.float32), CPU)
    full = ops.fit(points, 8, Comm(), seed=0, n_init=2)
    mini = ops.fit(points, 8, Comm(), seed=0, n_init=2, mode="minibatch", batch_size=512, steps=100)
    assert mini.inertia < 1.02 * full.inertia, (mini.inertia, full.inertia)


def test_memmap_rows_give_the_same_fit(tmp_path):
    x = _digits()
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = ops.fit(ops.Points(x, CPU, chunk=300), 10, Comm(), seed=3)
    b = ops.fit(ops.Points(mm, CPU, chunk=300), 10, Comm(), seed=3)
    assert torch.allclose(a.centers, b.centers, atol=1e-5)
    assert math.isclose(a.inertia, b.inertia, rel_tol=1e-6)


def _plain_lloyd(x: torch.Tensor, c: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook Lloyd in float64: full argmin and fresh means at every step."""
    x, c = x.double(), c.double()
    for _ in range(iters):
        lab = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(lab, minlength=len(c)).double()
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return torch.cdist(x, c).argmin(1), c


def test_incremental_lloyd_matches_plain_lloyd():
    # several chunks and 2 workers: only moved rows get an argmin and update the sums
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.randn(5000, 6, generator=gen)
        + 3 * torch.randn(12, 6, generator=gen).repeat(417, 1)[:5000]
    )
    points = ops.Points(x.numpy(), CPU, chunk=700)
    start = ops.init_random(points, 12, gen, Comm())
    fit = ops.lloyd(points, start, Comm(), max_iter=25, tol=0.0)
    labels, centers = _plain_lloyd(x, start, fit.n_iter)
    assert fit.n_iter > 5
    assert (fit.labels == labels).all()
    assert torch.allclose(fit.centers.double(), centers, atol=1e-4)
    again = ops.assign(points, fit.centers, Comm())  # the running sums equal fresh ones
    assert torch.allclose(again.counts, torch.bincount(labels, minlength=12).double())
    assert math.isclose(again.inertia, fit.inertia, rel_tol=1e-6)


def test_greedy_kmeans_pp_starts_lower_than_plain():
    # scikit-learn's greedy variant (2 + log k candidates per centre) against one candidate
    x, _ = make_blobs(3000, centers=30, n_features=5, cluster_std=2.0, random_state=0)
    points = ops.Points(x.astype(np.float32), CPU, chunk=1000)
    greedy, plain = [], []
    for seed in range(8):
        for trials, out in ((None, greedy), (1, plain)):
            gen = torch.Generator().manual_seed(seed)
            c = ops.init_kmeans_pp(points, 30, gen, Comm(), trials=trials)
            out.append(ops.assign(points, c, Comm()).inertia)
    assert np.mean(greedy) < np.mean(plain), (greedy, plain)


def test_bounded_reassign_equals_a_full_pass_after_any_move():
    # Hamerly bounds: after small moves, large ones, and a centre that leaves (it empties)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 5, generator=gen) * 3
    points = ops.Points(x.numpy(), CPU, chunk=600)
    centers = ops.init_random(points, 9, gen, Comm())
    stats = ops.assign(points, centers, Comm())
    for scale in (0.01, 0.3, 0.01, 3.0, 0.0, 0.05):
        centers = centers + scale * torch.randn(centers.shape, generator=gen)
        if scale == 3.0:
            centers[4] = 1000.0
        stats = ops.reassign(points, centers, stats, Comm())
        full = ops.assign(points, centers, Comm())
        assert (stats.labels == full.labels).all()
        assert torch.equal(stats.counts, full.counts)
        assert torch.allclose(stats.sums, full.sums, rtol=1e-9, atol=1e-9)
        assert math.isclose(stats.inertia, full.inertia, rel_tol=1e-9)
        # the bounds hold: u >= distance to the own centre, l <= distance to any other
        d = torch.cdist(x.double(), centers.double())
        own = d.gather(1, full.labels[:, None])[:, 0]
        others = d.scatter(1, full.labels[:, None], math.inf).min(1).values
        assert (stats.upper >= own - 1e-4).all() and (stats.lower <= others + 1e-4).all()
    assert stats.counts[4] == 0
