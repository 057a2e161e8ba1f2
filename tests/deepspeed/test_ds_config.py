"""The DeepSpeed JSON: "auto" filled from the run config, contradictions and impossible
combinations refused with one clear error before any data, model or process group exists."""

from __future__ import annotations

import json
import time

import pytest

from pipeline import config as config_lib
from pipeline.engine.deepspeed import DeepSpeedConfigError, load_json, resolve
from pipeline.train_config import RunConfig
from tests.conftest import run_cli
from tests.deepspeed.conftest import DS_CONFIGS, ROOT


def run_config(*overrides: str):
    return config_lib.load_config(RunConfig, ROOT / "configs/mlm/tiny.yaml", list(overrides))


def zero(stage: int, **extra) -> dict:
    return {"zero_optimization": {"stage": stage, **extra}}


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero3-offload"])
def test_shipped_configs_fill_every_auto(name):
    cfg = run_config(
        "train.micro_batch_size=4", "train.global_batch_size=32", "optim.max_grad_norm=0.5"
    )
    ds = resolve(load_json(DS_CONFIGS / f"{name}.json"), cfg, accumulation=2, world=4)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # CPU: fp32
    assert "optimizer" not in ds and "scheduler" not in ds  # the engine's own AdamW + schedule
    left = [k for k, v in ds["zero_optimization"].items() if v == "auto"]
    # only the hidden-size buckets wait for the model (filled just before prepare)
    assert set(left) <= {"reduce_bucket_size", "stage3_prefetch_bucket_size",
                         "stage3_param_persistence_threshold"}  # fmt: skip


def test_bf16_follows_engine_mixed_precision():
    ds = resolve(
        {"bf16": {"enabled": "auto"}, **zero(2)}, run_config("engine.mixed_precision=bf16"), 1, 2
    )
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


@pytest.mark.parametrize(
    "raw, overrides, message",
    [
        ({**zero(2), "fp16": {"enabled": True}, "bf16": {"enabled": True}}, ["engine.mixed_precision=bf16"],
         "fp16 and bf16 cannot both be enabled"),
        ({**zero(1, offload_param={"device": "cpu"})}, [], "offload_param needs ZeRO stage 3"),
        ({**zero(2, offload_param={"device": "cpu"})}, [], "offload_param needs ZeRO stage 3"),
        (zero(0), [], "use engine.strategy=ddp"),
        (zero(4), [], "stage must be 1, 2 or 3"),
        ({"train_batch_size": 16}, [], '"zero_optimization" object'),
        ({**zero(2), "train_micro_batch_size_per_gpu": 8}, ["train.micro_batch_size=4"],
         "disagrees with train.micro_batch_size=4"),
        ({**zero(2), "gradient_clipping": 5.0}, [], "disagrees with optim.max_grad_norm"),
        ({**zero(2), "bf16": {"enabled": True}}, ["engine.mixed_precision=auto"],
         "bf16.enabled=True disagrees with engine.mixed_precision"),
        ({**zero(2), "optimizer": {"type": "Lamb", "params": {}}}, [], "trains with AdamW"),
        ({**zero(2), "optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, [],
         "optimizer.params.lr=0.1 disagrees with optim.lr"),
        ({**zero(2), "scheduler": {"type": "WarmupCosineLR"}}, ["optim.schedule=linear"], "is WarmupDecayLR"),
        ({**zero(3, offload_optimizer={"device": "nvme"})}, [], "needs an nvme_path"),
        ({**zero(2), "something": {"size": "auto"}}, [], 'fills "auto" at something.size'),
    ],
)  # fmt: skip
def test_impossible_or_contradictory_configs_are_refused(raw, overrides, message):
    cfg = run_config(*overrides)
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve(raw, cfg, accumulation=1, world=2)
    assert message in str(err.value)


def test_every_problem_is_reported_at_once():
    raw = {**zero(1, offload_param={"device": "cpu"}), "fp16": {"enabled": True},
           "bf16": {"enabled": True}, "gradient_clipping": 9.0}  # fmt: skip
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve(raw, run_config("engine.mixed_precision=bf16"), 1, 2)
    # bf16.enabled=True agrees with engine.mixed_precision=bf16: exactly these four
    lines = str(err.value).splitlines()
    assert "(4 problems)" in lines[0]
    assert lines[1:] == [
        "  - gradient_clipping=9.0 disagrees with optim.max_grad_norm=1.0",
        "  - fp16.enabled=True disagrees with engine.mixed_precision (bf16 -> bf16)=False",
        "  - fp16 and bf16 cannot both be enabled",
        "  - zero_optimization.offload_param needs ZeRO stage 3 (parameters are only "
        "partitioned at stage 3), this config has stage 1",
    ]


def test_invalid_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(DeepSpeedConfigError, match=r"not valid JSON: .* line 1, column 35"):
        load_json(bad)
    with pytest.raises(DeepSpeedConfigError, match="does not exist"):
        load_json(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"zero_optimization": {"stage": 2,', "is not valid JSON"),
        (json.dumps({"zero_optimization": {"stage": 1, "offload_param": {"device": "cpu"}}}),
         "offload_param needs ZeRO stage 3"),
    ],
)  # fmt: skip
def test_cli_refuses_before_launch(tmp_path, content, message):
    """One line, exit 2, nothing tokenized or built (and no process group to hang)."""
    bad = tmp_path / "ds.json"
    bad.write_text(content)
    run = tmp_path / "run"
    start = time.time()
    proc = run_cli(
        ["train", "configs/mlm/tiny.yaml", "engine.strategy=deepspeed",
         f"engine.deepspeed_config={bad}", "--output-dir", str(run)],
        check=False, DS_ACCELERATOR="cpu",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "tokenizer").exists() and not (run / "metrics.jsonl").exists()
    assert time.time() - start < 60
