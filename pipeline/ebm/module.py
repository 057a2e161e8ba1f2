"""The nn.Module shared by the energy objectives: the energy net, its weight average, and the
exact 2-D evaluation. Subclasses (cd, nce) add the training loss in `training_loss`.

Weight averaging: persistent CD's raw weights swing from one evaluation to the next (mode
weights oscillate as the chains chase the model); an exponential moving average of the
weights (Polyak averaging) is a far steadier density. The average is what evaluation, plots
and the export use; sampling always uses the raw weights being trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.ebm.quadrature import Grid, GridStats, grid_stats


class EnergyModule(nn.Module):
    def __init__(self, energy: nn.Module, ema_decay: float, accumulation: int = 1):
        super().__init__()
        self.energy = energy
        self.ema = copy.deepcopy(energy).requires_grad_(False) if ema_decay > 0 else None
        self.ema_decay, self.accumulation = ema_decay, accumulation
        # counters in the model state, so a resumed run averages exactly as a straight one
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.grid: Grid | None = None
        self.true_grid_logp: torch.Tensor | None = None
        self._stats: GridStats | None = None
        self.last_grid_energy: torch.Tensor | None = None

    @property
    def scorer(self) -> nn.Module:
        """The energy used for evaluation and export: the weight average when kept."""
        return self.ema if self.ema is not None else self.energy

    def export_net(self) -> nn.Module:
        """The plain energy net written to the export (model.safetensors)."""
        return self.scorer

    def set_grid(self, grid: Grid | None, true_grid_logp: torch.Tensor | None) -> None:
        self.grid, self.true_grid_logp = grid, true_grid_logp

    @torch.no_grad()
    def sync_ema(self) -> None:
        """Fold the last optimizer step into the average (the optimizer steps after the
        `accumulation`-th forward, so the fold happens at the next forward or evaluation)."""
        if self.ema is None:
            return
        done = int(self.forward_count) // self.accumulation
        if int(self.ema_updates) >= done:
            return
        for avg, p in zip(self.ema.parameters(), self.energy.parameters()):
            avg.lerp_(p.detach(), 1.0 - self.ema_decay)
        self.ema_updates.fill_(done)

    def train(self, mode: bool = True) -> EnergyModule:
        if not mode:
            self.sync_ema()
        self._stats = None  # the grid is integrated once per evaluation, on its first batch
        return super().train(mode)

    def forward(self, x: torch.Tensor, **batch: torch.Tensor):
        if not self.training:
            return self.eval_metrics(x, batch)
        self.sync_ema()
        loss, metrics = self.training_loss(x, **batch)
        self.forward_count += 1
        return loss, metrics

    def training_loss(self, x: torch.Tensor, **batch: torch.Tensor):
        raise NotImplementedError

    def eval_metrics(self, x: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        e = self.scorer(x).float()
        metrics = {"energy_data": e.mean()}
        if self.grid is not None:
            metrics.update(self.density_metrics(e, batch.get("true_logp")))
        metrics.update(self.extra_eval_metrics(x, batch))
        loss = metrics.get("loss", metrics.get("nll", metrics["energy_data"]))
        return loss, metrics

    def extra_eval_metrics(self, x: torch.Tensor, batch: dict) -> dict:
        return {}

    def density_metrics(self, e: torch.Tensor, true_logp: torch.Tensor | None) -> dict:
        if self._stats is None:
            self._stats = grid_stats(self.scorer, self.grid, self.true_grid_logp)
        log_z = self._stats.log_z
        nll = e.double().mean() + log_z
        out = {"nll": nll, "log_z_quadrature": log_z}
        if true_logp is not None:
            out["kl"] = nll + true_logp.double().mean()
        if self._stats.tv is not None:
            out["tv"] = self._stats.tv
        return out
