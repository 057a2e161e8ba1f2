"""Contrastive divergence (`cd`): push energy down on data and up on Langevin samples.

loss = mean E(data) - mean E(negatives) + alpha * (mean E(data)^2 + mean E(negatives)^2)

Negatives come from stochastic-gradient Langevin dynamics on the current energy, started from
  - `buffer`: a persistent replay buffer of past negatives, a fraction `reinit` restarted from
    uniform noise each step (PCD, as IGEBM and JEM); each process keeps its own buffer,
  - `data`: the data batch itself (CD-k),
  - `noise`: fresh uniform noise (short-run, non-persistent).
All sampler randomness derives from a seed drawn by `collate` from the engine's per-step
generator, and the buffer is saved with the objective state, so a resumed run is bitwise exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline import registry
from pipeline.config import ConfigError, check_minimums
from pipeline.ebm import plots
from pipeline.ebm.langevin import LangevinSpec, ReplayBuffer, langevin
from pipeline.ebm.quadrature import grid_energies
from pipeline.objectives.energy import EnergyConfig, EnergyModule, EnergyObjective
from pipeline.protocols import RunContext

SEED_RANGE = 2**62


class UniformNoise:
    """Uniform over a box (the data's range widened by a margin); picklable for workers."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor):
        self.lo, self.hi = lo, hi

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.rand(n, *self.lo.shape, generator=generator)


class CDModule(EnergyModule):
    def __init__(
        self, energy: nn.Module, ema: float, spec: LangevinSpec, init: str, alpha: float,
        noise: UniformNoise, buffer: ReplayBuffer | None,
    ):  # fmt: skip
        super().__init__(energy, ema)
        self.spec, self.init, self.alpha, self.noise = spec, init, alpha, noise
        self.buffer = buffer  # held by the objective too: its state goes into checkpoints
        # the last step's chain starts and ends: the contrastive samples' shift, for plots
        self.last_start: torch.Tensor | None = None
        self.last_negatives: torch.Tensor | None = None

    def training_loss(self, x: torch.Tensor, seed: torch.Tensor, **_: torch.Tensor):
        n = len(x)
        gen = torch.Generator().manual_seed(int(seed))
        if self.init == "buffer":
            idx, start = self.buffer.starts(n, gen)
        elif self.init == "data":
            start = x
        else:
            start = self.noise(n, gen)
        start = start.to(x.device, x.dtype)
        if x.device.type != "cpu":  # Langevin noise drawn on the device, from the same seed
            gen = torch.Generator(x.device).manual_seed(int(seed) + 1)
        sampler: dict = {}
        negatives = langevin(self.energy, start, self.spec, gen, sampler)
        if self.init == "buffer":
            self.buffer.update(idx, negatives)
        self.last_start, self.last_negatives = start.detach(), negatives
        e = self.energy(torch.cat([x, negatives]))
        e_data, e_neg = e[:n], e[n:]
        loss = (
            e_data.mean() - e_neg.mean() + self.alpha * (e_data.pow(2).mean() + e_neg.pow(2).mean())
        )
        metrics = {
            "loss": loss.detach(),
            "energy_data": e_data.mean().detach(),
            "energy_negatives": e_neg.mean().detach(),
        }
        if "accept" in sampler:  # a falling rate says the energy got sharp for the step size
            metrics["langevin_accept"] = torch.tensor(sampler["accept"])
        return loss, metrics


@registry.register("objective", "cd")
class ContrastiveDivergence(EnergyObjective):
    @dataclass
    class Config(EnergyConfig):
        name: str = "cd"
        init: Literal["buffer", "data", "noise"] = "buffer"
        """Where Langevin chains start: replay buffer (PCD), the data batch (CD-k) or noise."""
        steps: int = 20
        """Langevin steps per training step."""
        step_size: float = 0.02
        """Langevin step size (the gradient is multiplied by it)."""
        noise_scale: float | None = None
        """Std of the Langevin noise per step; default sqrt(2 * step_size) (temperature 1)."""
        final_step_size: float | None = None
        """Anneal the step size geometrically to this value over the chain (None = constant)."""
        grad_clip: float | None = None
        """Clip each sample's energy gradient to this L2 norm in the sampler (None = off)."""
        metropolis: bool = False
        """Metropolis-adjusted Langevin (MALA): reject steps that overshoot a sharp energy well
        instead of letting chains fly off (the cause of CD's divergence on sharp densities)."""
        buffer_size: int = 10000
        """Chains in each process's replay buffer (init=buffer); at least the micro batch."""
        reinit: float = 0.05
        """Fraction of buffer chains restarted from noise at each step."""
        alpha: float = 1e-4
        """Weight of the energy-magnitude regulariser E(data)^2 + E(negatives)^2."""
        init_margin: float = 0.25
        """Noise for chain starts is uniform over the data's box widened by this fraction of
        its span per side (points); images are kept in the data's value range."""

        def validate(self) -> list[str]:
            problems = super().validate() + check_minimums(
                self, {"steps": 1, "noise_scale": 0, "alpha": 0, "init_margin": 0}
            )
            if self.step_size <= 0:
                problems.append(f"step_size must be > 0, got {self.step_size}")
            if self.final_step_size is not None and self.final_step_size <= 0:
                problems.append(f"final_step_size must be > 0, got {self.final_step_size}")
            if self.metropolis and self.noise_scale == 0:
                problems.append("metropolis needs noise_scale > 0 (a proposal with noise)")
            if self.grad_clip is not None and self.grad_clip <= 0:
                problems.append(f"grad_clip must be > 0 (or null), got {self.grad_clip}")
            if not 0.0 <= self.reinit <= 1.0:
                problems.append(f"reinit must be in [0, 1], got {self.reinit}")
            return problems

    cfg: Config

    def check_data(self, ctx: RunContext) -> None:
        micro = ctx.cfg.train.micro_batch_size
        if self.cfg.init == "buffer" and self.cfg.buffer_size < micro:
            raise ConfigError(
                [
                    f"objective.buffer_size={self.cfg.buffer_size} is smaller than "
                    f"train.micro_batch_size={micro}: every step draws a batch of distinct "
                    "chains from the buffer"
                ]
            )
        x = self.data.train.x
        if len(self.shape) == 3:  # images: the data's value range, clamped during sampling
            lo, hi = float(x.min()), float(x.max())
            self.bounds = (lo, hi)
            self.noise = UniformNoise(torch.full(self.shape, lo), torch.full(self.shape, hi))
        else:
            lo, hi = x.min(0).values, x.max(0).values
            pad = self.cfg.init_margin * (hi - lo).max()
            self.bounds = None
            self.noise = UniformNoise(lo - pad, hi + pad)

    def build_module(self, ctx: RunContext) -> nn.Module:
        energy = self.build_energy(ctx)
        c = self.cfg
        spec = LangevinSpec(
            steps=c.steps, step_size=c.step_size,
            noise_scale=math.sqrt(2 * c.step_size) if c.noise_scale is None else c.noise_scale,
            grad_clip=c.grad_clip, bounds=self.bounds, final_step_size=c.final_step_size,
            metropolis=c.metropolis,
        )  # fmt: skip
        self.buffer = (
            ReplayBuffer(c.buffer_size, c.reinit, self.noise) if c.init == "buffer" else None
        )
        module = CDModule(energy, c.ema, spec, c.init, c.alpha, self.noise, self.buffer)
        return self.finish_module(module, ctx)

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = dict(examples)
        batch["seed"] = torch.randint(SEED_RANGE, (), generator=generator)
        return batch

    def plot_negatives(self, module: CDModule) -> torch.Tensor | None:
        if self.buffer is not None and self.buffer.data is not None:
            g = torch.Generator().manual_seed(0)  # not the global RNG: plots never perturb a run
            return self.buffer.data[torch.randperm(len(self.buffer.data), generator=g)[:1000]]
        return module.last_negatives

    def plots(self, module: CDModule, ctx: RunContext, step: int) -> None:
        super().plots(module, ctx, step)
        if not ctx.is_main or not ctx.cfg.log.plots or self.grid is None:
            return
        if module.last_start is None:  # no training step in this process yet
            return
        # the shift of the last step's chains on the energy that moved them (the raw weights,
        # not the average): Langevin carries them downhill, CD then pushes energy up there
        start, end = module.last_start, module.last_negatives
        device = next(module.energy.parameters()).device
        with torch.no_grad():
            e_start = module.energy(start.to(device)).float()
            e_end = module.energy(end.to(device)).float()
        shift = {
            "step": step,
            "chains": len(start),
            "langevin_steps": module.spec.steps,
            "mean_energy_start": float(e_start.mean()),
            "mean_energy_end": float(e_end.mean()),
            "mean_distance": float((end - start).norm(dim=1).mean()),
        }
        name = ctx.plots_dir / f"cd_shift_step{step:06d}"
        name.with_suffix(".json").write_text(json.dumps(shift, indent=2) + "\n")
        plots.sample_shift(
            name.with_suffix(".png"), self.grid, grid_energies(module.energy, self.grid),
            start, end, self.data.train.x,
            f"cd step {step}: {module.spec.steps} Langevin steps, mean E "
            f"{shift['mean_energy_start']:.2f} -> {shift['mean_energy_end']:.2f}",
        )  # fmt: skip

    def export_extra(self, module: CDModule) -> dict:
        s = module.spec
        return {
            "langevin": {
                "steps": s.steps,
                "step_size": s.step_size,
                "noise_scale": s.noise_scale,
                "metropolis": s.metropolis,
                "grad_clip": s.grad_clip,
            },
        }

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()} if self.buffer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.buffer is not None and "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
