"""Shared runs of the DeepSpeed tests: each launch happens once per session, lazily, and several
tests read the same run folder (2 CPU cores: every launch costs ~20-40 s).

Every run: the tiny BERT of tests/conftest.py (dropout 0), 2 processes (gloo), 6 optimizer steps of a 16-example global
batch (micro 4 x accumulation 2 x 2 processes), clipping at 1.0, a checkpoint at step 3.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, _free_port
from tests.conftest import env as base_env
from tests.conftest import metrics as metric_rows

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
DS_CONFIGS = ROOT / "configs" / "deepspeed"
STEPS = 6
BASE = [
    str(ROOT / "configs" / "mlm" / "tiny.yaml"),
    *TINY,
    f"train.max_steps={STEPS}",
    "train.micro_batch_size=4",
    "train.global_batch_size=16",
    "train.checkpoint_every=3",
    "train.keep_checkpoints=5",
    "train.export=false",
    "optim.lr=1e-2",  # high for a tiny model: the loss falls clearly within 6 steps
    "optim.warmup_steps=1",
    "optim.max_grad_norm=1.0",
    "data.max_eval_examples=32",
]


def env(**extra: str) -> dict[str, str]:
    """The tests' environment on DeepSpeed's CPU accelerator, without inherited ACCELERATE_* and
    PIPELINE_* variables (an outer launch or fault must not leak into these runs)."""
    inherited = {
        k: v for k, v in base_env().items() if not k.startswith(("ACCELERATE_", "PIPELINE_"))
    }
    return {**inherited, "DS_ACCELERATOR": "cpu", **extra}


def launch(
    run_dir: Path,
    overrides: list[str],
    nproc: int = 2,
    accelerate_config: str = "deepspeed.yaml",
    extra_env: dict[str, str] | None = None,
    timeout: int = 400,
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIGS / accelerate_config),
        "--num_processes", str(nproc), "--main_process_port", str(_free_port()),
        "-m", "pipeline", "train", *BASE, *overrides, "--output-dir", str(run_dir),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env(**(extra_env or {})), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    (run_dir.parent / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    return proc


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"


def metrics(run_dir: Path, split: str = "train") -> dict[int, dict]:
    return {m["step"]: m for m in metric_rows(run_dir, split)}


def losses(run_dir: Path) -> dict[int, float]:
    return {s: m["loss"] for s, m in metrics(run_dir).items()}


def run_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_info.json").read_text())


def ds(stage: str) -> list[str]:
    return ["engine.strategy=deepspeed", f"engine.deepspeed_config={DS_CONFIGS / stage}.json"]


def after_step(run_dir: Path, dest: Path, step: int) -> Path:
    """A copy of a finished run as a kill right after checkpoint `step` would have left it."""
    shutil.copytree(run_dir, dest)
    for ckpt in (dest / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    kept = [x for x in (dest / "metrics.jsonl").read_text().splitlines() if x]
    kept = [x for x in kept if json.loads(x)["step"] <= step and json.loads(x)["split"] == "train"]
    (dest / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    shutil.rmtree(dest / "export", ignore_errors=True)
    return dest


class Runs:
    """Each named run is launched at most once per session."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self.done:
            self.done[name] = getattr(self, "_" + name.replace("-", "_"))(self.root / name)
        return self.done[name]

    def _ddp(self, d: Path) -> Path:
        check_ok(launch(d, ["engine.strategy=ddp"], accelerate_config="ddp-cpu.yaml"))
        return d

    def _zero1(self, d: Path) -> Path:
        check_ok(launch(d, [*ds("zero1"), "train.export=true"]))
        return d

    def _zero2(self, d: Path) -> Path:
        check_ok(launch(d, [*ds("zero2"), "train.export=true"]))
        return d

    def _init(self, d: Path) -> Path:
        """The DDP run's initial weights as a Hugging Face folder, built as the engine builds
        them (seed, then the family's builder). ZeRO-3 builds its model partitioned (zero.Init),
        which initialises module by module in another RNG order; from these weights, loaded
        partitioned, it trains on exactly DDP's model."""
        import torch

        from pipeline import registry
        from pipeline.config import load_config
        from pipeline.data.tokenizer import load_tokenizer
        from pipeline.train_config import RunConfig

        ddp = self.get("ddp")
        cfg = load_config(RunConfig, BASE[0], BASE[1:])
        tok = load_tokenizer(str(ddp / "tokenizer"))
        torch.manual_seed(cfg.train.seed)
        family = registry.get("model", cfg.model.name)
        family.build_masked_lm(cfg.model, len(tok), tok.pad_token_id).save_pretrained(d)
        return d

    def zero3(self, stage: str = "zero3") -> list[str]:
        init = self.get("init")
        return [*ds(stage), f"model.from_pretrained={init}",
                f"tokenizer.name_or_path={self.get('ddp') / 'tokenizer'}"]  # fmt: skip

    def _zero3(self, d: Path) -> Path:
        check_ok(launch(d, [*self.zero3(), "train.export=true"]))
        return d

    def _zero3_offload(self, d: Path) -> Path:
        check_ok(launch(d, self.zero3("zero3-offload")))
        return d

    def _zero3_killed(self, d: Path) -> Path:
        """Killed (SIGKILL, every process) right after checkpoint 3 is complete."""
        proc = launch(d, self.zero3(), extra_env={"PIPELINE_FAULT": "after_checkpoint@3"})
        assert proc.returncode != 0, "the fault injection did not kill the run"
        return d

    def _zero3_resumed(self, d: Path) -> Path:
        shutil.copytree(self.get("zero3-killed"), d)
        check_ok(launch(d, self.zero3()))
        return d

    def _zero1_resumed(self, d: Path) -> Path:
        after_step(self.get("zero1"), d, 3)
        check_ok(launch(d, ds("zero1")))
        return d

    def _zero2_resumed(self, d: Path) -> Path:
        after_step(self.get("zero2"), d, 3)
        check_ok(launch(d, ds("zero2")))
        return d

    def _zero3_one_process(self, d: Path) -> Path:
        """The 2-process ZeRO-3 checkpoint of step 3, resumed by ONE process."""
        after_step(self.get("zero3"), d, 3)
        check_ok(launch(d, self.zero3(), nproc=1))
        return d


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("ds-runs"))
