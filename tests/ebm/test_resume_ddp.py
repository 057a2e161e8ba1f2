"""CD with a persistent replay buffer at 2 processes (DDP over gloo, torchrun), data read
through `datasets` (a parquet file, data.feature_columns): 8 steps straight vs 4 steps, the
processes exit, 2 fresh processes resume to 8: every logged loss, the weights and BOTH
processes' replay buffers equal bit for bit."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

ARGS = [
    "train", "configs/ebm/cd-2d.yaml", "data.feature_columns=[u, v]",
    "model.hidden=[16, 16]", "objective.buffer_size=128", "objective.steps=3",
    "objective.grid_size=32", "train.micro_batch_size=32", "train.log_every=1",
    "train.eval_every=0", "train.checkpoint_every=100", "optim.schedule=constant",
    "optim.warmup_steps=0", "log.progress_bar=false", "log.plots=false", "log.trackers=[]",
    "train.export=false",
]  # fmt: skip


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_resume_with_replay_buffers_is_bitwise_exact(tmp_path):
    pts = np.random.default_rng(0).normal(size=(600, 2)).astype(np.float32)
    data = tmp_path / "points.parquet"
    datasets.Dataset.from_dict({"u": pts[:, 0], "v": pts[:, 1]}).to_parquet(str(data))
    args = [*ARGS, f"data.path={data}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    two = {"launcher": "torchrun", "nproc": 2}
    run_cli([*args, "train.max_steps=8", "--output-dir", str(straight)], **two)
    run_cli([*args, "train.max_steps=4", "--output-dir", str(split)], **two)
    run_cli(
        [*args, "train.max_steps=8", "train.resume=required", "--output-dir", str(split)], **two
    )

    a, b = losses(straight), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 9)) and a == b
    ck_a = sorted((straight / "checkpoints").glob("step-*"))[-1]
    ck_b = sorted((split / "checkpoints").glob("step-*"))[-1]
    assert ck_a.name == ck_b.name == "step-00000008"
    wa, wb = load_file(str(ck_a / "model.safetensors")), load_file(str(ck_b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    buffers = []
    for rank in (0, 1):
        ra = torch.load(ck_a / f"rank-{rank}.pt", weights_only=True)["objective"]["buffer"]
        rb = torch.load(ck_b / f"rank-{rank}.pt", weights_only=True)["objective"]["buffer"]
        assert ra["data"].shape == (128, 2) and torch.equal(ra["data"], rb["data"]), rank
        buffers.append(ra["data"])
    assert not torch.equal(buffers[0], buffers[1])  # each process keeps its own chains
