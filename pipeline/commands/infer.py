"""`python -m pipeline infer EXPORT data.path=... infer.mask=right-half --output-dir DIR`:
complete the masked coordinates of every example by minimising the energy over them only
(gradient descent, or Langevin with infer.noise_scale > 0); see pipeline/ebm/infer.py.

Writes DIR/completions.npy (N, *shape), DIR/metrics.json (MSE on the masked coordinates
against the truth, and of the per-coordinate mean baseline) and, for images,
DIR/completions.png (inputs, completions and truth side by side)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import command


@dataclass
class InferConfig:
    mask: str = "right-half"
    """right-half, left-half, top-half, bottom-half, center (images) or dims:I,J (flat indices)."""
    steps: int = 200
    """Descent steps on the missing coordinates."""
    step_size: float | None = None
    """Step on -grad E (default: the export's Langevin step size, else 0.01)."""
    noise_scale: float = 0.0
    """Langevin noise per step (0 = gradient descent to a mode)."""
    grad_clip: float | None = None
    """Clip each example's gradient norm (default: the export's Langevin setting)."""
    init: str = "mean"
    """Start of the missing coordinates: mean (of the observed values of that example) or a number."""
    seed: int = 0
    batch_size: int = 256
    max_examples: int | None = None
    """Complete only the first this-many examples."""
    picture_examples: int = 12

    def validate(self) -> list[str]:
        problems = []
        if self.steps < 0:
            problems.append(f"steps must be >= 0, got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            problems.append(f"step_size must be > 0, got {self.step_size}")
        if self.noise_scale < 0:
            problems.append(f"noise_scale must be >= 0, got {self.noise_scale}")
        if self.init != "mean":
            try:
                float(self.init)
            except ValueError:
                problems.append(f"init must be 'mean' or a number, got {self.init!r}")
        return problems


@command("infer", "complete the masked part of each input by minimising an energy model")
def infer_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline infer",
        description="Complete masked coordinates of data.path under an exported energy model.",
    )
    parser.add_argument("export", help="an energy model export folder (RUN_DIR/export)")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE and infer.KEY=VALUE")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_intermixed_args(argv)

    import torch

    from pipeline import config as config_lib
    from pipeline.commands._energy_io import open_export, read_data, split_overrides, write_json
    from pipeline.config import ConfigError
    from pipeline.ebm import plots
    from pipeline.ebm.infer import MaskError, complete, energies, mask_for

    over = split_overrides(args.overrides, ("data", "infer"))
    cfg, problems = config_lib.build(
        InferConfig, config_lib.apply_overrides({}, over["infer"]), "infer."
    )
    if problems:
        raise ConfigError(problems)
    net, info = open_export(args.export)
    try:
        mask = mask_for(cfg.mask, tuple(info["input_shape"]))
    except MaskError as err:
        raise ConfigError([str(err)]) from None
    truth, source = read_data(info, over["data"])
    if cfg.max_examples:
        truth = truth[: cfg.max_examples]
    lv = info.get("langevin", {})
    step_size = cfg.step_size or lv.get("step_size", 0.01)
    grad_clip = cfg.grad_clip if cfg.grad_clip is not None else lv.get("grad_clip")
    bounds = (float(truth.min()), float(truth.max())) if truth.dim() == 4 else None
    observed = truth.masked_fill(mask, 0.0)
    if cfg.init == "mean":
        keep = (~mask).to(truth.dtype)
        mean = (observed.flatten(1).sum(1) / keep.sum()).view(-1, *[1] * (truth.dim() - 1))
        init = mean.expand_as(truth)
    else:
        init = torch.full_like(truth, float(cfg.init))
    start = torch.where(mask, init, truth)
    g = torch.Generator().manual_seed(cfg.seed)
    done = complete(
        net, start, mask, cfg.steps, step_size, cfg.noise_scale, None, g, bounds, grad_clip,
        cfg.batch_size,
    )  # fmt: skip
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    np.save(out / "completions.npy", done.numpy().astype(np.float32))
    m = mask.expand_as(truth)
    mse = float((done - truth)[m].pow(2).mean())
    mse_start = float((start - truth)[m].pow(2).mean())
    e_start, e_done = energies(net, start).mean(), energies(net, done).mean()
    metrics = {
        "examples": len(truth), "mask": cfg.mask, "steps": cfg.steps, "step_size": step_size,
        "noise_scale": cfg.noise_scale, "mse_masked": mse, "mse_masked_at_start": mse_start,
        "energy_start": float(e_start), "energy_completed": float(e_done), "source": source,
    }  # fmt: skip
    write_json(out / "metrics.json", metrics)
    if truth.dim() == 4:
        plots.completion_rows(
            out / "completions.png", start, done, truth, mask,
            f"infer {cfg.mask}: {cfg.steps} steps, MSE {mse:.4f}", cfg.picture_examples,
        )  # fmt: skip
    print(
        f"{out}: completed {len(truth)} examples of {source} ({cfg.mask}); masked MSE {mse:.4g} "
        f"(start {mse_start:.4g}), mean energy {float(e_start):.4g} -> {float(e_done):.4g}"
    )
    return 0
