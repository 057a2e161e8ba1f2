"""Stochastic-gradient Langevin dynamics on an energy, and the persistent replay buffer.

One step: x <- x - step_size * grad E(x) + noise_scale * N(0, I). With noise_scale =
sqrt(2 * step_size) this is the unadjusted Langevin algorithm at temperature 1 (samples from
exp(-E) as the step size goes to 0); IGEBM and JEM use a smaller noise for images. All
randomness comes from the generator passed in, so a chain is reproducible from its seed.

With `metropolis`, each step is a Metropolis-adjusted Langevin (MALA) proposal, accepted with
the Metropolis-Hastings probability for exp(-E / T), T = noise_scale^2 / (2 * step_size). Why:
once CD sharpens the energy (wells narrower than about sqrt(step_size)), unadjusted steps
overshoot the wells, the chains fly off to high energy, CD pushes the data energy down without
bound and training diverges; MALA rejects those overshoots, so the chains stay where they are
instead. Cost: one energy+gradient evaluation per step, as the unadjusted sampler, plus ONE
per chain (the start point's): E(y) and grad E(y) of each proposal come from the same
backward pass and are cached for the next step when it is accepted (x keeps its cached
values when rejected). So `steps` + 1 evaluations instead of `steps`, plus the accept/reject
arithmetic (tests/ebm/test_density.py counts them; BENCHMARKS.md times them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LangevinSpec:
    steps: int
    step_size: float
    noise_scale: float
    grad_clip: float | None = None
    """Clip each example's energy gradient to this L2 norm (None = no clipping)."""
    bounds: tuple[float, float] | None = None
    """Clamp samples into [lo, hi] after each step (images), None for points."""
    final_step_size: float | None = None
    """Anneal the step size (and noise with it) geometrically to this value at the last step."""
    metropolis: bool = False
    """Accept or reject each step by Metropolis-Hastings (MALA); needs noise_scale > 0."""


def step_sizes(spec: LangevinSpec) -> list[float]:
    if spec.final_step_size is None or spec.steps == 1:
        return [spec.step_size] * spec.steps
    ratio = (spec.final_step_size / spec.step_size) ** (1 / (spec.steps - 1))
    return [spec.step_size * ratio**i for i in range(spec.steps)]


def _energy_and_grad(
    energy: nn.Module, x: torch.Tensor, grad_clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    e = energy(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    if grad_clip:
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (grad_clip / norm).clamp(max=1.0)
        grad = grad * scale.view(-1, *([1] * (grad.dim() - 1)))
    return e.detach(), grad


def langevin(
    energy: nn.Module, x: torch.Tensor, spec: LangevinSpec, generator: torch.Generator,
    stats: dict | None = None,
) -> torch.Tensor:  # fmt: skip
    """Run the chain from `x`; returns detached samples. Parameter gradients are untouched
    (only the gradient with respect to x is taken). With `metropolis`, `stats["accept"]` gets
    the mean acceptance rate over steps and chains when a dict is passed."""
    x = x.detach()
    sizes = step_sizes(spec)
    if not spec.metropolis:
        for size in sizes:
            _, grad = _energy_and_grad(energy, x, spec.grad_clip)
            x = _propose(x, grad, size, spec, generator)[0]
        return x.detach()
    e, grad = _energy_and_grad(energy, x, spec.grad_clip)
    shape = (-1, *([1] * (x.dim() - 1)))
    dims = tuple(range(1, x.dim()))
    accepted = 0.0
    for size in sizes:
        y, var = _propose(x, grad, size, spec, generator)
        e_y, grad_y = _energy_and_grad(energy, y, spec.grad_clip)
        # log of pi(y) q(x|y) / (pi(x) q(y|x)) for pi = exp(-E / T), T = var / (2 size)
        log_q_fwd = -(y - x + size * grad).pow(2).sum(dims) / (2 * var)
        log_q_bwd = -(x - y + size * grad_y).pow(2).sum(dims) / (2 * var)
        log_ratio = (e - e_y) * (2 * size / var) + log_q_bwd - log_q_fwd
        u = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
        accept = u.log() < log_ratio
        x = torch.where(accept.view(shape), y, x)
        e = torch.where(accept, e_y, e)
        grad = torch.where(accept.view(shape), grad_y, grad)
        accepted += float(accept.float().mean())
    if stats is not None:
        stats["accept"] = accepted / len(sizes)
    return x.detach()


def _propose(
    x: torch.Tensor, grad: torch.Tensor, size: float, spec: LangevinSpec,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """One Langevin move from x and its proposal variance (noise scaled with the step)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noise_scale = spec.noise_scale * math.sqrt(size / spec.step_size)
    y = (x.detach() - size * grad + noise_scale * noise).detach()
    if spec.bounds is not None:
        y = y.clamp(*spec.bounds)
    return y, noise_scale**2


class ReplayBuffer:
    """Persistent chains (PCD, as in IGEBM/JEM): each step takes a batch of past samples,
    restarts a fraction `reinit` of them from noise, runs Langevin, and writes them back.

    Not an nn.Module buffer on purpose: DDP would broadcast rank 0's buffer to every process,
    and each process keeps its own chains. The objective saves it with its state_dict."""

    def __init__(
        self, size: int, reinit: float, init: Callable[[int, torch.Generator], torch.Tensor]
    ):
        self.size, self.reinit, self.init = size, reinit, init
        self.data: torch.Tensor | None = None

    def starts(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, start points) of n chains: distinct slots, some restarted from noise."""
        if self.data is None:
            self.data = self.init(self.size, generator)
        idx = torch.randperm(self.size, generator=generator)[:n]
        fresh = torch.rand(n, generator=generator) < self.reinit
        noise = self.init(n, generator)
        x = torch.where(fresh.view(-1, *([1] * (noise.dim() - 1))), noise, self.data[idx])
        return idx, x

    def update(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.data[idx] = x.detach().to(self.data.device, self.data.dtype)

    def state_dict(self) -> dict:
        return {"data": self.data} if self.data is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.data = state.get("data")
