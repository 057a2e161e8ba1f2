"""Energy-based models measured: 2-D densities (KL) and the digits image EBM (OOD AUROC,
inpainting, samples).

    python scripts/bench_ebm.py                      # the 2-D recipes' defaults, every toy
    python scripts/bench_ebm.py --toys 8gaussians rings --steps 3000 --methods cd nce dsm
    python scripts/bench_ebm.py --digits             # trains configs/ebm/cd-digits.yaml
    python scripts/bench_ebm.py --digits --export runs/cd-digits/export   # measures an export

2-D: trains each recipe (configs/ebm/{cd,nce,dsm}-2d.yaml) through the engine in this process
and prints one table: kl / tv at each evaluation with the training seconds spent so far, and
the measured mass outside the quadrature box at the end.
Digits: held-out digits (the run's own held-out split) against pixel-permuted digits and
uniform noise (energy AUROC), right-half inpainting MSE against the mean image and
KNNImputer, and a grid of Langevin samples from noise (PNG in --out).
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
from pipeline.models.energy import MLPEnergy  # noqa: E402
from pipeline.train_config import RunConfig  # noqa: E402
from pipeline.workflow import train_and_export  # noqa: E402

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


def digits(args: argparse.Namespace) -> None:
    from pipeline.ebm import plots
    from pipeline.ebm.data import load_points
    from pipeline.ebm.evaluate import inpainting, ood_aurocs
    from pipeline.ebm.export import load_energy
    from pipeline.ebm.infer import mask_for

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-digits-"))
    out.mkdir(parents=True, exist_ok=True)
    seconds = None
    if args.export:
        export = Path(args.export)
    else:
        overrides = [f"output_dir={out / 'run'}", "log.progress_bar=false", *args.overrides]
        if args.steps:
            overrides.append(f"train.max_steps={args.steps}")
        if args.seed is not None:
            overrides.append(f"train.seed={args.seed}")
        cfg = load_config(RunConfig, ROOT / f"configs/ebm/{args.recipe}.yaml", overrides)
        t = time.perf_counter()
        from pipeline.workflow import train_and_export

        train_and_export(cfg)
        seconds = time.perf_counter() - t
        export = out / "run" / "export"
    run_cfg = load_config(RunConfig, export.parent / "config.yaml")
    d = run_cfg.data
    data = load_points(d.path, d.eval_path, 1, 1, d.eval_fraction, run_cfg.train.seed)
    net, info = load_energy(str(export))
    train_x, heldout = data.train.x, data.eval.x
    with torch.no_grad():
        scores = ood_aurocs(net, heldout, seed=0)
    mask = mask_for("right-half", tuple(info["input_shape"]))
    lv = info.get("langevin", {})
    inpaint = inpainting(
        net, train_x, heldout, mask, args.infer_steps, args.infer_step_size, lv.get("grad_clip", 0.1),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    start = torch.rand(64, *info["input_shape"], generator=g)
    spec = LangevinSpec(
        steps=args.sample_steps, step_size=lv.get("step_size", 1.0),
        noise_scale=lv.get("noise_scale", 0.01), grad_clip=lv.get("grad_clip", 0.1),
        bounds=(0.0, 1.0),
    )  # fmt: skip
    samples = langevin(net, start, spec, g)
    plots.image_grid(
        out / "samples.png", samples, f"Langevin from noise, {args.sample_steps} steps"
    )
    rows = {
        "held-out digits": str(len(heldout)),
        "train s": f"{seconds:.0f}" if seconds is not None else "(export)",
        "AUROC vs pixel-permuted": f"{scores['auroc_permuted']:.4f}",
        "AUROC vs uniform noise": f"{scores['auroc_uniform']:.4f}",
        "inpaint right half MSE: energy": f"{inpaint['mse_energy']:.4f}",
        "inpaint right half MSE: mean image": f"{inpaint['mse_mean_image']:.4f}",
        "inpaint right half MSE: KNNImputer(5)": f"{inpaint['mse_knn']:.4f}",
        "samples": str(out / "samples.png"),
    }
    print(f"\ndigits EBM ({export})")
    for k, v in rows.items():
        print(f"| {k:38s} | {v:>10s} |")
    (out / "digits.json").write_text(json.dumps({**scores, **inpaint, "train_s": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--digits", action="store_true", help="the digits image EBM instead of 2-D")
    p.add_argument("--export", help="--digits: measure this export instead of training")
    p.add_argument("--out", help="--digits: folder for the run, samples.png and digits.json")
    p.add_argument("--recipe", default="cd-digits", help="--digits: configs/ebm/RECIPE.yaml")
    p.add_argument("--infer-steps", type=int, default=50)
    p.add_argument("--infer-step-size", type=float, default=0.3)
    p.add_argument("--sample-steps", type=int, default=200)
    p.add_argument("overrides", nargs="*", help="--digits: recipe overrides key=value")
    p.add_argument("--toys", nargs="+", default=["8gaussians", "rings", "2spirals", "checkerboard"])
    p.add_argument("--methods", nargs="+", default=["cd", "nce"])
    p.add_argument("--steps", type=int, default=None, help="train.max_steps (default: recipe's)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=None, help="train.seed: data, init, chains")
    args = p.parse_args()
    if args.digits:
        digits(args)
        return

    rows = []
    for toy in args.toys:
        for method in args.methods:
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [
                    f"data.path=toy:{toy}", f"output_dir={tmp}", f"train.eval_every={args.eval_every}",
                    f"train.log_every={args.eval_every}",
                    "log.progress_bar=false", "log.plots=false",
                ]  # fmt: skip
                if args.steps:
                    overrides.append(f"train.max_steps={args.steps}")
                if args.seed is not None:
                    overrides.append(f"train.seed={args.seed}")
                cfg = load_config(RunConfig, ROOT / f"configs/ebm/{method}-2d.yaml", overrides)
                train_and_export(cfg)
                info = json.loads((Path(tmp) / "export/energy_config.json").read_text())
                outside = info["log_z_outside_mass"]
                for step, seconds, kl, tv in curve(Path(tmp)):
                    rows.append((toy, method, step, seconds, kl, tv, outside))
                    print(
                        f"{toy:12s} {method:4s} step {step:5d} {seconds:7.1f}s kl {kl:.3f}",
                        flush=True,
                    )

    print(
        f"\n{'toy':12s} {'method':6s} {'step':>6s} {'train s':>8s} {'kl':>7s} {'tv':>6s} "
        "mass outside box"
    )
    for toy, method, step, seconds, kl, tv, outside in rows:
        print(f"{toy:12s} {method:6s} {step:6d} {seconds:8.1f} {kl:7.3f} {tv:6.3f} {outside:.1e}")
    print("\nLangevin samples/s (2-D MLP energy, chains of 20 steps, batch 256, this CPU):")
    for hidden in ([128, 128], [256, 256]):
        for mala in (False, True):
            rate = langevin_rate(hidden, 20, 256, mala)
            print(f"  hidden {hidden} {'MALA' if mala else 'ULA '}: {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()
