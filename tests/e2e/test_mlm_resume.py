"""Exact resume: 12 steps straight == 5 steps, killed, resumed in a fresh process to 12.

At 1 process (python) and 2 processes (accelerate launch for the straight run, torchrun for
the interrupted one, which also shows the launchers are interchangeable): every logged loss
and every final parameter must be bitwise identical.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, metrics, run_cli

STEPS = 12
ARGS = ["train", "configs/mlm/tiny.yaml", *TINY, f"train.max_steps={STEPS}", "train.checkpoint_every=5",
        "train.eval_every=0", "train.keep_checkpoints=3", "optim.warmup_steps=2"]  # fmt: skip


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"))


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir)}  # a resumed step's last line wins


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_is_bitwise_identical(tmp_path, nproc):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    launch = {"launcher": "python"} if nproc == 1 else {"launcher": "accelerate", "nproc": 2}
    relaunch = {"launcher": "python"} if nproc == 1 else {"launcher": "torchrun", "nproc": 2}
    run_cli([*ARGS, "--output-dir", str(straight)], **launch)
    info = json.loads((straight / "run_info.json").read_text())
    assert info["num_processes"] == nproc
    assert info["distributed_type"] == ("NO" if nproc == 1 else "MULTI_CPU")

    # killed (SIGKILL) right after the checkpoint of step 5 is complete
    killed = run_cli(
        [*ARGS, "--output-dir", str(broken)],
        check=False,
        PIPELINE_FAULT="after_checkpoint@5",
        **relaunch,
    )
    assert killed.returncode != 0
    assert [p.name for p in (broken / "checkpoints").iterdir()] == ["step-00000005"]
    resumed = run_cli([*ARGS, "--output-dir", str(broken)], **relaunch)
    assert "resumed from" in resumed.stderr and "step 5" in resumed.stderr

    a, b = losses_by_step(straight), losses_by_step(broken)
    assert sorted(a) == list(range(1, STEPS + 1)) and a == b
    assert a[STEPS] < a[1]  # and it learned something
    pa, pb = final_params(straight), final_params(broken)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_streaming_resume_continues_the_stream(tmp_path):
    """data.streaming=true: the stream position is in the checkpoint; no batch repeated or skipped."""
    from pipeline.data.embedded import materialize

    lines = Path(materialize("bible")["train"]).read_text().splitlines()[:150]
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    args = [
        *ARGS,
        f"data.path={data}",
        "data.streaming=true",
        "data.eval_documents=20",  # of 150: the default 1000 would leave nothing to train on
        "train.max_steps=8",
        "train.checkpoint_every=4",
    ]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run_cli([*args, "--output-dir", str(straight)])
    killed = run_cli(
        [*args, "--output-dir", str(broken)], check=False, PIPELINE_FAULT="after_checkpoint@4"
    )
    assert killed.returncode != 0
    run_cli([*args, "--output-dir", str(broken)])
    a, b = losses_by_step(straight), losses_by_step(broken)
    assert sorted(a) == list(range(1, 9)) and a == b
