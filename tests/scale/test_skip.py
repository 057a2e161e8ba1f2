"""A skipped step changes nothing, under DDP and ZeRO 1/2/3, at 1 and 2 processes; a resume after
skipped steps continues with the next unseen batch, bitwise.

The skip is the hard case for a multi-process run: a NaN loss *value* whose gradients are
finite (`nan_value`), on the last process only, so only the all-reduced flag tells the others.
With train.max_bad_steps=1 the run stops right after skipping step 3 and checkpoints the state
it then holds; a run of the same schedule checkpoints the state after step 2. The two
checkpoints hold the same parameters, optimizer state (ZeRO partitions included) and scheduler,
tensor by tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import metrics
from tests.deepspeed.conftest import check_ok, ds, launch

CASES = [("ddp", 1), ("ddp", 2), ("zero1", 1), ("zero1", 2), ("zero2", 1), ("zero2", 2),
         ("zero3", 1), ("zero3", 2)]  # fmt: skip
STOP = ["train.checkpoint_every=100", "train.max_bad_steps=1"]


def run(run_dir: Path, strategy: str, nproc: int, overrides: list[str], **fault: str):
    if strategy == "ddp":
        where = ["engine.strategy=ddp"], "ddp-cpu.yaml"
    else:
        where = ds(strategy), "deepspeed.yaml"
    return launch(run_dir, [*where[0], *overrides], nproc=nproc, accelerate_config=where[1],
                  extra_env=fault)  # fmt: skip


# files whose content is bookkeeping, not model or optimizer state: our trainer_state (it holds
# the data position, which the skip advances), RNG states, DeepSpeed's step counters and its
# "the last step overflowed" flag (reset by every step; the skip sets it, by design)
BOOKKEEPING = {"overflow", "global_steps", "global_samples", "skipped_steps", "ds_config", "ds_version",
               "mp_world_size", "dp_world_size", "param_shapes", "frozen_param_shapes",
               "shared_params", "frozen_param_fragments", "buffer_names", "lr_scheduler",
               "data_sampler", "random_ltd", "sparse_tensor_module_names", "iteration"}  # fmt: skip


def state_files(folder: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            out[rel] = load_file(str(path))
        elif path.suffix in (".bin", ".pt") and not path.name.startswith(("rank-", "random_")):
            # DeepSpeed's own shards are pickles (weights_only=False): files we just wrote
            out[rel] = torch.load(path, map_location="cpu", weights_only=False)
    return out


def differences(a, b, where: str = "") -> list[str]:
    if torch.is_tensor(a):
        same = torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict):
        keys = (set(a) | set(b)) - BOOKKEEPING
        return [
            d
            for k in sorted(keys, key=str)
            for d in differences(a.get(k), b.get(k), f"{where}/{k}")
        ]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and type(a) is type(b):  # e.g. DeepSpeed's LossScaler
        return differences(vars(a), vars(b), where)
    return [] if a == b else [where]


@pytest.mark.parametrize("strategy, nproc", CASES)
def test_a_skipped_step_leaves_every_state_unchanged(tmp_path, strategy, nproc):
    skipped, before = tmp_path / "skipped", tmp_path / "before"
    fault = {"PIPELINE_FAULT": "nan_value@3x1", "PIPELINE_FAULT_RANK": str(nproc - 1)}
    proc = run(skipped, strategy, nproc, [*STOP, "train.max_steps=6"], **fault)
    assert proc.returncode != 0 and "stopped after step 2" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("step 3: non-finite loss, step skipped") == 1
    # the same schedule (6 steps) checkpointed after step 2 (a token or time budget would
    # change the schedule: it decays over the budget that ends the run)
    check_ok(run(before, strategy, nproc, [*STOP, "train.max_steps=6", "train.checkpoint_every=2"]))
    a = skipped / "checkpoints" / "step-00000002"
    b = before / "checkpoints" / "step-00000002"
    sa, sb = (
        json.loads((a / "trainer_state.json").read_text()),
        json.loads((b / "trainer_state.json").read_text()),
    )
    assert (sa["step"], sa["batches"], sb["batches"]) == (2, 3, 2)  # the skip consumed batch 3
    assert sa["scheduler"] == sb["scheduler"]
    files_a, files_b = state_files(a), state_files(b)
    assert files_a.keys() == files_b.keys() and files_a
    assert differences(files_a, files_b) == []


@pytest.mark.parametrize("strategy, nproc", [("ddp", 2), ("zero2", 2), ("zero3", 1)])
def test_resume_after_skipped_steps_is_exact(tmp_path, strategy, nproc):
    """Steps 3 and 5 each lose one attempt; a run killed after step 6 and resumed from the step-4
    checkpoint trains exactly as an uninterrupted one: the data position is the consumed
    batches, not the step count."""
    fault = "nan_value@3x1,nan_value@5x1"
    args = ["train.max_steps=8", "train.checkpoint_every=4", "train.max_bad_steps=3"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    check_ok(run(straight, strategy, nproc, args, PIPELINE_FAULT=fault))
    killed = run(broken, strategy, nproc, args, PIPELINE_FAULT=fault + ",after_step@6")
    assert killed.returncode != 0
    # the resumed run repeats step 5 and its skipped attempt: the fault fires again there
    check_ok(run(broken, strategy, nproc, args, PIPELINE_FAULT="nan_value@5x1"))
    a = {r["step"]: r["loss"] for r in metrics(straight)}
    b = {r["step"]: r["loss"] for r in metrics(broken)}
    assert sorted(a) == list(range(1, 9)) and a == b
    state = json.loads(
        (straight / "checkpoints" / "step-00000008" / "trainer_state.json").read_text()
    )
    assert (state["step"], state["batches"]) == (8, 10)
