"""Using a trained energy: score examples, and complete the masked part of an input by
minimising the energy over the missing coordinates only (y* = argmin_y E(x_observed, y)).

Masks (`mask_for`): for images (C, H, W) `right-half`, `left-half`, `top-half`, `bottom-half`,
`center` (the middle half in each direction); for any shape `dims:I,J,...` (flat coordinate
indices, e.g. `dims:1` = the second coordinate of a 2-D point). True = missing.

Completion (`complete`) runs x <- x - step_size * m * grad E(x) + noise_scale * m * N(0, I)
(m the mask) for `steps` steps from the missing coordinates set to `init`: gradient descent
with noise_scale 0, Langevin otherwise; `bounds` clamps (images: the pixel range). All
randomness comes from the generator passed in.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_MASKS = ("right-half", "left-half", "top-half", "bottom-half", "center")


class MaskError(ValueError):
    """A mask that does not fit the input (the message says why)."""


def mask_for(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A boolean mask of `shape` (one example), True where coordinates are to be completed."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if name.startswith("dims:"):
        try:
            dims = [int(v) for v in name.split(":", 1)[1].split(",") if v.strip()]
        except ValueError:
            raise MaskError(f"infer.mask={name!r}: dims:I,J,... takes integer indices") from None
        size = mask.numel()
        bad = [d for d in dims if not 0 <= d < size]
        if not dims or bad:
            raise MaskError(
                f"infer.mask={name!r} is outside the input: examples of shape {tuple(shape)} "
                f"have coordinates 0..{size - 1}"
            )
        flat = mask.view(-1)
        flat[dims] = True
    elif name in IMAGE_MASKS:
        if len(shape) != 3:
            raise MaskError(
                f"infer.mask={name} needs images (C, H, W); the inputs have shape "
                f"{tuple(shape)}: use infer.mask=dims:I,J,..."
            )
        _, h, w = shape
        if name == "right-half":
            mask[:, :, w // 2 :] = True
        elif name == "left-half":
            mask[:, :, : w // 2] = True
        elif name == "top-half":
            mask[:, : h // 2] = True
        elif name == "bottom-half":
            mask[:, h // 2 :] = True
        else:
            mask[:, h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    else:
        raise MaskError(
            f"infer.mask={name!r} is unknown; choices: {', '.join(IMAGE_MASKS)}, dims:I,J"
        )
    if mask.all():
        raise MaskError(f"infer.mask={name!r} masks every coordinate: nothing is observed")
    return mask


@torch.no_grad()
def energies(net: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """E(x) of every example, in order, `batch_size` at a time: (N,) float32."""
    out = [net(x[i : i + batch_size]).float().reshape(-1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def complete(
    net: nn.Module, x: torch.Tensor, mask: torch.Tensor, steps: int, step_size: float,
    noise_scale: float, init: torch.Tensor | float | None, generator: torch.Generator,
    bounds: tuple[float, float] | None = None, grad_clip: float | None = None,
    batch_size: int = 256,
) -> torch.Tensor:  # fmt: skip
    """Completions of `x` (N, *shape): observed coordinates kept exactly, the masked ones
    moved down the energy. `init` fills the masked coordinates at the start (a scalar or a
    tensor broadcastable to one example; None = start from `x` as it is)."""
    out = []
    m = mask.to(x.dtype)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].clone()
        if init is not None:
            xb = torch.where(mask, torch.as_tensor(init, dtype=x.dtype).expand_as(xb), xb)
        for _ in range(steps):
            y = xb.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(net(y).sum(), y)
            if grad_clip:
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                grad = grad * (grad_clip / norm).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
            xb = xb - step_size * m * grad
            if noise_scale > 0:
                xb = xb + noise_scale * m * torch.randn(xb.shape, generator=generator)
            if bounds is not None:
                xb = xb.clamp(*bounds)
            xb = xb.detach()
        out.append(xb)
    return torch.cat(out) if out else x.clone()
