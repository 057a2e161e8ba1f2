"""The "topographic map" of a 2-D energy: contours of E with -grad E arrows, and, given the
outputs folder of a denoising autoencoder stage trained on the same points, its
reconstruction field r(x) - x at the same places (both point up the density; for a DAE with
Gaussian noise sigma, r(x) - x ~ sigma^2 grad log p(x)).

    python scripts/topographic_map.py runs/dsm-2d/export --output map.png
    python scripts/topographic_map.py runs/dsm-2d/export --dae runs/dae/outputs --output map.png

Prints the mean cosine between the two fields over the arrow points when --dae is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402

from pipeline.ebm import plots  # noqa: E402
from pipeline.ebm.export import load_energy  # noqa: E402
from pipeline.ebm.quadrature import Grid, grid_energies  # noqa: E402


def dae_field(outputs: Path, points: torch.Tensor) -> torch.Tensor:
    """r(x) - x of the autoencoder saved in a stage's outputs/ folder."""
    from safetensors.torch import load_file

    from pipeline.stages import ae_models
    from pipeline.stages.autoencoder import AutoencoderConfig

    meta = json.loads((outputs / "autoencoder.json").read_text())
    ac = AutoencoderConfig(**meta["autoencoder"])
    model = ae_models.build(ac, meta["dim"], None)
    model.load_state_dict(load_file(outputs / "model.safetensors"))
    with torch.no_grad():
        _, out = model.eval()(points)
        return ae_models.reconstruction(out, ac) - points


def minus_grad(net: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    x = points.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    return -g


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("export", help="an energy model export over 2-D points")
    p.add_argument("--dae", help="outputs/ folder of an autoencoder stage on the same points")
    p.add_argument("--output", default="topographic_map.png")
    p.add_argument("--arrows", type=int, default=25, help="arrows per axis")
    args = p.parse_args()
    net, info = load_energy(args.export)
    if info["input_shape"] != [2] or "grid" not in info:
        raise SystemExit(f"error: {args.export} is not an energy model over 2-D points")
    g = info["grid"]
    grid = Grid(tuple(g["lo"]), tuple(g["hi"]), 120)
    arrows = Grid(tuple(g["lo"]), tuple(g["hi"]), args.arrows).points()
    field = dae_field(Path(args.dae), arrows) if args.dae else None
    mg = minus_grad(net, arrows)
    title = f"{info['objective']}: energy contours, -grad E"
    if field is not None:
        cos = torch.nn.functional.cosine_similarity(mg, field, dim=1).mean()
        title += f", DAE r(x)-x (mean cos {float(cos):.2f})"
        print(f"mean cosine(-grad E, r(x) - x) over {len(arrows)} points: {float(cos):.3f}")
    plots.topographic_map(
        Path(args.output), grid, grid_energies(net, grid), mg, None, field, arrows, title
    )
    print(args.output)


if __name__ == "__main__":
    main()
