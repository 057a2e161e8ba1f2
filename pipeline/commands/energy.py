"""`python -m pipeline energy EXPORT data.path=... [data.KEY=VALUE ...] --output energies.npy`:
E(x) of every example of a dataset, in order, batched (low energy = likely)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.cli import command


@command("energy", "write E(x) of every example of a dataset (an energy model export)")
def energy_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline energy",
        description="Energies of every example of data.path under an exported energy model, in "
        "order, as a float32 .npy of shape (N,). data.* keys default to the training run's.",
    )
    parser.add_argument("export", help="an energy model export folder (RUN_DIR/export)")
    parser.add_argument("overrides", nargs="*", help="data.path=... and other data.KEY=VALUE")
    parser.add_argument("--output", required=True, help="the .npy file to write")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_intermixed_args(argv)
    from pipeline.commands._energy_io import open_export, read_data, split_overrides
    from pipeline.ebm.infer import energies

    net, info = open_export(args.export)
    x, source = read_data(info, split_overrides(args.overrides, ("data",))["data"])
    e = energies(net, x, max(1, args.batch_size)).numpy().astype(np.float32)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, e)
    print(
        f"{out}: {len(e)} energies of {source} (mean {e.mean():.4g}, min {e.min():.4g}, "
        f"max {e.max():.4g})"
    )
    return 0
