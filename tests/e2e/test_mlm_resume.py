"""Exact resume: 12 steps straight == 5 steps, killed, resumed in a fresh process to 12.

At 1 process (python) and 2 processes (accelerate launch for the straight run, torchrun for
the interrupted one, which also shows the launchers are interchangeable): every logged loss
and every final parameter must be bitwise identical.
"""

import json
import re
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


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_streamed_mix_with_an_eval_file_resumes_exactly(tmp_path, nproc):
    """data.mix + data.streaming + data.eval_path: two sources interleaved by the seeded sampler
    while streaming, the held-out file evaluated, the realised proportions logged, and a resume
    after a kill continues the mixture where it stopped (every loss equal)."""
    from pipeline.data.embedded import materialize

    lines = Path(materialize("bible")["train"]).read_text().splitlines()
    a, b, held = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "eval.jsonl"
    a.write_text("\n".join(lines[:300]) + "\n")
    b.write_text("\n".join(lines[-301:]) + "\n")  # an odd count: shares do not divide evenly
    held.write_text("\n".join(lines[400:440]) + "\n")
    args = [
        *ARGS,
        f"data.mix=[{{path: {a}, weight: 3}}, {{path: {b}, weight: 1}}]",
        "data.streaming=true",
        f"data.eval_path={held}",
        "train.max_steps=8",
        "train.checkpoint_every=4",
        "train.eval_every=4",
    ]
    launch = {"launcher": "python"} if nproc == 1 else {"launcher": "torchrun", "nproc": 2}
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    out = run_cli([*args, "--output-dir", str(straight)], **launch)
    share = re.search(rf"{a.name}: ([0-9.]+) \(weight 0\.750\)", out.stderr)
    assert share and abs(float(share.group(1)) - 0.75) < 0.06, out.stderr[-2000:]
    killed = run_cli(
        [*args, "--output-dir", str(broken)], check=False, PIPELINE_FAULT="after_checkpoint@4",
        **launch,
    )  # fmt: skip
    assert killed.returncode != 0
    run_cli([*args, "--output-dir", str(broken)], **launch)
    x, y = losses_by_step(straight), losses_by_step(broken)
    assert sorted(x) == list(range(1, 9)) and x == y
    evals = {r["step"]: r["loss"] for r in metrics(broken, "eval")}
    assert sorted(evals) == [4, 8] and evals == {
        r["step"]: r["loss"] for r in metrics(straight, "eval")
    }
