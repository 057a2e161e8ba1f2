"""Built-in 2-D distributions whose density is known exactly, so `kl` and `tv` can be measured.

Each toy draws samples with an explicit generator and evaluates its exact log-density. The
two spirals are a finite Gaussian mixture along the arms (samples are drawn from the same
mixture), so their density is exact too, not an approximation of a curve plus noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LOG_2PI = math.log(2 * math.pi)


class Toy:
    name = ""

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianMixture(Toy):
    """Equal-weight isotropic Gaussians at `centers` (K, 2) with std `sigma`."""

    def __init__(self, centers: torch.Tensor, sigma: float):
        self.centers, self.sigma = centers.double(), sigma

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.randint(len(self.centers), (n,), generator=generator)
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.centers[k] + self.sigma * eps).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x.double(), self.centers).pow(2)
        log_n = -d2 / (2 * self.sigma**2) - LOG_2PI - 2 * math.log(self.sigma)
        return (torch.logsumexp(log_n, dim=1) - math.log(len(self.centers))).to(x.dtype)


class Rings(Toy):
    """Concentric rings: angle uniform, radius r ~ N(r_k, sigma^2) with ring k chosen in
    proportion to its radius (uniform along the arcs). Density p(r) / (2 pi r)."""

    def __init__(self, radii: tuple[float, ...], sigma: float):
        self.radii = torch.tensor(radii, dtype=torch.float64)
        self.weights = self.radii / self.radii.sum()
        self.sigma = sigma

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        r = self.radii[k] + self.sigma * torch.randn(n, generator=generator, dtype=torch.float64)
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        # a negative radius is the same point reflected through the origin: the density below
        # sums both branches, so it stays exact
        return torch.stack([r * theta.cos(), r * theta.sin()], dim=1).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r = x.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
        log_w = self.weights.log()
        z_pos = (r - self.radii) / self.sigma
        z_neg = (r + self.radii) / self.sigma  # the reflected branch (negligible far from 0)
        log_nr = -0.5 * LOG_2PI - math.log(self.sigma)
        log_pr = torch.logsumexp(
            torch.cat([log_w - 0.5 * z_pos**2, log_w - 0.5 * z_neg**2], dim=1), dim=1
        )
        return (log_pr + log_nr - torch.log(2 * math.pi * r[:, 0])).to(x.dtype)


class Checkerboard(Toy):
    """Uniform on the dark squares of a 4x4 board covering [-2, 2]^2 (8 squares of area 1)."""

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, 2, generator=generator)
        col = torch.randint(4, (n,), generator=generator)
        row = 2 * torch.randint(2, (n,), generator=generator) + (col % 2)
        return torch.stack([col + u[:, 0] - 2, row + u[:, 1] - 2], dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x.abs() < 2).all(dim=1)
        cell = torch.floor(x + 2).long()
        dark = (cell[:, 0] + cell[:, 1]) % 2 == 0
        return torch.where(inside & dark, math.log(1 / 8), -math.inf).to(x.dtype)


def eight_gaussians() -> Toy:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(2.0 * torch.stack([angles.cos(), angles.sin()], dim=1), 0.25)


def two_spirals(points_per_arm: int = 400, sigma: float = 0.12) -> Toy:
    # arc-length-uniform points along r = theta / (2 pi) * 0.9 (two turns), the second arm
    # rotated by pi; scaled so the data spans about [-2.2, 2.2]
    t = torch.linspace(0, 1, points_per_arm, dtype=torch.float64).sqrt()
    theta = 0.3 + t * 4 * math.pi
    r = theta / (4 * math.pi) * 2.2
    arm = torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    return GaussianMixture(torch.cat([arm, -arm]), sigma)


class Banana(Toy):
    """x1 ~ N(0, 1.2^2), x2 | x1 ~ N(0.4 x1^2 - 1.5, 0.35^2): a curved ridge (a shear of a
    Gaussian with unit Jacobian, so the density is exact). Not used to tune any recipe."""

    def __init__(self, s1: float = 1.2, s2: float = 0.35, bend: float = 0.4, shift: float = 1.5):
        self.s1, self.s2, self.bend, self.shift = s1, s2, bend, shift

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x1 = self.s1 * z[:, 0]
        x2 = self.s2 * z[:, 1] + self.bend * x1**2 - self.shift
        return torch.stack([x1, x2], dim=1).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        r = x[:, 1] - self.bend * x[:, 0] ** 2 + self.shift
        return (
            -0.5 * (x[:, 0] / self.s1) ** 2 - 0.5 * (r / self.s2) ** 2
            - LOG_2PI - math.log(self.s1 * self.s2)
        )  # fmt: skip


def grid9() -> Toy:
    """A 3 x 3 grid of Gaussians (spacing 1.5, std 0.2). Not used to tune any recipe."""
    v = torch.tensor([-1.5, 0.0, 1.5], dtype=torch.float64)
    return GaussianMixture(torch.cartesian_prod(v, v), 0.2)


TOYS: dict[str, Callable[[], Toy]] = {
    "banana": Banana,
    "grid9": grid9,
    "8gaussians": eight_gaussians,
    "rings": lambda: Rings((0.75, 1.5, 2.25), 0.15),
    "2spirals": two_spirals,
    "checkerboard": Checkerboard,
}


def get_toy(name: str) -> Toy:
    if name not in TOYS:
        raise KeyError(f"unknown toy {name!r}; choices: {', '.join(sorted(TOYS))}")
    toy = TOYS[name]()
    toy.name = name
    return toy
