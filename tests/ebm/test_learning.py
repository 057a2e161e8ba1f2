"""CD, NCE and DSM learn a mixture of 8 Gaussians through the engine, measured exactly (quadrature),
and the export reloads as the same normalised density."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline import registry
from pipeline.config import load_config
from pipeline.ebm.export import load_energy
from pipeline.ebm.quadrature import grid_energies
from pipeline.engine.context import EngineContext
from pipeline.train_config import RunConfig
from pipeline.workflow import train_and_export

ROOT = Path(__file__).resolve().parents[2]
FAST = ["log.progress_bar=false", "log.trackers=[]", "train.checkpoint_every=100000"]


def untrained_kl(cfg) -> float:
    """kl of the freshly initialised model, evaluated exactly as the engine does."""
    accelerator = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True)
    ctx = EngineContext(cfg=cfg, run_dir=Path(cfg.output_dir), accelerator=accelerator)
    objective = registry.get("objective", cfg.objective.name)(cfg.objective)
    data = objective.build_data(ctx)
    torch.manual_seed(cfg.train.seed)
    module = objective.build_module(ctx).eval()
    batch = objective.collate(data.eval[list(range(len(data.eval)))], torch.Generator())
    with torch.no_grad():
        return float(module(**batch)[1]["kl"])


# CI-sized runs (~10-20 s of CPU each on an idle core): narrower nets than the recipes, short
# cosine schedules at a higher lr, a 100x100 quadrature grid, evaluation only at the end.
# Both pass a plateau near kl 0.4 (modes smeared together) before the modes separate; the
# recipes' full-size runs are what reach the issue's kl <= 0.05 (see BENCHMARKS.md).
SMALL = ["objective.grid_size=100", "train.eval_every=0"]
RUNS = {
    "nce-2d": ["model.hidden=[64, 64]", "train.max_steps=2000", "optim.lr=1e-2"],
    "dsm-2d": ["model.hidden=[64, 64]", "train.max_steps=1500", "optim.lr=1e-2"],
    "cd-2d": ["model.hidden=[128, 128]", "train.max_steps=2500", "optim.lr=1e-2",
              "objective.steps=10", "objective.buffer_size=2000"],
}  # fmt: skip


@pytest.mark.parametrize("recipe, bound", [("nce-2d", 0.1), ("cd-2d", 0.25), ("dsm-2d", 0.15)])
def test_learns_8_gaussians(tmp_path, recipe, bound):
    cfg = load_config(
        RunConfig, ROOT / f"configs/ebm/{recipe}.yaml",
        [*RUNS[recipe], *SMALL, f"output_dir={tmp_path}", *FAST],
    )  # fmt: skip
    before = untrained_kl(cfg)
    final = train_and_export(cfg)
    assert before > 1.0, before
    assert final["kl"] < bound, final
    assert 0 <= final["tv"] < 0.5
    if recipe == "nce-2d":  # self-normalised: the learned constant is the quadrature log Z
        assert abs(final["log_z_gap"]) < 0.15, final
    assert list((tmp_path / "plots").glob("energy_step*.png"))
    assert list((tmp_path / "plots").glob("topographic_step*.png"))  # contours + -grad E

    # the export is the same density: reloaded energy + its log_z integrate to 1
    net, info = load_energy(str(tmp_path / "export"))
    assert info["input_shape"] == [2] and info["weights"] == "exponential moving average"
    objective = registry.get("objective", cfg.objective.name)(cfg.objective)
    objective.build_data(SimpleNamespace(cfg=cfg))
    e = grid_energies(net, objective.grid)
    mass = torch.exp(-e - info["log_z"]).sum() * objective.grid.cell_area
    assert abs(float(mass) - 1) < 1e-4
    assert abs(info["log_z"] - final["log_z_quadrature"]) < 1e-3


def test_cd_shift_plot_shows_chains_going_downhill(tmp_path):
    """The shift of CD's contrastive samples: chains started from noise (init=noise) end lower
    on the energy that moved them, recorded per plot as PNG + JSON."""
    cfg = load_config(
        RunConfig, ROOT / "configs/ebm/cd-2d.yaml",
        ["model.hidden=[64, 64]", "train.max_steps=200", "optim.lr=1e-2", "objective.init=noise",
         "objective.steps=10", *SMALL, f"output_dir={tmp_path}", *FAST],
    )  # fmt: skip
    train_and_export(cfg)
    (png,) = (tmp_path / "plots").glob("cd_shift_step*.png")
    shift = json.loads(png.with_suffix(".json").read_text())
    assert shift["step"] == 200 and shift["chains"] == 256 and shift["langevin_steps"] == 10
    # noise starts sit high on an energy that learnt the modes; 10 steps carry them well down
    assert shift["mean_energy_end"] < shift["mean_energy_start"] - 1.0, shift
    assert shift["mean_distance"] > 0.1, shift
