"""What `pipeline energy` and `pipeline infer` share: open an energy export, read a dataset
the way the training run did (its data.image_column / feature_columns / image_size unless
overridden), check the shapes agree. Not a command (the leading underscore)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline import config as config_lib
from pipeline.config import ConfigError
from pipeline.data.sources import DataError
from pipeline.ebm.export import EXPORT_CONFIG, load_energy
from pipeline.export import ExportError

DATA_KEYS = ("path", "name", "split", "image_column", "feature_columns", "image_size")


def open_export(folder: str) -> tuple[nn.Module, dict]:
    """(energy net, export info); ExportError when `folder` is not an energy model export."""
    p = Path(folder)
    if not p.is_dir():
        raise ExportError(f"{folder} is not a folder")
    if not (p / EXPORT_CONFIG).is_file():
        what = "a transformers model" if (p / "config.json").is_file() else "an export"
        raise ExportError(
            f"{folder} is not an energy model export (no {EXPORT_CONFIG}; it looks like {what}): "
            "export a run trained with objective.name=cd, nce or dsm"
        )
    try:
        net, info = load_energy(str(p))
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{folder}: cannot load the energy model: {msg}") from None
    return net.float().eval(), info


def split_overrides(argv: list[str], sections: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s: [] for s in sections}
    for item in argv:
        key = item.partition("=")[0]
        section = key.split(".", 1)[0]
        if "=" not in item or section not in out:
            raise ConfigError(
                [f"{item!r}: expected {' or '.join(s + '.KEY' for s in sections)}=VALUE"]
            )
        out[section].append(item[len(section) + 1 :])
    return out


def read_data(info: dict, overrides: list[str]) -> tuple[torch.Tensor, str]:
    """Every example of data.path (in order) with the export's data settings, and its source."""
    from pipeline.ebm.data import Columns, read_examples
    from pipeline.train_config import DataConfig

    stored = {k: v for k, v in info.get("data", {}).items() if k in DATA_KEYS}
    raw = config_lib.apply_overrides(stored, overrides)
    if "path" not in raw:
        raise ConfigError(["data.path=... is required (the dataset to read)"])
    if isinstance(raw["path"], str):
        raw["path"] = [raw["path"]]
    cfg, problems = config_lib.build(DataConfig, raw, "data.")
    if problems:
        raise ConfigError(problems)
    x = read_examples(cfg.path, "data.path", Columns.of(cfg))
    want = tuple(info["input_shape"])
    if tuple(x.shape[1:]) != want:
        raise DataError(
            f"data.path {', '.join(cfg.path)} gives examples of shape {tuple(x.shape[1:])}, but "
            f"the energy model takes {want} (set data.image_size / image_column / feature_columns)"
        )
    return x, ", ".join(cfg.path)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")
