"""Measures of an image (or point) energy model beyond 2-D densities:

- `auroc`: how well the energy tells held-out data (low energy) from out-of-distribution inputs
  (high energy): P(E(ood) > E(data)), ties counted half; 0.5 = chance, 1 = perfect;
- `ood_sets`: the out-of-distribution inputs used, made from the held-out data itself:
  `permuted` (each image's pixels shuffled by its own random permutation: the same pixel
  values, no spatial structure) and `uniform` (uniform noise over the data's value range);
- `inpainting`: masked MSE of energy completions (pipeline/ebm/infer.py) against the mean
  training image and scikit-learn's KNNImputer fitted on the training images (the honest bar).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.ebm.infer import complete, energies


def auroc(in_energy: torch.Tensor, ood_energy: torch.Tensor) -> float:
    """P(E(ood) > E(in)) over all pairs (Mann-Whitney U / n1 n2), ties counting one half."""
    a, b = in_energy.double().flatten(), ood_energy.double().flatten()
    both = torch.cat([a, b])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    # average ranks over ties
    uniq, inverse = torch.unique(both, return_inverse=True)
    if len(uniq) < len(both):
        sums = torch.zeros(len(uniq), dtype=both.dtype).index_add_(0, inverse, ranks)
        counts = torch.zeros(len(uniq), dtype=both.dtype).index_add_(
            0, inverse, torch.ones_like(ranks)
        )
        ranks = (sums / counts)[inverse]
    r_ood = ranks[len(a) :].sum()
    u = r_ood - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def ood_sets(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """{"permuted": x with each example's coordinates shuffled, "uniform": noise in x's range}."""
    flat = x.flatten(1)
    perms = torch.stack([torch.randperm(flat.shape[1], generator=generator) for _ in flat])
    permuted = torch.gather(flat, 1, perms).view_as(x)
    lo, hi = float(x.min()), float(x.max())
    uniform = lo + (hi - lo) * torch.rand(x.shape, generator=generator)
    return {"permuted": permuted, "uniform": uniform}


def ood_aurocs(net: nn.Module, heldout: torch.Tensor, seed: int = 0) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    e_in = energies(net, heldout)
    return {
        f"auroc_{name}": auroc(e_in, energies(net, ood))
        for name, ood in ood_sets(heldout, g).items()
    }


def inpainting(
    net: nn.Module, train: torch.Tensor, heldout: torch.Tensor, mask: torch.Tensor,
    steps: int, step_size: float, grad_clip: float | None = None, neighbours: int = 5,
) -> dict[str, float]:  # fmt: skip
    """Masked MSE on `heldout` of: the energy's completion (gradient descent from the mean
    training image on the masked pixels), the mean training image, and KNNImputer."""
    from sklearn.impute import KNNImputer

    m = mask.expand_as(heldout)
    mean_image = train.mean(0, keepdim=True)
    start = torch.where(m, mean_image.expand_as(heldout), heldout)
    bounds = (float(train.min()), float(train.max()))
    g = torch.Generator().manual_seed(0)
    done = complete(net, start, mask, steps, step_size, 0.0, None, g, bounds, grad_clip)
    flat_mask = mask.flatten()
    observed = heldout.flatten(1).numpy().copy()
    observed[:, flat_mask.numpy()] = float("nan")
    imputer = KNNImputer(n_neighbors=neighbours).fit(train.flatten(1).numpy())
    knn = torch.from_numpy(imputer.transform(observed)).float().view_as(heldout)

    def mse(pred: torch.Tensor) -> float:
        return float((pred - heldout)[m].pow(2).mean())

    return {"mse_energy": mse(done), "mse_mean_image": mse(start), "mse_knn": mse(knn)}
