"""Reload an exported energy model: `net, info = load_energy("runs/cd-2d/export")`, or with
huggingface_hub alone: `EnergyNetwork.from_pretrained("runs/cd-2d/export")` (a local folder or
a Hub repo written by `push_to_hub`).

The export folder is a `PyTorchModelHubMixin` folder: `config.json` (the model config and
input shape the network is rebuilt from, plus what `energy_config.json` says) and
`model.safetensors` (the `EnergyNetwork`'s weights, `net.*`: weight-averaged when the run kept
an average); `energy_config.json` (model config, input shape, data transform, and for 2-D data
the quadrature log Z, so log p(x) = -net(x) - info["log_z"]) marks it as an energy model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from pipeline import config as config_lib
from pipeline import registry

EXPORT_CONFIG = "energy_config.json"


def build_net(model: dict, input_shape: list[int] | tuple[int, ...]) -> nn.Module:
    cfg, problems = config_lib.build(registry.config_class("model", model["name"]), model)
    if problems:
        raise ValueError("; ".join(problems))
    return registry.get("model", cfg.name).build(cfg, input_shape=tuple(input_shape))


class EnergyNetwork(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="pipeline",
    tags=["energy-based-model"],
):
    """E(x): (B, *input_shape) -> (B,) energies (low = likely); log p(x) = -E(x) - log Z."""

    def __init__(self, model: dict, input_shape: list[int]):
        super().__init__()
        self.input_shape = list(input_shape)
        self.net = build_net(model, input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def save_energy(net: nn.Module, folder: str, info: dict) -> None:
    """Write `net` (a plain energy network built from info["model"]) as an EnergyNetwork
    folder: config.json + model.safetensors, and energy_config.json."""
    wrapper = EnergyNetwork(info["model"], info["input_shape"])
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    wrapper.net.load_state_dict(state)
    wrapper.save_pretrained(folder, config=info)
    (Path(folder) / EXPORT_CONFIG).write_text(json.dumps(info, indent=1))


def load_energy(folder: str) -> tuple[nn.Module, dict]:
    """(energy net, info) from an export folder: E(x) = net(x); log p(x) = -E(x) - info['log_z']."""
    with open(f"{folder}/{EXPORT_CONFIG}") as fh:
        info = json.load(fh)
    try:
        net = EnergyNetwork.from_pretrained(folder)
    except ValueError as err:
        raise ValueError(f"{folder}/{EXPORT_CONFIG}: {err}") from None
    return net.eval(), info
