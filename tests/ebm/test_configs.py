"""Bad EBM configs fail early with one clear message naming the key."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import registry
from pipeline.config import ConfigError, load_config
from pipeline.data.sources import DataError
from pipeline.train_config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
CD = ROOT / "configs/ebm/cd-2d.yaml"


def build(recipe: Path, overrides: list[str]):
    cfg = load_config(RunConfig, recipe, overrides)
    ctx = SimpleNamespace(
        cfg=cfg, world_size=1, rank=0, is_main=True, tokenizer=None, run_dir=Path(cfg.output_dir)
    )
    objective = registry.get("objective", cfg.objective.name)(cfg.objective)
    objective.build_data(ctx)
    return objective.build_module(ctx)


def test_every_shipped_ebm_recipe_builds():
    for recipe in sorted((ROOT / "configs/ebm").glob("*.yaml")):
        cfg = load_config(RunConfig, recipe)
        assert cfg.objective.name in ("cd", "nce", "dsm", "infonce"), recipe


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective.step_size=0", "objective.step_size must be > 0, got 0.0"),
        ("objective.step_size=-0.1", "objective.step_size must be > 0"),
        ("objective.reinit=1.5", "objective.reinit must be in [0, 1]"),
        ("objective.steps=0", "objective.steps must be >= 1"),
        ("objective.ema=1.0", "objective.ema must be in [0, 1)"),
        (
            "objective.noise_scale=0",  # with metropolis=true (the recipe's)
            "objective.metropolis needs noise_scale > 0",
        ),
    ],
)
def test_bad_sampler_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, CD, [override])
    assert message in str(err.value)


def test_buffer_smaller_than_batch():
    with pytest.raises(
        ConfigError, match=r"buffer_size=100 is smaller than train.micro_batch_size=256"
    ):
        build(CD, ["objective.buffer_size=100"])


def test_density_metrics_need_2d_data():
    with pytest.raises(
        ConfigError, match=r"density_metrics=true needs 2-D points.*shape \(1, 8, 8\)"
    ):
        build(
            CD,
            [
                "data.path=sklearn:digits",
                "model={name: conv-energy}",
                "objective.density_metrics=true",
            ],
        )
    # auto silently skips them, so the digits recipe has no nll/kl/tv
    module = build(CD, ["data.path=sklearn:digits", "model={name: conv-energy}"])
    assert module.grid is None


def test_energy_objective_needs_an_energy_model():
    with pytest.raises(
        ConfigError,
        match=r"needs an energy model, got model.name=bert; choices: conv-energy, mlp-energy",
    ):
        build(CD, ["model={name: bert}"])


def test_conv_energy_needs_images():
    with pytest.raises(ConfigError, match=r"conv-energy needs images"):
        build(CD, ["model={name: conv-energy}"])


def test_bad_point_files(tmp_path):
    with pytest.raises(DataError, match=r"unknown toy 'moons'; choices: 2spirals, 8gaussians"):
        build(CD, ["data.path=toy:moons"])
    bad = tmp_path / "p.csv"
    bad.write_text("x,y\n1,2\n3,oops\n")
    with pytest.raises(DataError, match=r"cannot read points from .*p.csv"):
        build(CD, [f"data.path={bad}"])
    with pytest.raises(DataError, match=r"is not a file"):
        build(CD, [f"data.path={tmp_path / 'missing.npy'}"])


def test_points_from_csv_and_npy(tmp_path):
    import numpy as np

    pts = np.random.default_rng(0).normal(size=(600, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", pts)
    (tmp_path / "b.csv").write_text("x,y\n" + "\n".join(f"{a},{b}" for a, b in pts[:200]))
    module = build(CD, [f"data.path={tmp_path / 'a.npy'}", f"data.eval_path={tmp_path / 'b.csv'}"])
    # the grid covers both files' points with the margin (25% of the span per side)
    lo, hi = pts.min(0), pts.max(0)
    span = (hi - lo).max()
    assert module.grid.lo[0] == pytest.approx(lo[0] - 0.25 * span, abs=1e-4)
    assert module.grid.hi[1] == pytest.approx(hi[1] + 0.25 * span, abs=1e-4)
    assert module.true_grid_logp is None  # no known density for files: nll only
