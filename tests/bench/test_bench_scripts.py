"""Smoke runs of the benchmark scripts on a tiny BERT: the tables and the numbers in them."""

from __future__ import annotations

import importlib.util
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
    assert "| model | trainer | tokens/s (median) | runs (min-max) | vs Trainer | peak MB |" in out
    assert "| data preparation " in out and "vs run_mlm" in out
    result = json.loads((tmp_path / "r.json").read_text())
    (row,) = result["training"]
    ours, peer = row["ours"], row["trainer"]
    for r in (ours, peer):
        assert "error" not in r, r
        assert r["tokens_per_s"] > 100 and r["runs"] == 1  # not a zero or a unit slip
        assert 200 < r["peak_mem_mb"] < 16_000  # a process's peak resident set, in MB
        # the same untrained model on the same data: loss near log(vocabulary)
        assert abs(r["loss"] - math.log(1000)) < 1.0, r["loss"]
    assert abs(ours["loss"] - peer["loss"]) < 0.5
    prep = result["prep"]
    assert prep["ours"]["corpus_tokens"] == prep["run_mlm"]["corpus_tokens"] > 1000
    # the same tokens cut into 32-token blocks: the counts differ only by the special tokens
    assert 0.8 < prep["ours"]["blocks"] / prep["run_mlm"]["blocks"] < 1.2
    assert prep["ours"]["tokens_per_s"] > 100 and prep["run_mlm"]["tokens_per_s"] > 100


def test_bench_gpu_table_on_cpu(tmp_path):
    out = _run("bench_gpu.py", [
        "--tiny", "--rows", "all", "trainer", "fused", "doc-attention", "--steps", "4", "--window", "2",
        "--micro-batch", "8", "--budget-s", "1000", "--out", str(tmp_path / "w"),
        "--json", str(tmp_path / "r.json"),
    ])  # fmt: skip
    assert "device: CPU" in out
    assert "| configuration " in out and "| MFU " in out and "| peak MB " in out
    for name in (
        "ours, all features",
        "Trainer + DataCollatorForLanguageModeling",
        "- fused AdamW",
        "+ document attention (SDPA mask)",
    ):
        assert f"| {name} " in out
    result = json.loads((tmp_path / "r.json").read_text())
    rows = result["rows"]
    assert result["flops_per_token"] > 0
    for r in rows.values():
        assert "error" not in r, r
        assert r["tokens_per_s"] > 100 and r["peak_mem_mb"] > 200
    assert "n/a" in out  # no peak FLOPs known for a CPU: MFU is not made up
    # the fused and the per-parameter AdamW are the same optimizer: the same losses
    ours, unfused = rows["ours, all features"], rows["- fused AdamW"]
    assert abs(ours["loss"] - unfused["loss"]) < 0.02


