"""Packaged recipes: configs/ and slurm/ ship in the wheel, `python -m pipeline recipes` lists
them, and a recipe is found by name (`train mlm/tiny`) from any folder, with or without a
checkout (the wheel's copy is used then)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline import recipes
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.train_config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p.relative_to(ROOT).as_posix()
    for folder in ("configs", "slurm")
    for p in (ROOT / folder).rglob("*")
    if p.is_file()
)


def test_names_are_every_shipped_recipe():
    expected = sorted(
        Path(p).relative_to("configs").with_suffix("").as_posix()
        for p in SHIPPED
        if p.startswith("configs/") and p.endswith((".yaml", ".yml", ".json"))
    )
    assert recipes.names() == expected and "mlm/tiny" in expected


def test_recipes_command_lists_them(capsys):
    from pipeline.__main__ import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[: len(recipes.names())] == recipes.names()
    assert "train.sbatch" in out[-1] and str(ROOT / "slurm") in out[-1]
    assert main(["recipes", "mlm/", "--path"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [n for n in recipes.names() if n[:4] == "mlm/"]
    assert lines[0].split()[1] == str(ROOT / "configs" / "mlm" / "bert-base.yaml")


def test_a_recipe_is_found_by_name_from_any_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    by_path = to_dict(load_config(RunConfig, ROOT / "configs/mlm/tiny.yaml", ["train.seed=3"]))
    for name in ("mlm/tiny", "mlm/tiny.yaml", "configs/mlm/tiny.yaml"):
        assert to_dict(load_config(RunConfig, name, ["train.seed=3"])) == by_path
    assert by_path["train"]["max_steps"] == 300 and by_path["train"]["seed"] == 3
    (tmp_path / "mlm").mkdir()  # a file of the user's own wins over the shipped one
    (tmp_path / "mlm" / "tiny.yaml").write_text("train: {max_steps: 7}\n")
    assert load_config(RunConfig, "mlm/tiny.yaml").train.max_steps == 7
    with pytest.raises(ConfigError, match="'mlm/nope' does not exist"):
        load_config(RunConfig, "mlm/nope")


def test_slurm_submit_takes_a_recipe_name(monkeypatch, tmp_path):
    from pipeline.slurm import SubmitRequest, plan_submission

    monkeypatch.chdir(tmp_path)
    plan = plan_submission(SubmitRequest("mlm/tiny", ["train.max_steps=5"], gpus_per_node=0))
    assert plan.variables["CONFIG"] == str(ROOT / "configs" / "mlm" / "tiny.yaml")
    assert plan.variables["OVERRIDES"] == "train.max_steps=5"


def test_the_wheel_ships_configs_and_slurm_and_finds_them_without_a_checkout(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(ROOT), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.removeprefix("pipeline/_recipes/") for n in names
                  if n.startswith("pipeline/_recipes/")) == SHIPPED  # fmt: skip
    # installed without a checkout: the unpacked wheel alone on sys.path, run from elsewhere
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from pipeline import recipes; from pipeline.config import load_yaml; "
        "p = recipes.resolve('mlm/tiny'); print(p); print(load_yaml(p)['train']['max_steps']); "
        "print(recipes.slurm_dir())"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()  # fmt: skip
    assert out == [
        str(site / "pipeline/_recipes/configs/mlm/tiny.yaml"),
        "300",
        str(site / "pipeline/_recipes/slurm"),
    ]
