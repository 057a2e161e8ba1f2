"""What the point-data energy objectives (cd, nce) share: the energy module with its weight
average and 2-D evaluation by quadrature, data, plots and export. Each objective adds its loss (an
`EnergyModule` subclass with `training_loss`) and its own config fields.

Weight averaging: persistent CD's raw weights swing from one evaluation to the next (mode
weights oscillate as the chains chase the model); an exponential moving average of the
weights (Polyak averaging) is a far steadier density. The average is what evaluation, plots
and the export use; sampling always uses the raw weights being trained.

The math (toys, Langevin, quadrature, plots) is in pipeline/ebm/, which imports no objective.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pipeline import config as config_lib
from pipeline import registry
from pipeline.config import ConfigError, check_minimums
from pipeline.ebm import plots
from pipeline.ebm.data import Columns, PointData, load_points, load_stream
from pipeline.ebm.export import save_energy
from pipeline.ebm.quadrature import Grid, GridStats, grid_energies, grid_stats, outside_mass
from pipeline.engine.launch import accumulation_steps
from pipeline.objectives.base import Datasets, Objective, ObjectiveConfig, Task
from pipeline.protocols import RunContext


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


@dataclass
class EnergyConfig(ObjectiveConfig):
    num_train: int = 20000
    """Points drawn from a built-in toy (data.path=toy:NAME) for training."""
    num_eval: int = 5000
    """Held-out points drawn from a built-in toy for evaluation."""
    ema: float = 0.995
    """Decay of the weight average used for evaluation, plots and export (0 = raw weights)."""
    density_metrics: bool | Literal["auto"] = "auto"
    """nll/kl/tv by midpoint quadrature on a box around the data: auto = for 2-D data; true = required (2-D data only)."""
    grid_size: int = 200
    """Quadrature grid points per axis."""
    grid_margin: float = 0.25
    """The grid covers the data's bounding box widened by this fraction of its span per side."""

    def validate(self) -> list[str]:
        problems = []
        if self.num_train < 1 or self.num_eval < 1:
            problems.append("num_train and num_eval must be >= 1")
        if not 0.0 <= self.ema < 1.0:
            problems.append(f"ema must be in [0, 1), got {self.ema}")
        return problems + check_minimums(self, {"grid_size": 16, "grid_margin": 0})


