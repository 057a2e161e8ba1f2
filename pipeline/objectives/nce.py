"""Noise-contrastive estimation (`nce`): tell data from known noise with a logistic classifier
whose logit is log p_model(x) - log(nu * q(x)), where log p_model(x) = -E(x) - c and c is a
learned log-partition constant (Gutmann & Hyvarinen, 2010). At the optimum the model is
self-normalised: c equals the true log Z of exp(-E), which the 2-D evaluation checks against
quadrature (`log_z_learned` vs `log_z_quadrature`, and their difference `log_z_gap`).

Noise q: a full-covariance Gaussian fitted to the training data (widened by `noise_widen`),
sampled in `collate` from the engine's per-step generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import registry
from pipeline.objectives.energy import EnergyConfig, EnergyModule, EnergyObjective
from pipeline.protocols import RunContext


class GaussianNoise:
    """N(mean, L L^T) over flattened examples; picklable for DataLoader workers."""

    def __init__(self, mean: torch.Tensor, scale_tril: torch.Tensor, shape: tuple[int, ...]):
        self.mean, self.scale_tril, self.shape = mean, scale_tril, shape

    @classmethod
    def fit(cls, x: torch.Tensor, widen: float) -> GaussianNoise:
        flat = x.flatten(1).double()
        cov = torch.cov(flat.T).reshape(flat.shape[1], flat.shape[1])
        cov = cov + 1e-4 * cov.diagonal().mean().clamp_min(1e-6) * torch.eye(len(cov))
        tril = torch.linalg.cholesky(cov) * widen
        return cls(flat.mean(0).float(), tril.float(), tuple(x.shape[1:]))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, len(self.mean), generator=generator)
        return (self.mean + eps @ self.scale_tril.T).view(n, *self.shape)


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, scale_tril: torch.Tensor
) -> torch.Tensor:
    diff = (x.flatten(1).float() - mean).T
    z = torch.linalg.solve_triangular(scale_tril, diff, upper=False)
    d = len(mean)
    log_det = scale_tril.diagonal().log().sum()
    return -0.5 * z.pow(2).sum(0) - log_det - 0.5 * d * math.log(2 * math.pi)


class NormalisedEnergy(nn.Module):
    """An energy net plus its learned log-partition constant (averaged together by the EMA)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NCEModule(EnergyModule):
    def __init__(self, energy: NormalisedEnergy, ema: float, noise: GaussianNoise, ratio: int):
        super().__init__(energy, ema)
        self.ratio = ratio
        # in the model state, so evaluation and offline export see the same noise
        self.register_buffer("noise_mean", noise.mean.clone())
        self.register_buffer("noise_tril", noise.scale_tril.clone())

    def nce_loss(self, energy: NormalisedEnergy, x: torch.Tensor, noise: torch.Tensor):
        n = len(x)
        both = torch.cat([x, noise])
        log_q = gaussian_log_prob(both, self.noise_mean, self.noise_tril)
        logit = -energy(both).float() - energy.log_z - log_q - math.log(self.ratio)
        # data: log sigmoid(logit); noise: log(1 - sigmoid(logit)); nu noise points per datum
        loss = F.softplus(-logit[:n]).mean() + self.ratio * F.softplus(logit[n:]).mean()
        accuracy = torch.cat([logit[:n] > 0, logit[n:] < 0]).float().mean()
        return loss, accuracy

    def training_loss(self, x: torch.Tensor, noise: torch.Tensor, **_: torch.Tensor):
        loss, accuracy = self.nce_loss(self.energy, x, noise)
        return loss, {
            "loss": loss.detach(),
            "nce_accuracy": accuracy,
            "log_z_learned": self.energy.log_z.detach(),
        }

    def export_net(self) -> nn.Module:
        return self.scorer.net  # the learned constant goes into energy_config.json

    def extra_eval_metrics(self, x: torch.Tensor, batch: dict) -> dict:
        loss, accuracy = self.nce_loss(self.scorer, x, batch["noise"])
        return {"loss": loss, "nce_accuracy": accuracy, "log_z_learned": self.scorer.log_z}


@registry.register("objective", "nce")
class NoiseContrastiveEstimation(EnergyObjective):
    @dataclass
    class Config(EnergyConfig):
        name: str = "nce"
        noise_ratio: int = 1
        """Noise samples per data sample (nu)."""
        noise_widen: float = 1.0
        """Multiply the fitted Gaussian's standard deviations by this (> 1 covers heavier tails)."""

        def validate(self) -> list[str]:
            problems = super().validate()
            if self.noise_ratio < 1:
                problems.append(f"noise_ratio must be >= 1, got {self.noise_ratio}")
            if self.noise_widen <= 0:
                problems.append(f"noise_widen must be > 0, got {self.noise_widen}")
            return problems

    cfg: Config

    def check_data(self, ctx: RunContext) -> None:
        self.noise = GaussianNoise.fit(self.data.train.x, self.cfg.noise_widen)

    def build_module(self, ctx: RunContext) -> nn.Module:
        energy = NormalisedEnergy(self.build_energy(ctx))
        module = NCEModule(energy, self.cfg.ema, self.noise, self.cfg.noise_ratio)
        return self.finish_module(module, ctx)

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = dict(examples)
        batch["noise"] = self.noise.sample(len(batch["x"]) * self.cfg.noise_ratio, generator)
        return batch

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        if "log_z_learned" in metrics and "log_z_quadrature" in metrics:
            metrics["log_z_gap"] = metrics["log_z_learned"] - metrics["log_z_quadrature"]
        return metrics

    def export_extra(self, module: NCEModule) -> dict:
        extra = {
            "log_z_learned": float(module.scorer.log_z),
            "noise": {"kind": "gaussian", "mean": module.noise_mean.tolist(),
                      "scale_tril": module.noise_tril.tolist()},
        }  # fmt: skip
        return extra