def _bench_kmeans():
    spec = importlib.util.spec_from_file_location("bench_kmeans", ROOT / "scripts/bench_kmeans.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_kmeans_side_by_side(tmp_path):
    """One run: every method at 1 and 2 threads from the same starts, equal inertia checked."""
    has_faiss = importlib.util.find_spec("faiss") is not None
    out = _run("bench_kmeans.py", [
        "--sizes", "3000x8", "--seeds", "2", "--max-iter", "10", "--json", str(tmp_path / "r.json"),
    ])  # fmt: skip
    methods = ["ours (torch, Hamerly)", "sklearn lloyd", "sklearn elkan"]
    if has_faiss:
        methods.append("faiss-cpu")
    else:
        assert "faiss-cpu is not installed" in out
    assert "load average (1, 5, 15 min) at start" in out
    assert "| equal inertia (<= 0.5%) | time / ours |" in out
    for threads in (1, 2):
        assert f"threads in effect at {threads}: torch {threads}" in out
        for data in ("digits 1797x64", "3000 x 8"):
            for method in methods:
                assert f"| {data} | {threads} | {method} | {threads} |" in out, (data, method)
            assert f"- {data}, {threads} thread(s): fastest other " in out
            for method in ("ours k-means++", "sklearn kmeans_plusplus"):
                assert f"| {data} | {threads} | {method} |" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["methods"] == methods
    for n in ("1", "2"):  # every pool the run could see was at that many threads
        assert set(result["threads_in_effect"][n].values()) == {int(n)}
    rows = result["lloyd"]
    assert len(rows) == 2 * 2 * len(methods)
    for r in rows:
        assert r["runs"] == 2 and r["threads_used"] == [r["threads"]] and r["seconds"] > 0
        if r["method"] != methods[0]:
            # the same start and stopping rule: the same final inertia, so every seed counts
            assert len(r["gaps"]) == 2 and r["equal"] == 2 and r["ratio"] > 0, r
            assert all(abs(g) < 1e-4 for g in r["gaps"].values()), r


def test_bench_kmeans_marks_unequal_inertia():
    """A seed whose inertia is more than 0.5% from ours is marked and left out of the ratio;
    a method with no such seed gets no ratio and no place in the headline."""
    bench = _bench_kmeans()
    ours = bench.OURS

    def run(method, seed, seconds, inertia):
        return {"data": "d", "threads": 1, "method": method, "seed": seed, "seconds": seconds,
                "inertia": inertia, "passes": [5], "threads_used": 1}  # fmt: skip

    runs = [run(ours, s, 1.0, 100.0) for s in range(3)]
    runs += [run("sklearn lloyd", 0, 3.0, 100.2), run("sklearn lloyd", 1, 0.1, 101.0),
             run("sklearn lloyd", 2, 2.0, 99.9)]  # fmt: skip
    runs += [run("sklearn elkan", s, 0.5, 98.0) for s in range(3)]  # fast, 2% better: not equal
    rows = {r["method"]: r for r in bench.summarise(runs, 0.005)}
    lloyd, elkan = rows["sklearn lloyd"], rows["sklearn elkan"]
    assert lloyd["beyond"] == [1] and lloyd["equal"] == 2
    assert lloyd["ratio"] == 2.5  # median of 3.0 and 2.0; seed 1's 0.1 s does not count
    assert elkan["beyond"] == [0, 1, 2] and elkan["equal"] == 0 and elkan["ratio"] is None
    table = "\n".join(bench.lloyd_table(list(rows.values()), 0.005))
    assert "+1.000% (> 0.5%, seed 1)" in table and "| 2/3 | 2.50x |" in table
    assert "| 0/3 | n/a: gap > 0.5% |" in table
    (head,) = bench.headlines(list(rows.values()))
    assert head["best"] == "sklearn lloyd" and head["ratio"] == 2.5
    assert head["not_equal"] == ["sklearn elkan"]


def snap_of(tmp_path, side: str):
    """The last snapshot folder of a quality-race side."""
    return sorted((tmp_path / "w" / f"{side}-6-0" / "snapshots").iterdir())[-1]


def test_bench_quality_race(tmp_path):
    """Both sides train for the same seconds, ours through train.max_time_s with
    train.checkpoint_every_s snapshots, the Trainer through its budget callback; every snapshot
    is scored by the one stock-transformers evaluation, which gives the same numbers twice."""
    out = _run("bench_quality.py", [
        "--recipe", "configs/mlm/modernbert-tiny.yaml", "--preset", "tiny", "--block", "32", "--batch", "8", "--budgets", "6", "--snapshots", "2",
        "--eval-docs", "24", "--out", str(tmp_path / "w"), "--plot", str(tmp_path / "q.png"),
        "--json", str(tmp_path / "q.json"),
    ])  # fmt: skip
    assert "| budget | ours loss | ours acc | Trainer loss | Trainer acc | Trainer - ours |" in out
    assert "most-frequent-token accuracy" in out and (tmp_path / "q.png").stat().st_size > 1000
    result = json.loads((tmp_path / "q.json").read_text())
    for side in ("ours", "trainer"):
        (curve,) = result["curves"][f"6/{side}"]
        assert len(curve) >= 2 and all(math.isfinite(m["loss"]) for _, m in curve)
        assert curve[-1][0] >= 6 * 0.9  # the last snapshot is at the end of the budget
    # the same model on both sides: the recipe's family, shape and dropout, not the defaults'
    ours, theirs = (json.loads((snap_of(tmp_path, side) / "config.json").read_text())
                    for side in ("ours", "trainer"))  # fmt: skip
    assert ours["model_type"] == "modernbert"
    differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differ <= {"transformers_version", "architectures", "dtype", "use_cache"}, differ
    # and the family's own tokenizer on both sides (byte-level BPE for ModernBERT, as a run)
    for side in ("ours", "trainer"):
        tok = json.loads((snap_of(tmp_path, side) / "tokenizer.json").read_text())
        assert tok["model"]["type"] == "BPE" and tok["pre_tokenizer"]["type"] == "ByteLevel", side
    from pipeline.bench import quality

    docs = quality.heldout_documents(24)
    snap = snap_of(tmp_path, "ours")
    assert quality.evaluate_folder(snap, docs, 32) == quality.evaluate_folder(snap, docs, 32)
