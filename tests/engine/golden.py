"""Golden runs: the per-step losses (and final weights) of three fixed tiny runs, recorded
before the engine was restructured (issue 14) and compared bit for bit ever since.

    python tests/engine/golden.py --write     # record (only when a change is MEANT to alter them)

The runs go through the command line, as a user runs them, with one thread (reductions then
do not depend on the machine's core count) and the tokenizer in tests/fixtures (a trained
WordPiece is not bit-reproducible across machines; a committed one is).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden_losses.json")
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer-bible-1k"

QUIET = ["log.progress_bar=false", "log.trackers=[]", "log.plots=false"]
RUNS: dict[str, list[str]] = {
    # gradient accumulation 2, an evaluation and a checkpoint inside the run
    "mlm": [
        "train", "configs/mlm/tiny.yaml", f"tokenizer.name_or_path={TOKENIZER}",
        "model.overrides={hidden_size: 64, intermediate_size: 128, num_attention_heads: 2}",
        "data.block_size=32", "train.micro_batch_size=8", "train.global_batch_size=16",
        "train.max_steps=24", "train.log_every=1", "train.eval_every=10",
        "train.checkpoint_every=12", "data.max_eval_examples=64", *QUIET,
    ],
    # persistent CD with MALA and a replay buffer, weight average
    "cd": [
        "train", "configs/ebm/cd-2d.yaml", "train.max_steps=40", "train.log_every=1",
        "train.eval_every=20", "train.checkpoint_every=20", "objective.num_train=2048",
        "objective.num_eval=512", "objective.grid_size=32", "model.hidden=[32, 32]", *QUIET,
    ],
    # the autoencoder stage (its own loop today)
    "autoencoder": [
        "stage", "configs/stages/autoencoder.yaml", "train.max_steps=60", "train.log_every=1",
        "train.eval_every=30", "train.checkpoint_every=30", *QUIET[:1], "log.plots=false",
    ],
}  # fmt: skip
WEIGHTS = {
    "mlm": "export/model.safetensors",
    "cd": "export/model.safetensors",
    "autoencoder": "outputs/model.safetensors",
}


def run(name: str, out: Path) -> dict:
    """Run one golden run into `out`; return its per-step losses, eval metrics and weights hash."""
    env = {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
    }  # fmt: skip
    import os

    env["PIPELINE_CACHE"] = os.environ.get("PIPELINE_CACHE", str(out / "cache"))
    env["HOME"] = os.environ.get("HOME", str(out))
    cmd = [sys.executable, "-m", "pipeline", *RUNS[name], f"output_dir={out / name}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train" and "loss" in r]
    evals = [
        (r["step"], {k: v for k, v in r.items() if k not in ("step", "split")})
        for r in rows
        if r["split"] == "eval"
    ]
    weights = weights_digest(out / name / WEIGHTS[name])
    # through JSON, as the golden file holds it (tuples become lists; floats round-trip exactly)
    return json.loads(json.dumps({"train_loss": train, "eval": evals, "weights_sha256": weights}))


def weights_digest(path: Path) -> str:
    """sha256 of the tensors' bytes in key order: the weights, not the file's layout (the
    energy export's keys gained a `net.` prefix, header and metadata may change)."""
    import torch
    from safetensors.torch import load_file

    state, h = load_file(str(path)), hashlib.sha256()
    for key in sorted(state):
        h.update(state[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def record(out: Path) -> dict:
    import torch

    result = {name: run(name, out) for name in RUNS}
    result["_machine"] = {"torch": torch.__version__, "cpu_capability": cpu_capability()}
    return result


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/engine/golden.py --write")
    with tempfile.TemporaryDirectory() as tmp:
        data = record(Path(tmp))
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
