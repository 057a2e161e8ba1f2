"""ZeRO-3 builds the model partitioned (zero.Init through transformers' DeepSpeed integration),
from scratch and from_pretrained: no process holds the full parameters at any point, while
ZeRO-2 (which replicates parameters) holds them whole. An objective whose parameters cannot be
partitioned is refused in one line before any work."""

from __future__ import annotations

import json

from tests.conftest import metrics, run_cli
from tests.deepspeed.conftest import check_ok, ds, launch


def held(run_dir) -> tuple[int, list[int]]:
    info = json.loads((run_dir / "run_info.json").read_text())["parameters"]
    return info["total"], info["held_per_process"]


def test_zero3_never_holds_the_full_model(tmp_path):
    scratch, zero2 = tmp_path / "zero3", tmp_path / "zero2"
    check_ok(launch(scratch, [*ds("zero3"), "train.max_steps=2", "train.export=true"]))
    total, shares = held(scratch)
    assert total > 100_000 and len(shares) == 2
    assert all(abs(s - total / 2) <= 0.01 * total for s in shares), (total, shares)
    # from_pretrained (its own export) is loaded partitioned too, and trains
    again = tmp_path / "again"
    check_ok(launch(again, [*ds("zero3"), "train.max_steps=2",
                            f"model.from_pretrained={scratch / 'export'}"]))  # fmt: skip
    assert held(again) == (total, shares)
    assert metrics(again)[0]["loss"] < metrics(scratch)[0]["loss"]  # it started trained
    check_ok(launch(zero2, [*ds("zero2"), "train.max_steps=2"]))
    assert held(zero2) == (total, [total, total])


def test_zero3_refuses_a_weight_average_in_one_line(tmp_path):
    proc = run_cli(["train", "configs/ebm/cd-2d.yaml", *ds("zero3"), "train.max_steps=2",
                    "--output-dir", str(tmp_path)], check=False, DS_ACCELERATOR="cpu")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: objective cd cannot have its parameters partitioned by ZeRO-3 (its weight "
        "average, objective.ema=0.995, reads whole parameters); use "
        "engine.deepspeed_config=configs/deepspeed/zero2.json"
    )
