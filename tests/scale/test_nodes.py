"""Two "nodes" (one process each, local rank 0 on both) with different cache folders, as nodes
with their own disks have: each node prepares the packed data in its own cache, the tokenizer
trained by the main process reaches the other node through the run folder, and training
matches a 2-process run on one machine with one shared cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, TINY, _free_port, env, metrics, run_cli

ARGS = ["train", "configs/mlm/tiny.yaml", *TINY, "train.max_steps=6", "train.eval_every=0",
        "train.export=false", "data.path=embedded:kjv"]  # fmt: skip


def two_nodes(out: Path, caches: list[Path]) -> None:
    port = str(_free_port())
    procs = []
    for rank, cache in enumerate(caches):
        node_env = env(
            RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
            GROUP_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
            PIPELINE_CACHE=str(cache), HF_DATASETS_CACHE=str(cache / "hf"),
        )  # fmt: skip
        cmd = [sys.executable, "-m", "pipeline", *ARGS, "--output-dir", str(out)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=node_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def test_nodes_with_their_own_caches_prepare_their_own_data(tmp_path):
    caches = [tmp_path / "node1-cache", tmp_path / "node2-cache"]
    two_nodes(tmp_path / "nodes", caches)
    for cache in caches:  # each node packed the corpus into its own cache
        assert any((cache / "packed").glob("*/dataset_info.json")), cache
    # the tokenizer was trained once, by the main process, on node 1
    assert any((caches[0] / "tokenizers").glob("*/tokenizer_config.json"))
    assert not list((caches[1] / "tokenizers").glob("*/tokenizer_config.json"))
    # one machine, one cache, the same tokenizer (training another would not be bit-identical)
    shared = tmp_path / "shared"
    run_cli([*ARGS, f"tokenizer.name_or_path={tmp_path / 'nodes' / 'tokenizer'}",
             "--output-dir", str(shared)], launcher="torchrun", nproc=2,
            PIPELINE_CACHE=str(tmp_path / "shared-cache"))  # fmt: skip
    a = [r["loss"] for r in metrics(tmp_path / "nodes")]
    b = [r["loss"] for r in metrics(shared)]
    assert len(a) == 6 and a == b
