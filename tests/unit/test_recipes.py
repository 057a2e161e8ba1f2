"""Packaged recipes: configs/ and slurm/ ship in the wheel, `python -m pipeline recipes` lists
them, and a recipe is found by name (`train mlm/tiny`) from any folder, with or without a
checkout (the wheel's copy is used then)."""

from __future__ import annotations

import json
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


def test_the_wheel_ships_configs_and_slurm_and_finds_them_without_a_checkout(wheel, tmp_path):
    built, site = wheel
    names = zipfile.ZipFile(built).namelist()
    assert sorted(n.removeprefix("pipeline/_recipes/") for n in names
                  if n.startswith("pipeline/_recipes/")) == SHIPPED  # fmt: skip
    # installed without a checkout: the unpacked wheel alone on sys.path, run from elsewhere
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


FAKE_SBATCH = """#!{python}
import json, os, sys
json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}},
          open({record!r}, "w"))
print("4242")
"""


@pytest.mark.parametrize("output_dir", [None, "out/run"])
def test_slurm_submit_without_a_checkout_runs_the_job_where_it_was_submitted(
    wheel, tmp_path, output_dir
):
    """Installed from the wheel, submitted from a folder of the user's: sbatch runs there, the
    log, the job's working folder and its run folder (default runs/NAME-JOBID, or the
    --output-dir) are there, and the templates and recipe are the installed copies; nothing
    points into the package folder but those."""
    _, site = wheel
    shipped = site / "pipeline" / "_recipes"
    user, bin_dir = tmp_path / "user", tmp_path / "bin"
    user.mkdir()
    bin_dir.mkdir()
    record = tmp_path / "sbatch-call.json"
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, record=str(record)))
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [sys.executable, "-m", "pipeline", "slurm", "submit", "mlm/tiny", "train.seed=3",
            "--gpus-per-node", "0"] + (["--output-dir", output_dir] if output_dir else [])  # fmt: skip
    proc = subprocess.run(args, cwd=user, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run = user / (output_dir or "runs/pipeline-cpu-4242")
    assert proc.stdout.splitlines() == [
        f"submitted job 4242 ({shipped}/slurm/train-cpu.sbatch, 1 node)",
        f"log: {user}/slurm-pipeline-cpu-4242.out",
        f"run folder: {run}",
    ]
    call = json.loads(record.read_text())
    job_env = call["env"]
    assert call["cwd"] == str(user)  # so SLURM_SUBMIT_DIR is the user's folder too
    assert call["argv"][-1] == str(shipped / "slurm" / "train-cpu.sbatch")
    assert f"--output={user}/slurm-%x-%j.out" in call["argv"]
    assert job_env["PIPELINE_ROOT"] == str(shipped)
    assert job_env["PIPELINE_WORKDIR"] == str(user)
    assert job_env["CONFIG"] == str(shipped / "configs" / "mlm" / "tiny.yaml")
    assert job_env.get("OUTPUT_DIR") == output_dir
    # what the template's shell then does with that environment: cd to the user's folder, and
    # the run folder it hands to `pipeline train` is the one submit reported
    show = 'pipeline_init >/dev/null && pwd && realpath -m "$OUTPUT_DIR" && echo "$TRAIN_ARGS"'
    job_env.update(SLURM_JOB_ID="4242", SLURM_JOB_NAME="pipeline-cpu", SLURM_SUBMIT_DIR=user)
    shell = subprocess.run(
        ["bash", "-c", f"source {shipped}/slurm/common.sh && {show}"],
        cwd=tmp_path, env={k: str(v) for k, v in job_env.items()}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    workdir, run_dir, train_args = shell.stdout.splitlines()
    assert (workdir, run_dir) == (str(user), str(run))
    assert train_args.startswith(f"-m pipeline train {shipped}/configs/mlm/tiny.yaml train.seed=3")
    assert not (shipped / "runs").exists() and not list(site.glob("slurm-*"))


def test_a_deepspeed_json_is_found_by_name_from_any_folder(monkeypatch, tmp_path):
    from pipeline.engine.deepspeed import config_path

    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("deepspeed/zero3", "configs/deepspeed/zero3.json"):
        cfg = load_config(RunConfig, "mlm/tiny", ["engine.strategy=deepspeed",
                                                  f"engine.deepspeed_config={name}"])  # fmt: skip
        assert config_path(cfg) == str(ROOT / "configs" / "deepspeed" / "zero3.json")


def test_slurm_deepspeed_without_a_checkout_takes_the_installed_json(wheel, tmp_path):
    """A pip install has no configs/deepspeed/ in the user's folder: the JSON the job gets, named
    or the template's default, is the installed one."""
    _, site = wheel
    shipped = site / "pipeline" / "_recipes"
    env = {**os.environ, "PYTHONPATH": str(site)}
    base = [sys.executable, "-m", "pipeline", "slurm", "submit", "mlm/tiny",
            "engine.strategy=deepspeed", "--gpus-per-node", "1", "--print"]  # fmt: skip
    named = subprocess.run([*base, "engine.deepspeed_config=deepspeed/zero3"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert f"DEEPSPEED_CONFIG={shipped}/configs/deepspeed/zero3.json \\" in named.stdout
    default = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert default.returncode == 0, default.stderr
    assert "DEEPSPEED_CONFIG=" not in default.stdout.split("sbatch ")[0]
    assert "DEEPSPEED_CONFIG:-$PIPELINE_ROOT/configs/deepspeed/zero2.json}" in default.stdout
    assert f"PIPELINE_ROOT={shipped} \\" in default.stdout
    assert (shipped / "configs" / "deepspeed" / "zero2.json").is_file()
