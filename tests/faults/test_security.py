"""Security: weights and exports only as safetensors; every torch.load with weights_only=True;
a malicious pickle in a checkpoint is refused without running; trust_remote_code never on;
secrets redacted from config dumps and tracker configs."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import config as config_lib
from pipeline.engine import checkpoint
from pipeline.train_config import RunConfig
from tests.faults.conftest import RECIPE, ROOT, run_main, train_args

SOURCES = sorted((ROOT / "pipeline").rglob("*.py"))


def calls(name: str):
    """(file, line, ast.Call) of every call to `<something>.name(...)` or `name(...)`."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    yield path.relative_to(ROOT), node.lineno, node


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only():
    found = [(p, n, c) for p, n, c in calls("load") if ast.unparse(c.func) == "torch.load"]
    assert found, "no torch.load found: the scan is broken"
    for path, line, call in found:
        value = keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{line}"


def test_no_other_unsafe_deserialization():
    for name in ("loads", "load", "Unpickler"):
        for path, line, call in calls(name):
            func = ast.unparse(call.func)
            assert not func.startswith(("pickle.", "dill.", "cloudpickle.", "joblib.")), (
                f"{path}:{line}"
            )
            if func in ("np.load", "numpy.load"):  # allow_pickle defaults to False
                value = keyword(call, "allow_pickle")
                assert value is None or (isinstance(value, ast.Constant) and not value.value), (
                    f"{path}:{line}"
                )


def test_trust_remote_code_never_on():
    passed = [(p, n, keyword(c, "trust_remote_code")) for name in ("from_pretrained", "load_dataset", "pipeline") for p, n, c in calls(name)]  # fmt: skip
    for path, line, value in passed:
        assert value is None or (isinstance(value, ast.Constant) and value.value is False), (
            f"{path}:{line} passes trust_remote_code={ast.unparse(value)}"
        )
    for path in [*SOURCES, *(ROOT / "configs").rglob("*.yaml")]:
        text = path.read_text().lower().replace(" ", "")
        for on in ("trust_remote_code=true", "trust_remote_code:true"):
            assert on not in text, f"{path} turns trust_remote_code on"


def test_weights_and_export_are_safetensors(trained_run):
    export = trained_run / "export"
    weights = sorted(p.name for p in export.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt"})  # fmt: skip
    assert weights == ["model.safetensors"]
    for folder in (trained_run / "checkpoints").iterdir():
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names and "pytorch_model.bin" not in names


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["rank-0.pt", "optimizer.bin", "random_states_0.pkl"])
def test_malicious_pickle_in_checkpoint_is_refused(capsys, run_copy, tmp_path, target):
    """An attacker who can write the run folder (so the manifest is re-written to match)
    plants a pickle that would run a command: resume refuses it and the command never runs."""
    marker = tmp_path / "pwned"
    folder = run_copy / "checkpoints/step-00000004"
    torch.save({"state": Payload(marker)}, folder / target)
    checkpoint.write_manifest(folder)  # passes the integrity check: only the loader can refuse
    assert checkpoint.verify(folder) is None

    # the payload is live: an unsafe load of a copy would run it
    live = tmp_path / "live-marker"
    torch.save({"state": Payload(live)}, tmp_path / "copy.pt")
    torch.load(tmp_path / "copy.pt", weights_only=False)
    assert live.exists()

    code, line = run_main(capsys, train_args(run_copy, "train.max_steps=6"))
    assert code == 2
    where = folder if target == "optimizer.bin" else folder / target
    assert line.startswith(
        f"error: {where}: not a plain tensor file (a pickle that could run code)"
    )
    assert line.endswith(
        "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    )
    assert not marker.exists()


def test_secrets_redacted_in_config_dump_and_tracker_config(tmp_path):
    """The schema has no secret fields (tokens come from the environment, model.overrides
    accepts only BertConfig fields), so secrets are planted in the resolved tree directly."""
    cfg = config_lib.to_dict(config_lib.load_config(RunConfig, RECIPE, []))
    cfg["log"]["wandb_api_key"] = "SECRET1"
    cfg["train"]["hub"] = {"hf_token": "hf_SECRET2", "repo": "me/model"}
    resolved = config_lib.redact(cfg)  # what train.py dumps and gives the trackers
    assert resolved["log"]["wandb_api_key"] == "<redacted>"
    assert resolved["train"]["hub"] == {"hf_token": "<redacted>", "repo": "me/model"}
    tracker = config_lib.flatten(resolved)  # what init_trackers receives
    assert "SECRET" not in repr(tracker) and tracker["train.hub.hf_token"] == "<redacted>"
    config_lib.dump_yaml(cfg, tmp_path / "config.yaml")  # redacts on its own too
    text = (tmp_path / "config.yaml").read_text()
    assert "SECRET" not in text and yaml.safe_load(text)["train"]["hub"]["repo"] == "me/model"


def test_redact_names():
    data = {
        "token": "a",
        "hf_token": "b",
        "HF_TOKEN": "c",
        "api_key": "d",
        "apikey": "e",
        "db_password": "f",
        "client_secret": "g",
        "auth": "h",
        "nested": [{"push_token": "i"}],
        "tokenizer": "bert-base-uncased",
        "max_tokens": 1000,
        "tokens_per_s": 5.0,
        "empty_token": None,
    }
    out = config_lib.redact(data)
    assert [k for k, v in out.items() if v == "<redacted>"] == list(data)[:8]
    assert out["nested"] == [{"push_token": "<redacted>"}]
    assert out["tokenizer"] == "bert-base-uncased" and out["max_tokens"] == 1000
    assert out["empty_token"] is None  # nothing to hide, and None stays None


def test_secret_not_in_error_lines(capsys, tmp_path):
    """A wrong-typed secret-looking value in an override is not echoed back."""
    code, line = run_main(capsys, train_args(tmp_path / "run", "train.hub_token=hf_SECRET3"))
    assert code == 2 and "unknown key train.hub_token" in line and "SECRET" not in line
