"""Autoencoder networks (fully connected and convolutional) and the corruption noises.

Masking noise: `masking` zeroes each input with probability p and leaves the survivors as
they are (the corruption of Vincent et al. 2008). `dropout` is nn.Dropout used as the noise:
it also divides the survivors by 1 - p, so the corrupted image is brighter than the clean one
and the network must learn to undo that scale too. `masking` is the recipe default.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def _mlp(sizes: list[int], act: str, last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class MLPAutoencoder(nn.Module):
    """x -> hidden... -> code -> ...hidden -> logits (same size as x)."""

    def __init__(self, dim: int, hidden: list[int], code: int, act: str, code_act: str):
        super().__init__()
        self.encoder = _mlp([dim, *hidden, code], act)
        if code_act == "relu":
            self.encoder.append(nn.ReLU())
        self.decoder = _mlp([code, *reversed(hidden), dim], act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)

    def filters(self) -> torch.Tensor:
        """First-layer weights, one row per unit, in input space."""
        first = next(m for m in self.encoder if isinstance(m, nn.Linear))
        return first.weight.detach()


class ConvAutoencoder(nn.Module):
    """Stride-2 3x3 convolutions down, a linear code, transposed convolutions back up."""

    def __init__(
        self, image_shape: tuple[int, ...], channels: list[int], code: int, act: str, code_act: str
    ):
        super().__init__()
        self.shape = tuple(image_shape) if len(image_shape) == 3 else (1, *image_shape)
        c, h, w = self.shape
        down: list[nn.Module] = []
        sizes = [(h, w)]
        for c_in, c_out in zip([c, *channels], channels):
            down += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), ACTIVATIONS[act]()]
            sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
        self.inner = (channels[-1], *sizes[-1])
        flat = int(math.prod(self.inner))
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, code))
        if code_act == "relu":
            self.encoder.append(nn.ReLU())
        up: list[nn.Module] = [nn.Linear(code, flat), ACTIVATIONS[act]()]
        up.append(nn.Unflatten(1, self.inner))
        outs = [*reversed(channels[:-1]), c]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs)):
            up.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1))
            if i < len(outs) - 1:
                up.append(ACTIVATIONS[act]())
        self.decoder = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.shape
        code = self.encoder(x.view(-1, c, h, w))
        out = self.decoder(code)[:, :, :h, :w]  # doubling may overshoot odd sizes
        return code, out.reshape(len(x), -1)

    def filters(self) -> torch.Tensor:
        first = next(m for m in self.encoder if isinstance(m, nn.Conv2d))
        return first.weight.detach()


def build(cfg: Any, dim: int, image_shape: tuple[int, ...] | None) -> nn.Module:
    if cfg.arch == "conv":
        if image_shape is None:
            raise ValueError("stage.arch=conv needs images")
        return ConvAutoencoder(
            image_shape, cfg.channels, cfg.code_size, cfg.activation, cfg.code_activation
        )
    return MLPAutoencoder(dim, cfg.hidden, cfg.code_size, cfg.activation, cfg.code_activation)


def corrupt(x: torch.Tensor, cfg: Any, gen: torch.Generator) -> torch.Tensor:
    """The noisy input of a denoising autoencoder (x itself when stage.noise=none)."""
    if cfg.noise == "none":
        return x
    if cfg.noise == "gaussian":
        return x + cfg.noise_std * torch.randn(x.shape, generator=gen).to(x.device)
    keep = (torch.rand(x.shape, generator=gen) >= cfg.mask_prob).to(x.device)
    if cfg.noise == "masking":
        return x * keep
    return x * keep / (1.0 - cfg.mask_prob)  # dropout: survivors rescaled


def reconstruction(out: torch.Tensor, cfg: Any) -> torch.Tensor:
    """The network's output in data space (a sigmoid for BCE or output=sigmoid)."""
    if cfg.loss == "bce" or cfg.output == "sigmoid":
        return torch.sigmoid(out)
    return out


def loss_fn(out: torch.Tensor, code: torch.Tensor, target: torch.Tensor, cfg: Any) -> torch.Tensor:
    if cfg.loss == "bce":
        loss = F.binary_cross_entropy_with_logits(out, target)
    else:
        loss = F.mse_loss(reconstruction(out, cfg), target)
    if cfg.sparsity_l1 > 0:
        loss = loss + cfg.sparsity_l1 * code.abs().sum(1).mean()
    return loss
