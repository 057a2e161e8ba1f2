"""Smoke runs of the benchmark scripts on a tiny BERT: the tables and the numbers in them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.conftest import ROOT, env

SMALL_BERT = [
    "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
    "num_attention_heads: 2}",
    "tokenizer.vocab_size=1000",
    "model.dropout=0.0",
]


def _run(script: str, args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, f"scripts/{script}", *args],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_mlm_table(tmp_path):
    out = _run("bench_mlm.py", [
        "--presets", "tiny", "--block", "32", "--micro-batch", "8", "--steps", "4",
        "--window", "2", "--repeats", "1", "--prep-docs", "40", "--prep-repeats", "1",
        "--out", str(tmp_path / "w"), "--json", str(tmp_path / "r.json"), "--set", *SMALL_BERT,
    ])  # fmt: skip
    assert "device: CPU" in out and "torch " in out
    assert "| model | trainer | tokens/s | vs Trainer | peak MB | vs Trainer | loss |" in out
    assert "| data preparation " in out and "vs run_mlm" in out
    result = json.loads((tmp_path / "r.json").read_text())
    (row,) = result["training"]
    ours, peer = row["ours"], row["trainer"]
    for r in (ours, peer):
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["runs"] == 1
        assert 200 < r["peak_mem_mb"] < 16_000  # a process's peak resident set, in MB
        # the same untrained model on the same data: loss near log(vocabulary)
        assert abs(r["loss"] - math.log(1000)) < 1.0, r["loss"]
    assert abs(ours["loss"] - peer["loss"]) < 0.5
    prep = result["prep"]
    assert prep["ours"]["corpus_tokens"] == prep["run_mlm"]["corpus_tokens"] > 1000
    # the same tokens cut into 32-token blocks: the counts differ only by the special tokens
    assert 0.8 < prep["ours"]["blocks"] / prep["run_mlm"]["blocks"] < 1.2
    assert prep["ours"]["tokens_per_s"] > 0 and prep["run_mlm"]["tokens_per_s"] > 0


def test_bench_gpu_table_on_cpu(tmp_path):
    out = _run("bench_gpu.py", [
        "--tiny", "--rows", "all", "trainer", "fused", "--steps", "4", "--window", "2",
        "--micro-batch", "8", "--budget-s", "1000", "--out", str(tmp_path / "w"),
        "--json", str(tmp_path / "r.json"),
    ])  # fmt: skip
    assert "device: CPU" in out
    assert "| configuration " in out and "| MFU " in out and "| peak MB " in out
    for name in (
        "ours, all features",
        "Trainer + DataCollatorForLanguageModeling",
        "- fused AdamW",
    ):
        assert f"| {name} " in out
    result = json.loads((tmp_path / "r.json").read_text())
    rows = result["rows"]
    assert result["flops_per_token"] > 0
    for r in rows.values():
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 200
    assert "n/a" in out  # no peak FLOPs known for a CPU: MFU is not made up
    # the fused and the per-parameter AdamW are the same optimizer: the same losses
    ours, unfused = rows["ours, all features"], rows["- fused AdamW"]
    assert abs(ours["loss"] - unfused["loss"]) < 0.02
