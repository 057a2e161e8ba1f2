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
    assert second.count("reused") == 4, second
