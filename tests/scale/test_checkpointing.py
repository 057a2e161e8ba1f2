"""model.gradient_checkpointing: the same loss and gradients, less activation memory (counted
exactly: the bytes autograd keeps for the backward pass)."""

from __future__ import annotations

import torch

from pipeline import config as config_lib
from pipeline.models.base import encoder_family
from pipeline.objectives.mlm import SparseMaskedLM
from pipeline.train_config import RunConfig

OVERRIDES = ["model.dropout=0.0", "model.overrides={hidden_size: 64, intermediate_size: 256, "
             "num_hidden_layers: 4, num_attention_heads: 4}"]  # fmt: skip


def run(checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    cfg = config_lib.load_config(
        RunConfig, None, [*OVERRIDES, f"model.gradient_checkpointing={str(checkpointing).lower()}"]
    )
    family = encoder_family(cfg.model.name, "mlm")
    torch.manual_seed(0)
    module = SparseMaskedLM(family.build_masked_lm(cfg.model, 500, 0), family).train()
    ids = torch.randint(5, 500, (8, 128), generator=torch.Generator().manual_seed(1))
    labels = torch.where(
        torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.15, ids, -100
    )
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = module(input_ids=ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(loss), grads, saved[0]


def test_same_loss_and_gradients_with_less_activation_memory():
    plain_loss, plain_grads, plain_bytes = run(False)
    ckpt_loss, ckpt_grads, ckpt_bytes = run(True)
    assert ckpt_loss == plain_loss
    assert plain_grads.keys() == ckpt_grads.keys()
    assert all(
        torch.allclose(plain_grads[k], ckpt_grads[k], rtol=1e-5, atol=1e-7) for k in plain_grads
    )
    # four layers' activations are recomputed: only their inputs are kept
    assert ckpt_bytes < 0.4 * plain_bytes, (ckpt_bytes, plain_bytes)