class EnergyObjective(Objective):
    cfg: EnergyConfig
    task = Task(pipeline_tag="", name="Energy-based density model", library="pipeline")

    @property
    def shardable(self) -> bool:
        # the weight average is updated from whole parameters between steps (sync_ema)
        return self.cfg.ema == 0

    def unshardable_reason(self) -> str:
        return f"its weight average, objective.ema={self.cfg.ema}, reads whole parameters"

    # ---- data
    def build_data(self, ctx: RunContext) -> Datasets:
        d = ctx.cfg.data
        if d.streaming:
            # the engine reads `train` through its stateful loader (exact resume); what needs
            # data in memory (noise box, grid, plots, value range) uses a bounded sample of the
            # stream's first rows, the same on every process (load_stream)
            streamed = load_stream(d, ctx.cfg.train.seed, ctx.rank, ctx.world_size)
            self.data = PointData(streamed.sample, streamed.eval, None)
            train: object = streamed.train
        else:
            self.data = load_points(
                d.path, d.eval_path, self.cfg.num_train, self.cfg.num_eval, d.eval_fraction,
                ctx.cfg.train.seed, Columns.of(d),
            )  # fmt: skip
            train = self.data.train
        self.shape = self.data.train.shape
        self.grid, self.true_grid_logp = self._grid(ctx)
        self.check_data(ctx)
        return Datasets(train, self.data.eval)

    def check_data(self, ctx: RunContext) -> None:
        """Objective-specific checks of data against config (raise ConfigError)."""

    def _grid(self, ctx: RunContext) -> tuple[Grid | None, torch.Tensor | None]:
        two_d = self.shape == (2,)
        wanted = self.cfg.density_metrics
        if wanted is False or (wanted == "auto" and not two_d):
            return None, None
        if not two_d:
            raise ConfigError(
                [
                    f"objective.density_metrics=true needs 2-D points, but data.path="
                    f"{','.join(ctx.cfg.data.path)} gives examples of shape {self.shape}; "
                    "use density_metrics=auto or false"
                ]
            )
        held = [self.data.eval.x] if self.data.eval is not None else []
        points = torch.cat([self.data.train.x, *held])
        grid = Grid.around(points, self.cfg.grid_margin, self.cfg.grid_size)
        true = self.data.toy.log_prob(grid.points().double()) if self.data.toy else None
        return grid, true

    # ---- model
    def build_energy(self, ctx: RunContext) -> nn.Module:
        if not hasattr(self, "data"):  # offline export builds the module without the loop
            self.build_data(ctx)
        model_cls = registry.get("model", ctx.cfg.model.name)
        if not getattr(model_cls, "is_energy_model", False):
            energy_models = [
                n for n in registry.names("model")
                if getattr(registry.get("model", n), "is_energy_model", False)
            ]  # fmt: skip
            raise ConfigError(
                [
                    f"objective {self.cfg.name} needs an energy model, got model.name="
                    f"{ctx.cfg.model.name}; choices: {', '.join(energy_models)}"
                ]
            )
        try:
            return model_cls.build(ctx.cfg.model, input_shape=self.shape)
        except ValueError as err:
            raise ConfigError([str(err)]) from None

    def finish_module(self, module: EnergyModule, ctx: RunContext) -> EnergyModule:
        module.accumulation = accumulation_steps(ctx.cfg.train, ctx.world_size)
        module.set_grid(self.grid, self.true_grid_logp)
        return module

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return dict(examples)

    # ---- outputs
    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        return metrics

    def plot_negatives(self, module: EnergyModule) -> torch.Tensor | None:
        return None

    def plots(self, module: nn.Module, ctx: RunContext, step: int) -> None:
        if not ctx.is_main or not ctx.cfg.log.plots:
            return
        negatives = self.plot_negatives(module)
        if self.grid is not None:
            e = grid_energies(module.scorer, self.grid)
            plots.density_panels(
                ctx.plots_dir / f"energy_step{step:06d}.png", self.grid, e, self.data.train.x,
                negatives, self.true_grid_logp, f"{self.cfg.name} step {step}",
            )  # fmt: skip
            arrows = Grid(self.grid.lo, self.grid.hi, 20).points()
            x = arrows.to(next(module.scorer.parameters()).device).clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(module.scorer(x).sum(), x)
            plots.topographic_map(
                ctx.plots_dir / f"topographic_step{step:06d}.png", self.grid, e, -grad.cpu(),
                self.data.train.x, None, arrows, f"{self.cfg.name} step {step}: E and -grad E",
            )  # fmt: skip
        elif len(self.shape) == 3 and negatives is not None:
            plots.image_grid(
                ctx.plots_dir / f"samples_step{step:06d}.png", negatives,
                f"{self.cfg.name} Langevin samples, step {step}",
            )  # fmt: skip

    def export_extra(self, module: EnergyModule) -> dict:
        return {}

    def export(self, module: nn.Module, folder: str, ctx: RunContext) -> None:
        """A PyTorchModelHubMixin folder (config.json + model.safetensors of the weight-averaged
        energy) + energy_config.json; reload with `pipeline.ebm.export.load_energy(folder)` or
        `EnergyNetwork.from_pretrained(folder)`."""
        scorer = module.scorer
        d = ctx.cfg.data
        info = {
            "format": "pipeline-energy",
            "objective": self.cfg.name,
            "model": config_lib.to_dict(ctx.cfg.model),
            "input_shape": list(self.shape),
            "density": "p(x) = exp(-E(x) - log_z)",
            "weights": "exponential moving average" if module.ema is not None else "raw",
            "data": {
                "path": list(d.path), "image_column": d.image_column,
                "feature_columns": d.feature_columns, "image_size": d.image_size,
                "value_range": [float(self.data.train.x.min()), float(self.data.train.x.max())],
            },
        }  # fmt: skip
        if self.grid is not None:
            e = grid_energies(scorer, self.grid)
            log_z = torch.logsumexp(-e, 0) + math.log(self.grid.cell_area)
            info["log_z"] = float(log_z)
            info["grid"] = {"lo": self.grid.lo, "hi": self.grid.hi, "size": self.grid.size}
            info["log_z_outside_mass"] = outside_mass(scorer, self.grid)
        info.update(self.export_extra(module))
        save_energy(module.export_net(), folder, info)
        self._card = (info, last_eval(ctx))

    def model_card(self, folder: Any, cfg: Any, metrics: list[dict]) -> str | None:
        """README.md of the export: Hub metadata, what the energy model is (model_card_notes),
        how it was trained and the resolved config; not the text models' card."""
        from huggingface_hub import ModelCardData

        info, metrics = getattr(self, "_card", (None, {}))
        data = ModelCardData(
            library_name="pipeline", license=getattr(getattr(cfg, "card", None), "license", "apache-2.0"),
            tags=["energy-based-model", self.cfg.name, "pipeline"],
        )  # fmt: skip
        t = cfg.train
        body = [
            "---", data.to_yaml(), "---", "",
            f"# Energy-based model ({self.cfg.name})", "",
            self.model_card_notes(), "",
            "## Training", "",
            f"- objective `{self.cfg.name}`, model `{cfg.model.name}`, {t.max_steps} steps "
            f"of {t.micro_batch_size} examples per process, seed {t.seed}",
            f"- optimizer AdamW, lr {cfg.optim.lr}, schedule {cfg.optim.schedule}",
            "", "## Configuration", "", "```yaml",
            yaml_dump(config_lib.redact(config_lib.to_dict(cfg))).rstrip(), "```", "",
        ]  # fmt: skip
        return "\n".join(body)

    def model_card_notes(self) -> str:
        """What the export is: an energy network over inputs of the trained shape, how to
        score with it, and what it measured."""
        info, metrics = getattr(self, "_card", (None, {}))
        if info is None:
            return ""
        shape = " x ".join(str(v) for v in info["input_shape"])
        kind = "images (channels x height x width)" if len(info["input_shape"]) == 3 else "points"
        lines = [
            "## Energy-based model",
            "",
            f"This is **not** a text model: it is an energy network E(x) trained with "
            f"`{info['objective']}` over {kind} of shape **{shape}** "
            f"(data: `{', '.join(info['data']['path'])}`, values in "
            f"[{info['data']['value_range'][0]:.3g}, {info['data']['value_range'][1]:.3g}]). "
            "Low energy = likely: p(x) is proportional to exp(-E(x)).",
            "",
            "Score examples (one energy each, in order) or complete masked inputs:",
            "",
            "```",
            "python -m pipeline energy EXPORT data.path=DATASET --output energies.npy",
            "python -m pipeline infer EXPORT data.path=DATASET infer.mask=right-half --output-dir out",
            "```",
            "",
            "or in Python:",
            "",
            "```python",
            "from pipeline.ebm.export import EnergyNetwork",
            "net = EnergyNetwork.from_pretrained('EXPORT')  # or a Hub repo id",
            f"energies = net(x)  # x: float tensor (batch, {', '.join(map(str, info['input_shape']))})",
            "```",
        ]
        if "log_z" in info:
            lines += [
                "",
                f"Normalised on a grid: log p(x) = -E(x) - {info['log_z']:.4f} (midpoint "
                f"quadrature over {info['grid']['lo']} .. {info['grid']['hi']}; measured mass "
                f"outside that box: {info['log_z_outside_mass']:.2g}).",
            ]
        shown = {k: v for k, v in metrics.items()
                 if k in ("kl", "tv", "nll", "auroc_permuted", "auroc_uniform", "loss")}  # fmt: skip
        if shown:
            lines += ["", "Held-out evaluation at the end of training: " + ", ".join(
                f"{k} {v:.4g}" for k, v in shown.items()
            ) + "."]  # fmt: skip
        return "\n".join(lines)


def last_eval(ctx: RunContext) -> dict[str, float]:
    """The last evaluation row of RUN_DIR/metrics.jsonl ({} when there is none)."""
    from pipeline.engine.metrics import read_metrics

    rows = [r for r in read_metrics(ctx.run_dir) if r.get("split") == "eval"]
    return rows[-1] if rows else {}


def yaml_dump(obj: object) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
