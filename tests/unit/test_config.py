from pathlib import Path

import pytest

from pipeline import config as config_lib
from pipeline.config import ConfigError, load_config
from pipeline.train_config import RunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(
        RunConfig,
        ROOT / "configs/mlm/tiny.yaml",
        ["optim.lr=2e-3", "train.max_steps=7", "objective.mask_prob=0.3", "data.path=a.txt"],
    )
    assert cfg.optim.lr == 2e-3 and cfg.train.max_steps == 7
    assert cfg.objective.mask_prob == 0.3
    assert cfg.objective.mask_replace == 0.8  # untouched keys keep the recipe's value
    assert cfg.data.path == ["a.txt"]  # one value where a list is expected


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(
            RunConfig,
            ROOT / "configs/mlm/tiny.yaml",
            ["optim.lr=-1", "train.bogus=1", "data.block_size=abc", "model.preset=huge"],
        )
    text = str(err.value)
    assert "4 config errors" in text
    assert "unknown key train.bogus; valid keys here:" in text and "max_steps" in text
    assert "data.block_size must be an integer, got 'abc'" in text
    assert "optim.lr must be positive" in text
    assert "model.preset 'huge' unknown" in text


def test_unknown_objective_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown objective 'nope'; choices: .*mlm"):
        load_config(RunConfig, None, ["objective.name=nope"])


def test_malformed_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_config(RunConfig, bad)


def test_help_lists_keys_with_docstrings():
    lines = config_lib.describe(RunConfig)
    by_key = {line.strip().split(" ")[0]: line for line in lines}
    assert "Peak learning rate" in by_key["optim.lr"]
    assert "objective.mask_prob" in by_key
    assert all(": " in line and not line.rstrip().endswith(":") for line in lines), [
        line for line in lines if line.rstrip().endswith(":")
    ]


def test_resolved_config_round_trips_and_redacts(tmp_path):
    cfg = load_config(RunConfig, ROOT / "configs/mlm/tiny.yaml")
    config_lib.dump_yaml(cfg, tmp_path / "config.yaml")
    again = load_config(RunConfig, tmp_path / "config.yaml")
    assert config_lib.to_dict(again) == config_lib.to_dict(cfg)
    assert config_lib.redact({"hf_token": "abc", "tokenizer": {"x": 1}, "max_tokens": 5}) == {
        "hf_token": "<redacted>",
        "tokenizer": {"x": 1},
        "max_tokens": 5,
    }


def test_on_off_choices_survive_yaml_booleans(tmp_path):
    # YAML 1.1 reads a bare on/off as true/false; a choice of "on"|"off" still gets its word
    cfg = load_config(RunConfig, None, ["optim.fused=off"])
    assert cfg.optim.fused == "off"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  fused: on\n")
    assert load_config(RunConfig, recipe).optim.fused == "on"
