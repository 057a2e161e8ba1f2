"""Toys, quadrature and the Langevin sampler against closed-form answers."""

import math

import pytest
import torch
from torch import nn

from pipeline.ebm.langevin import LangevinSpec, ReplayBuffer, langevin
from pipeline.ebm.quadrature import Grid, grid_stats
from pipeline.ebm.toys import TOYS, get_toy


class GaussianEnergy(nn.Module):
    """E(x) = |x - mu|^2 / (2 s^2): log Z = log(2 pi s^2) in 2-D."""

    def __init__(self, mu=(0.5, -0.3), s=0.7):
        super().__init__()
        self.mu, self.s = torch.tensor(mu), s
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return (x - self.mu).pow(2).sum(1) / (2 * self.s**2) + 0 * self.dummy


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_density_integrates_to_one_and_matches_samples(name):
    toy = get_toy(name)
    x = toy.sample(20000, torch.Generator().manual_seed(0))
    grid = Grid.around(x, 0.25, 300)
    mass = toy.log_prob(grid.points().double()).exp().sum() * grid.cell_area
    assert abs(float(mass) - 1) < 0.01, f"{name}: density integrates to {float(mass)}"
    # every sample lies where the density is positive
    assert torch.isfinite(toy.log_prob(x)).all()


def test_quadrature_log_z_nll_and_tv_of_a_gaussian_are_exact():
    energy = GaussianEnergy()
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(1)) * 0.7 + energy.mu
    grid = Grid.around(x, 0.5, 200)
    true_grid = -energy(grid.points()).double() - math.log(2 * math.pi * 0.49)
    stats = grid_stats(energy, grid, true_grid)
    assert abs(float(stats.log_z) - math.log(2 * math.pi * 0.49)) < 2e-3
    assert float(stats.tv) < 1e-3
    # a wider model is measurably off: tv of N(0, 0.7^2) vs N(0, 1) is about 0.23
    wider = GaussianEnergy(s=1.0)
    assert 0.15 < float(grid_stats(wider, grid, true_grid).tv) < 0.3


def test_langevin_samples_a_gaussian_and_is_reproducible():
    energy = GaussianEnergy(mu=(0.0, 0.0), s=0.5)
    spec = LangevinSpec(steps=200, step_size=0.01, noise_scale=math.sqrt(0.02))
    start = torch.rand(4000, 2, generator=torch.Generator().manual_seed(2)) * 4 - 2
    a = langevin(energy, start, spec, torch.Generator().manual_seed(3))
    b = langevin(energy, start, spec, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # ULA's stationary variance is s^2 / (1 - h / (2 s^2)) = 0.25 / 0.98
    assert abs(float(a.var(0).mean()) - 0.25 / 0.98) < 0.02
    assert float(a.mean(0).abs().max()) < 0.05


def test_metropolis_langevin_removes_the_step_size_bias():
    # at h = 0.2 on N(0, 0.5^2), ULA's stationary variance is 0.25 / (1 - 0.4) = 0.417; MALA
    # targets exp(-E) exactly whatever the step
    energy = GaussianEnergy(mu=(0.0, 0.0), s=0.5)
    spec = LangevinSpec(steps=200, step_size=0.2, noise_scale=math.sqrt(0.4), metropolis=True)
    start = torch.rand(4000, 2, generator=torch.Generator().manual_seed(2)) * 4 - 2
    stats: dict = {}
    a = langevin(energy, start, spec, torch.Generator().manual_seed(3), stats)
    b = langevin(energy, start, spec, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(float(a.var(0).mean()) - 0.25) < 0.02
    assert float(a.mean(0).abs().max()) < 0.05
    assert 0.3 < stats["accept"] < 1.0


def test_metropolis_langevin_stays_put_in_a_well_too_sharp_for_the_step():
    # curvature 1 / 0.05^2 = 400 with h = 0.02: each unadjusted step multiplies x by -7
    energy = GaussianEnergy(mu=(0.0, 0.0), s=0.05)
    start = torch.full((500, 2), 0.1)
    ula = LangevinSpec(steps=10, step_size=0.02, noise_scale=0.2)
    assert float(langevin(energy, start, ula, torch.Generator().manual_seed(0)).abs().max()) > 1e3
    mala = LangevinSpec(steps=10, step_size=0.02, noise_scale=0.2, metropolis=True)
    stats: dict = {}
    x = langevin(energy, start, mala, torch.Generator().manual_seed(0), stats)
    assert float(x.abs().max()) < 0.5  # overshoots rejected: the chains stay in the well
    assert stats["accept"] < 0.5


def test_replay_buffer_draws_distinct_chains_and_reinitialises():
    buf = ReplayBuffer(1000, 0.25, lambda n, g: torch.full((n, 2), 7.0))
    g = torch.Generator().manual_seed(0)
    idx, x = buf.starts(400, g)
    assert len(set(idx.tolist())) == 400
    buf.update(idx, torch.zeros(400, 2))
    idx, x = buf.starts(1000, g)
    was_updated = (buf.data[idx] == 0).all(1)
    restarted = (x == 7).all(1) & was_updated
    # a quarter of the chains that held samples were restarted from noise
    assert 0.18 < float(restarted.sum() / was_updated.sum()) < 0.32


def test_mala_costs_one_extra_energy_evaluation_per_chain_not_per_step():
    """The cost statement in pipeline/ebm/langevin.py: steps + 1 energy+grad evaluations."""
    from pipeline.models.energy import MLPEnergy

    calls = []
    net = MLPEnergy(2, [8], "silu")
    net.register_forward_hook(lambda *_: calls.append(1))
    for metropolis, expected in ((False, 7), (True, 8)):
        calls.clear()
        spec = LangevinSpec(
            steps=7, step_size=0.05, noise_scale=math.sqrt(0.1), metropolis=metropolis
        )
        langevin(net, torch.randn(16, 2), spec, torch.Generator().manual_seed(0))
        assert len(calls) == expected, (metropolis, len(calls))
