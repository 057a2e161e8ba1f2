"""Reload an exported energy model: `net, info = load_energy("runs/cd-2d/export")`.

The export folder holds `model.safetensors` (the energy net's weights, weight-averaged when the
run kept an average) and `energy_config.json` (model config, input shape, and for 2-D data the
quadrature log Z, so log p(x) = -net(x) - info["log_z"]).
"""

from __future__ import annotations

import json

from torch import nn

from pipeline import config as config_lib
from pipeline import registry

EXPORT_CONFIG = "energy_config.json"


def load_energy(folder: str) -> tuple[nn.Module, dict]:
    """(energy net, info) from an export folder: E(x) = net(x); log p(x) = -E(x) - info['log_z']."""
    from safetensors.torch import load_file

    with open(f"{folder}/{EXPORT_CONFIG}") as fh:
        info = json.load(fh)
    cfg, problems = config_lib.build(
        registry.config_class("model", info["model"]["name"]), info["model"]
    )
    if problems:
        raise ValueError(f"{folder}/{EXPORT_CONFIG}: {'; '.join(problems)}")
    net = registry.get("model", cfg.name).build(cfg, input_shape=tuple(info["input_shape"]))
    net.load_state_dict(load_file(f"{folder}/model.safetensors"))
    return net.eval(), info
