"""KL reached vs wall-clock for CD vs NCE on the 2-D toys, and Langevin samples per second.

    python scripts/bench_ebm.py                      # the recipes' defaults, every toy
    python scripts/bench_ebm.py --toys 8gaussians rings --steps 3000

Trains each recipe (configs/ebm/cd-2d.yaml, nce-2d.yaml) through the engine in this process
and prints one table: kl / tv at each evaluation with the training seconds spent so far.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.ebm.langevin import LangevinSpec, langevin  # noqa: E402
from pipeline.engine.train import train  # noqa: E402
from pipeline.models.energy import MLPEnergy  # noqa: E402
from pipeline.train_config import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def curve(run_dir: Path) -> list[tuple[int, float, float, float]]:
    """(step, training seconds so far, kl, tv) at each evaluation."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds, last_step, out = 0.0, 0, []
    for r in rows:
        if r["split"] == "train":
            seconds += r["step_time_s"] * (r["step"] - last_step)
            last_step = r["step"]
        elif "kl" in r:
            out.append((r["step"], seconds, r["kl"], r["tv"]))
    return out


def langevin_rate(hidden: list[int], steps: int, batch: int, metropolis: bool = False) -> float:
    """Langevin samples/s: chains of `steps` steps on a 2-D MLP energy, `batch` at a time."""
    net = MLPEnergy(2, hidden, "silu")
    spec = LangevinSpec(
        steps=steps, step_size=0.05, noise_scale=math.sqrt(0.1), metropolis=metropolis
    )
    g = torch.Generator().manual_seed(0)
    langevin(net, torch.randn(batch, 2), spec, g)  # warm up
    t = time.perf_counter()
    for _ in range(5):
        langevin(net, torch.randn(batch, 2), spec, g)
    return 5 * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--toys", nargs="+", default=["8gaussians", "rings", "2spirals", "checkerboard"])
    p.add_argument("--methods", nargs="+", default=["cd", "nce"])
    p.add_argument("--steps", type=int, default=None, help="train.max_steps (default: recipe's)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=None, help="train.seed: data, init, chains")
    args = p.parse_args()

    rows = []
    for toy in args.toys:
        for method in args.methods:
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [
                    f"data.path=toy:{toy}", f"output_dir={tmp}", f"train.eval_every={args.eval_every}",
                    f"train.log_every={args.eval_every}",
                    "log.progress_bar=false", "log.plots=false", "train.export=false",
                ]  # fmt: skip
                if args.steps:
                    overrides.append(f"train.max_steps={args.steps}")
                if args.seed is not None:
                    overrides.append(f"train.seed={args.seed}")
                cfg = load_config(RunConfig, ROOT / f"configs/ebm/{method}-2d.yaml", overrides)
                train(cfg)
                for step, seconds, kl, tv in curve(Path(tmp)):
                    rows.append((toy, method, step, seconds, kl, tv))
                    print(
                        f"{toy:12s} {method:4s} step {step:5d} {seconds:7.1f}s kl {kl:.3f}",
                        flush=True,
                    )

    print(f"\n{'toy':12s} {'method':6s} {'step':>6s} {'train s':>8s} {'kl':>7s} {'tv':>6s}")
    for toy, method, step, seconds, kl, tv in rows:
        print(f"{toy:12s} {method:6s} {step:6d} {seconds:8.1f} {kl:7.3f} {tv:6.3f}")
    print("\nLangevin samples/s (2-D MLP energy, chains of 20 steps, batch 256, this CPU):")
    for hidden in ([128, 128], [256, 256]):
        for mala in (False, True):
            rate = langevin_rate(hidden, 20, 256, mala)
            print(f"  hidden {hidden} {'MALA' if mala else 'ULA '}: {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()
