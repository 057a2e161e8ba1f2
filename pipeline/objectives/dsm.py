"""Denoising score matching (`dsm`): train an energy whose score -grad E matches the
denoising direction (Vincent, 2011). For x~ = x + sigma * eps, eps ~ N(0, I), the score of
the noised data density at x~ is, in expectation, -(x~ - x) / sigma^2 = -eps / sigma, so

    loss = 0.5 * mean || sigma * (-grad E(x~)) + eps ||^2        (sigma^2-weighted, per example)

The energy learns the data density smoothed by N(0, sigma^2): small sigma = less bias, noisier
gradients. With several `sigmas`, each example draws one at random (a single energy for all,
not conditioned on sigma: the learned density is roughly a mixture of the smoothings). All
noise comes from `collate` (the engine's per-step generator), so runs and resumes are exact.

The link to the denoising autoencoder: a DAE's optimal reconstruction r(x) satisfies
r(x) - x ~ sigma^2 grad log p(x) = -sigma^2 grad E(x), the "topographic map" drawn by
`pipeline.ebm.plots.topographic_map` (scripts/topographic_map.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline import registry
from pipeline.objectives.energy import EnergyConfig, EnergyModule, EnergyObjective
from pipeline.protocols import RunContext


class DSMModule(EnergyModule):
    def dsm_loss(self, energy: nn.Module, x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor):
        shape = (-1, *[1] * (x.dim() - 1))
        s = sigma.to(x.dtype).view(shape)
        with torch.enable_grad():  # evaluation runs under no_grad; the score needs a gradient
            noisy = (x + s * eps).detach().requires_grad_(True)
            e = energy(noisy)
            (grad,) = torch.autograd.grad(e.sum(), noisy, create_graph=self.training)
        residual = (-grad * s + eps).flatten(1)
        return 0.5 * residual.pow(2).sum(1).mean(), e.detach()

    def training_loss(self, x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, **_):
        loss, e = self.dsm_loss(self.energy, x, eps, sigma)
        return loss, {"loss": loss.detach(), "energy_noisy": e.mean()}

    def extra_eval_metrics(self, x: torch.Tensor, batch: dict) -> dict:
        loss, _ = self.dsm_loss(self.scorer, x, batch["eps"], batch["sigma"])
        return {"loss": loss.detach()}


@registry.register("objective", "dsm")
class DenoisingScoreMatching(EnergyObjective):
    @dataclass
    class Config(EnergyConfig):
        name: str = "dsm"
        sigma: float = 0.1
        """Std of the Gaussian noise added to the data (in data units)."""
        sigmas: list[float] = field(default_factory=list)
        """Several noise levels instead of `sigma`: each example draws one uniformly."""

        def validate(self) -> list[str]:
            problems = super().validate()
            if self.sigma <= 0 or any(s <= 0 for s in self.sigmas):
                problems.append(f"sigma(s) must be > 0, got {self.sigmas or self.sigma}")
            return problems

    cfg: Config

    def build_module(self, ctx: RunContext) -> nn.Module:
        return self.finish_module(DSMModule(self.build_energy(ctx), self.cfg.ema), ctx)

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = dict(examples)
        x = batch["x"]
        batch["eps"] = torch.randn(x.shape, generator=generator)
        levels = torch.tensor(self.cfg.sigmas or [self.cfg.sigma])
        pick = torch.randint(len(levels), (len(x),), generator=generator)
        batch["sigma"] = levels[pick]
        return batch

    def export_extra(self, module: DSMModule) -> dict:
        return {"dsm": {"sigmas": self.cfg.sigmas or [self.cfg.sigma]}}
