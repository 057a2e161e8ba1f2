"""ZeRO 1/2/3 and CPU offload as strategies of the one engine (2 processes, gloo, tiny BERT).

Tolerances, stated once: ZeRO runs the same fp32 math as DDP but reduces gradients in another
order (reduce-scatter buckets vs one all-reduce), so losses agree to LOSS_ATOL over 6 steps,
not bitwise. Resume at the same process count is exact (bitwise). DeepSpeedCPUAdam is the
same AdamW in another kernel: OFFLOAD_ATOL.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.deepspeed.conftest import STEPS, losses, metrics, run_info

LOSS_ATOL = 1e-4
OFFLOAD_ATOL = 1e-3
STAGES = ["zero1", "zero2", "zero3"]

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.mark.parametrize("stage", STAGES)
def test_zero_trains_like_ddp(runs, stage):
    ddp, zero = runs.get("ddp"), runs.get(stage)
    info = run_info(zero)
    assert info["distributed_type"] == "DEEPSPEED" and info["num_processes"] == 2
    assert run_info(ddp)["distributed_type"] == "MULTI_CPU"
    config = (zero / "config.yaml").read_text()
    assert f"{stage}.json" in config

    a, b = losses(ddp), losses(zero)
    assert sorted(b) == list(range(1, STEPS + 1))
    assert b[STEPS] < b[1] - 0.2, f"loss did not fall: {b}"
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst < LOSS_ATOL, f"DDP {a} vs {stage} {b}"
    # DeepSpeed clipped: the reported norm is DeepSpeed's pre-clip norm, the same as DDP's
    na, nb = metrics(ddp), metrics(zero)
    assert all(abs(na[s]["grad_norm"] - nb[s]["grad_norm"]) < 1e-3 * na[s]["grad_norm"] for s in na)
    # per-process peak memory is logged
    assert len(nb[STEPS]["peak_mem_mb_ranks"]) == 2
    assert nb[STEPS]["peak_mem_mb_max"] == max(nb[STEPS]["peak_mem_mb_ranks"])


@pytest.mark.parametrize("stage", STAGES)
def test_checkpoint_holds_zero_shards(runs, stage):
    ckpt = runs.get(stage) / "checkpoints" / "step-00000003"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    shards = sorted(f for f in manifest if "zero_pp_rank_" in f and f.endswith("optim_states.pt"))
    assert len(shards) == 2, manifest.keys()  # one optimizer shard per process, hash-checked
    per_rank_model = [f for f in manifest if f.endswith("_mp_rank_00_model_states.pt")]
    assert (len(per_rank_model) == 2) == (stage == "zero3")  # ZeRO-3 shards the weights too


@pytest.mark.parametrize("stage", STAGES)
def test_save_kill_resume_is_exact(runs, stage):
    straight, resumed = runs.get(stage), runs.get(f"{stage}-resumed")
    log = (resumed.parent / f"{resumed.name}.log").read_text()
    assert "resumed from" in log and "step 3" in log
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == list(range(1, STEPS + 1))
    assert all(a[s] == b[s] for s in a), f"straight {a}\nresumed  {b}"


def test_resume_at_one_process_from_two(runs):
    """Documented path (engine/elastic.py): consolidated weights + fresh optimizer, same LR
    schedule and data position. Same examples per step (fixed global batch); the masks of
    half the micro batches differ (they are seeded per process), hence the loose tolerance."""
    two, one = runs.get("zero3"), runs.get("zero3-one-process")
    info = run_info(one)
    assert info["num_processes"] == 1 and info["distributed_type"] == "DEEPSPEED"
    log = (one.parent / f"{one.name}.log").read_text()
    assert "optimizer moments start afresh" in log
    a, b = losses(two), losses(one)
    assert sorted(b) == list(range(1, STEPS + 1))  # steps 1-3 from the 2-process run
    first = metrics(one)[4]
    assert first["lr"] == metrics(two)[4]["lr"]  # the LR schedule continued
    # the loaded weights: step 4's loss is the 2-process run's, not a fresh model's (~a[1])
    assert abs(b[4] - a[4]) < 0.1, (a, b)
    assert a[1] - b[4] > 0.2, (a, b)
    assert b[STEPS] < a[1] - 0.2, (a, b)  # and training goes on (Adam restarts its moments)


@pytest.mark.parametrize("stage", STAGES)
def test_export_is_the_sharded_model(runs, stage):
    """The live export (fp32 master weights gathered from the ZeRO partitions) equals the
    offline consolidation of the final checkpoint's shards, loads in stock transformers with
    its decoder tied, and gives the same logits."""
    from transformers import AutoModelForMaskedLM

    from pipeline.engine.deepspeed import consolidated_state_dict, without_aliases

    run = runs.get(stage)
    model = AutoModelForMaskedLM.from_pretrained(run / "export")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    shards = consolidated_state_dict(run / "checkpoints" / f"step-{STEPS:08d}")
    exported = load_file(str(run / "export" / "model.safetensors"))
    for name, tensor in without_aliases(shards).items():
        key = name.removeprefix("model.")
        assert torch.equal(exported[key], tensor), name

    ids = torch.randint(
        5, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    reference = AutoModelForMaskedLM.from_config(model.config)
    reference.load_state_dict(
        {k.removeprefix("model."): v for k, v in shards.items()}, strict=False
    )
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference.eval()(ids).logits)


def test_offline_export_from_zero3_shards(runs, tmp_path):
    """`python -m pipeline export` on a ZeRO-3 checkpoint (no model.safetensors; tied decoder)."""
    import shutil

    from transformers import AutoModelForMaskedLM

    from pipeline.export import export_run

    run = tmp_path / "copy"
    shutil.copytree(runs.get("zero3"), run)
    shutil.rmtree(run / "export")
    export_run(run)
    offline = load_file(str(run / "export" / "model.safetensors"))
    live = load_file(str(runs.get("zero3") / "export" / "model.safetensors"))
    assert offline.keys() == live.keys() and all(torch.equal(offline[k], live[k]) for k in live)
    AutoModelForMaskedLM.from_pretrained(run / "export")


def test_offload_trains(runs):
    """ZeRO-3 with optimizer and parameters offloaded to CPU. DeepSpeed refuses a torch
    optimizer with offload (zero_force_ds_cpu_optimizer), so training at all means Accelerate
    swapped our AdamW for DeepSpeedCPUAdam; the LR schedule still reaches it."""
    off, zero3 = runs.get("zero3-offload"), runs.get("zero3")
    assert run_info(off)["distributed_type"] == "DEEPSPEED"
    shard = (
        off / "checkpoints/step-00000003/pytorch_model/zero_pp_rank_0_mp_rank_00_model_states.pt"
    )
    saved = torch.load(shard, map_location="cpu", weights_only=False)["ds_config"]  # our own file
    assert saved["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert saved["zero_optimization"]["offload_param"]["device"] == "cpu"
    a, b = losses(zero3), losses(off)
    assert b[STEPS] < b[1] - 0.2, b
    assert max(abs(a[s] - b[s]) for s in a) < OFFLOAD_ATOL, (a, b)
    assert [metrics(off)[s]["lr"] for s in b] == [metrics(zero3)[s]["lr"] for s in a]
