"""Energy networks E(x) -> one scalar per example, for the contrastive EBM objectives.

`mlp-energy` for points (2-D toys, vectors); `conv-energy` for small images such as 8x8 digits.
Both take a batch of shape (B, *input_shape) and return (B,) energies (low = likely).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.models.base import ModelConfig
from pipeline.registry import register

ACTIVATIONS = {"silu": nn.SiLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "softplus": nn.Softplus}


def _check_activation(name: str) -> list[str]:
    if name in ACTIVATIONS:
        return []
    return [f"activation {name!r} unknown; choices: {', '.join(ACTIVATIONS)}"]


class MLPEnergy(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(-1)


class ConvEnergy(nn.Module):
    """3x3 conv blocks (the second and later with stride 2), global average pool, linear."""

    def __init__(self, channels_in: int, channels: list[int], activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = channels_in
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(width, c, 3, stride=1 if i == 0 else 2, padding=1)]
            layers += [ACTIVATIONS[activation]()]
            width = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(-1)


@register("model", "mlp-energy")
class MLPEnergyModel:
    is_energy_model = True

    @dataclass
    class Config(ModelConfig):
        name: str = "mlp-energy"
        hidden: list[int] = field(default_factory=lambda: [128, 128])
        """Widths of the hidden layers (the input width comes from the data)."""
        activation: str = "silu"
        """Smooth activations (silu, elu, softplus) give Langevin a smooth gradient field."""

        def validate(self) -> list[str]:
            problems = _check_activation(self.activation)
            if not self.hidden or min(self.hidden) < 1:
                problems.append(f"hidden must list positive widths, got {self.hidden}")
            return problems

    @staticmethod
    def build(cfg: Config, input_shape: tuple[int, ...]) -> nn.Module:
        return MLPEnergy(math.prod(input_shape), list(cfg.hidden), cfg.activation)


@register("model", "conv-energy")
class ConvEnergyModel:
    is_energy_model = True

    @dataclass
    class Config(ModelConfig):
        name: str = "conv-energy"
        channels: list[int] = field(default_factory=lambda: [32, 64, 64])
        """Output channels of each 3x3 conv (all but the first halve the resolution)."""
        activation: str = "silu"
        """Activation after each conv."""

        def validate(self) -> list[str]:
            problems = _check_activation(self.activation)
            if not self.channels or min(self.channels) < 1:
                problems.append(f"channels must list positive widths, got {self.channels}")
            return problems

    @staticmethod
    def build(cfg: Config, input_shape: tuple[int, ...]) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(
                f"model conv-energy needs images (channels, height, width), the data gives "
                f"examples of shape {tuple(input_shape)}; use model.name=mlp-energy"
            )
        return ConvEnergy(input_shape[0], list(cfg.channels), cfg.activation)
