"""Stochastic-gradient Langevin dynamics on an energy, and the persistent replay buffer.

One step: x <- x - step_size * grad E(x) + noise_scale * N(0, I). With noise_scale =
sqrt(2 * step_size) this is the unadjusted Langevin algorithm at temperature 1 (samples from
exp(-E) as the step size goes to 0); IGEBM and JEM use a smaller noise for images. All
randomness comes from the generator passed in, so a chain is reproducible from its seed.
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


def step_sizes(spec: LangevinSpec) -> list[float]:
    if spec.final_step_size is None or spec.steps == 1:
        return [spec.step_size] * spec.steps
    ratio = (spec.final_step_size / spec.step_size) ** (1 / (spec.steps - 1))
    return [spec.step_size * ratio**i for i in range(spec.steps)]


def langevin(
    energy: nn.Module, x: torch.Tensor, spec: LangevinSpec, generator: torch.Generator
) -> torch.Tensor:
    """Run the chain from `x`; returns detached samples. Parameter gradients are untouched
    (only the gradient with respect to x is taken)."""
    x = x.detach()
    for size in step_sizes(spec):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        if spec.grad_clip:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            scale = (spec.grad_clip / norm).clamp(max=1.0)
            grad = grad * scale.view(-1, *([1] * (grad.dim() - 1)))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noise_scale = spec.noise_scale * math.sqrt(size / spec.step_size)
        x = (x.detach() - size * grad + noise_scale * noise).detach()
        if spec.bounds is not None:
            x = x.clamp(*spec.bounds)
    return x


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
