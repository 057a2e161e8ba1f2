"""Smoke run of scripts/bench_finetune.py on a tiny export: the lr search, the per-seed table,
the verdict, and reuse of unchanged fine-tunes on a second run."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, env


def _bench(export, out) -> str:
    proc = subprocess.run(
        [sys.executable, "scripts/bench_finetune.py", "--pretrained", str(export),
         "--steps", "4", "--train-examples", "64", "--val-examples", "64",
         "--lrs", "1e-3,3e-3", "--seeds", "1,2", "--out", str(out)],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_finetune_prints_every_seed_the_means_and_a_verdict(tiny_export, tmp_path):
    first = _bench(tiny_export, tmp_path / "bench")
    rows = re.findall(r"^(pretrained|random)\s+(\d+|mean)\s+([\d.e-]+)\s+([\d.]+)\s+([\d.]+)",
                      first, re.M)  # fmt: skip
    assert sorted((i, s) for i, s, *_ in rows) == [
        ("pretrained", "1"), ("pretrained", "2"), ("pretrained", "mean"),
        ("random", "1"), ("random", "2"), ("random", "mean"),
    ], first  # fmt: skip
    for init in ("pretrained", "random"):
        acc = {s: float(a) for i, s, _, a, _ in rows if i == init}
        assert abs(acc["mean"] - (acc["1"] + acc["2"]) / 2) < 1e-3, first
        assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert re.search(r"^pretraining (wins|does NOT win on every seed): [+-]", first, re.M), first
    assert "validation accuracy / macro-F1 by lr" in first
    second = _bench(tiny_export, tmp_path / "bench")  # nothing changed: every run is reused
    assert len(re.findall(r"^(pretrained|random)\s+\d+\s.*\breused$", second, re.M)) == 4, second


def test_bench_finetune_reruns_a_fine_tune_whose_recipe_changed(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ft", ROOT / "scripts/bench_finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    export = tmp_path / "export"
    export.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (export / name).write_text(name)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 1.0e-3\n")
    cmd = ["finetune", str(export), str(recipe), "model.init=pretrained"]
    key = bench.job_key(cmd, export)
    assert bench.job_key(cmd, export) == key
    recipe.write_text("optim:\n  lr: 3.0e-3\n")
    assert bench.job_key(cmd, export) != key  # the recipe is read by content
    recipe.write_text("optim:\n  lr: 1.0e-3\n")
    (export / "model.safetensors").write_text("other weights")
    assert bench.job_key(cmd, export) != key
    before = bench.job_key(["finetune", str(export), str(recipe), "model.init=random"], export)
    moved = export.rename(tmp_path / "moved")  # the export is keyed by content, not by path
    assert (
        bench.job_key(["finetune", str(moved), str(recipe), "model.init=random"], moved) == before
    )
