"""The switches of the scale path, executed: torch.compile, bf16 autocast on CPU, DataLoader
workers, the accelerate config honoured or refused, InfoNCE and CD under ZeRO-2 at 2 processes,
and DDP resumes at another process count (2 -> 1, 1 -> 2)."""

from __future__ import annotations

import json

import pytest

from pipeline import config as config_lib
from pipeline.engine import setup
from pipeline.engine.launch import SetupError
from pipeline.train_config import RunConfig
from tests.conftest import TINY, metrics, run_cli
from tests.deepspeed.conftest import ds

QUICK = ["train", "configs/mlm/tiny.yaml", *TINY, "train.max_steps=6", "train.eval_every=0",
         "train.export=false"]  # fmt: skip


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in metrics(run_dir)]


def test_compile_matches_eager(tmp_path):
    run_cli([*QUICK, "--output-dir", str(tmp_path / "eager")])
    run_cli(
        [*QUICK, "engine.compile=true", "--output-dir", str(tmp_path / "compiled")], timeout=900
    )
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(compiled) == 6
    # the step ran as compiled graphs (a silent fallback to eager would also match the losses)
    graphs = json.loads((tmp_path / "compiled" / "run_info.json").read_text())["compiled_graphs"]
    assert graphs >= 1, graphs
    assert "compiled_graphs" not in json.loads((tmp_path / "eager" / "run_info.json").read_text())
    # inductor's fused kernels round differently; the masks (and so the task) are the same
    assert compiled == pytest.approx(eager, rel=2e-3)


def test_bf16_autocast_on_cpu_trains_like_fp32(tmp_path):
    run_cli([*QUICK, "--output-dir", str(tmp_path / "fp32")])
    run_cli([*QUICK, "engine.mixed_precision=bf16", "--output-dir", str(tmp_path / "bf16")])
    info = json.loads((tmp_path / "bf16" / "run_info.json").read_text())
    assert info["mixed_precision"] == "bf16"
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert bf16 != fp32  # the matmuls really ran in bf16
    assert bf16 == pytest.approx(fp32, abs=0.05)  # bf16's 8 bits of mantissa, not a broken run


def test_dataloader_workers_give_the_same_batches(tmp_path):
    run_cli([*QUICK, "--output-dir", str(tmp_path / "inline")])
    run_cli([*QUICK, "data.num_workers=2", "--output-dir", str(tmp_path / "workers")])
    assert losses(tmp_path / "workers") == losses(tmp_path / "inline")


# --------------------------------------------------------------------------- accelerate config


def cfg(*overrides: str):
    return config_lib.load_config(RunConfig, None, list(overrides))


def test_fsdp_config_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SetupError, match=r"FSDP config \(ACCELERATE_USE_FSDP=true\).*zero3.json"):
        setup.honour_launcher(cfg())
    proc = run_cli([*QUICK, "--output-dir", str(tmp_path)], check=False, ACCELERATE_USE_FSDP="true")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: launched"
    )


def test_launcher_mixed_precision_is_taken_or_must_agree(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    auto = cfg()
    setup.honour_launcher(auto)
    assert auto.engine.mixed_precision == "bf16"
    with pytest.raises(
        SetupError, match="asks mixed_precision=bf16 but the recipe has engine.mixed_precision=fp16"
    ):
        setup.honour_launcher(cfg("engine.mixed_precision=fp16"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate writes by default
    explicit = cfg("engine.mixed_precision=bf16")
    setup.honour_launcher(explicit)
    assert explicit.engine.mixed_precision == "bf16"


def test_a_dynamo_setting_compiles_once(monkeypatch, tmp_path):
    from pipeline.engine.strategy import DDPStrategy

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    c = cfg(f"output_dir={tmp_path}")
    setup.honour_launcher(c)
    assert c.engine.compile is True  # the engine compiles ...
    accelerator = setup.make_accelerator(c, tmp_path, 1, DDPStrategy(c, 1))
    assert str(accelerator.state.dynamo_plugin.backend).endswith(
        "NO"
    )  # ... and Accelerate does not


# --------------------------------------------------------------------------- objectives on ZeRO-2


def zero2_at_two(recipe: str, out, *overrides: str) -> None:
    import subprocess
    import sys

    from tests.conftest import _free_port
    from tests.deepspeed.conftest import ROOT, env

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "deepspeed.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "pipeline", "train", recipe,
           "train.eval_every=0", "train.checkpoint_every=100", "log.progress_bar=false",
           "log.plots=false", *ds("zero2"), *overrides, "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert (info["distributed_type"], info["num_processes"]) == ("DEEPSPEED", 2)


def test_infonce_under_zero2_at_two_processes(tmp_path):
    zero2_at_two("configs/ebm/infonce-tiny.yaml", tmp_path / "run", *TINY[:4],
                 "model.dropout=0.1", "train.max_steps=4", "train.micro_batch_size=8", "train.log_every=1")  # fmt: skip
    rows = metrics(tmp_path / "run")
    assert len(rows) == 4 and rows[-1]["negatives"] == 2 * 8 - 1  # keys from both processes
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_cd_under_zero2_at_two_processes(tmp_path):
    zero2_at_two("configs/ebm/cd-2d.yaml", tmp_path / "run", "train.max_steps=30",
                 "train.log_every=10", "objective.num_train=2048", "objective.num_eval=512",
                 "objective.grid_size=32", "model.hidden=[32, 32]")  # fmt: skip
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- elastic DDP


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_ddp_resumes_at_another_process_count(tmp_path, before, after):
    """Weights, step, LR schedule and data position carry over (engine/elastic.py); with a fixed
    global batch step s trains on the same examples, so the resumed losses continue the curve."""
    args = [*QUICK, "train.max_steps=8", "train.checkpoint_every=4", "train.global_batch_size=16",
            "optim.warmup_steps=1", "optim.lr=1e-2"]  # fmt: skip
    launcher = {1: {"launcher": "python"}, 2: {"launcher": "torchrun", "nproc": 2}}
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    run_cli([*args, "--output-dir", str(straight)], **launcher[before])
    run_cli([*args, "train.max_steps=4", "--output-dir", str(moved)], **launcher[before])
    resumed = run_cli([*args, "--output-dir", str(moved)], **launcher[after])
    assert "optimizer moments start afresh" in resumed.stderr
    a, b = {r["step"]: r for r in metrics(straight)}, {r["step"]: r for r in metrics(moved)}
    assert sorted(b) == list(range(1, 9))
    assert b[5]["lr"] == a[5]["lr"]  # the schedule continued
    # step 5's loss is the loaded (step-4) weights' on the same examples (other masks on the
    # micro batches that moved process): it continues the curve, far from a fresh model's
    learned = a[1]["loss"] - a[5]["loss"]
    assert learned > 0.3 and abs(b[5]["loss"] - a[5]["loss"]) < 0.5 * learned, (a, b)
    info = json.loads((moved / "run_info.json").read_text())
    assert info["num_processes"] == after
