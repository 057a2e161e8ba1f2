"""Performance switches: static masked-position padding, CUDA graphs refused on CPU, fused AdamW."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from pipeline import config as config_lib
from pipeline.engine import setup
from pipeline.engine.strategy import DDPStrategy
from pipeline.models.bert import Bert
from pipeline.objectives.mlm import IGNORE, MaskedLM, SparseMaskedLM, prediction_slots
from pipeline.train_config import RunConfig


def _objective(static: bool) -> MaskedLM:
    obj = MaskedLM(MaskedLM.Config())
    from pipeline.objectives.mlm import MaskingSpec

    obj.spec = MaskingSpec(0.15, 0.8, 0.1, False)
    obj.special_ids = torch.tensor([0, 1, 2, 3, 4])
    obj.mask_id, obj.vocab_size, obj.continuation = 4, 100, None
    obj.static_shapes = static
    return obj


def _ids(n=8, length=32, seed=0):
    ids = torch.randint(5, 100, (n, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


def test_prediction_slots():
    assert prediction_slots(37, 256, 0.15, static=False) == 40  # rounded up to a multiple of 8
    fixed = {prediction_slots(n, 4096, 0.15, static=True) for n in range(500, 700)}
    assert len(fixed) == 1  # one shape for every likely count
    (k,) = fixed
    assert k % 8 == 0 and 614 + 5 * math.sqrt(614 * 0.85) < k < 614 * 1.3
    assert prediction_slots(k + 1, 4096, 0.15, static=True) == k + 8  # overflow: grows


@pytest.mark.parametrize("static", [False, True])
def test_collate_pads_the_selected_positions(static):
    obj = _objective(static)
    shapes = set()
    for seed in range(5):
        batch = obj.collate({"input_ids": _ids(seed=seed)}, torch.Generator().manual_seed(seed))
        labels = batch["labels"].flatten()
        where = (labels != IGNORE).nonzero().squeeze(1)
        n = len(where)
        assert torch.equal(batch["masked_positions"][:n], where)
        assert torch.equal(batch["masked_labels"][:n], labels[where])
        assert (batch["masked_labels"][n:] == IGNORE).all()
        slots = batch["masked_positions"].shape[0]
        # static: the one count for this batch size; else just this batch's count, rounded up
        assert slots == prediction_slots(n, labels.numel(), 0.15, static)
        assert slots >= n and (static or slots - n < 8)
        shapes.add(slots)
    # static: one shape for every batch; else the counts (and so the shapes) differ
    if static:
        assert len(shapes) == 1
    else:
        assert len(shapes) > 1


def test_padded_positions_give_the_boolean_mask_loss():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    module = SparseMaskedLM(BertForMaskedLM(cfg), Bert, sparse_prediction=True)
    batch = _objective(True).collate({"input_ids": _ids()}, torch.Generator().manual_seed(3))
    padded_loss, padded = module(**batch)
    plain_loss, plain = module(input_ids=batch["input_ids"], labels=batch["labels"])
    dense_loss, dense = SparseMaskedLM(module.model, Bert, sparse_prediction=False)(
        input_ids=batch["input_ids"], labels=batch["labels"]
    )
    assert torch.allclose(padded_loss, plain_loss, atol=1e-6)
    assert torch.allclose(padded_loss, dense_loss, atol=1e-5)
    assert torch.allclose(padded["mlm_accuracy"], plain["mlm_accuracy"])
    padded_loss.backward()


def test_cuda_graphs_needs_compile_and_cuda(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="engine.cuda_graphs=true needs compile"):
        config_lib.load_config(RunConfig, None, ["engine.cuda_graphs=true"])
    cfg = config_lib.load_config(
        RunConfig, None, ["engine.cuda_graphs=true", "engine.compile=true"]
    )
    if torch.cuda.is_available():
        pytest.skip("refused only without CUDA")
    with pytest.raises(setup.SetupError, match="needs a CUDA device"):
        setup.make_accelerator(cfg, tmp_path, 1, DDPStrategy(cfg, 1))


def test_fused_adamw_is_the_cpu_default():
    model = torch.nn.Linear(4, 4)
    cfg = config_lib.load_config(RunConfig, None, ["optim.lr=1e-3"])
    opt = setup.build_optimizer(model, cfg.optim, torch.device("cpu"))
    assert opt.defaults["fused"] is True
    off = config_lib.load_config(RunConfig, None, ["optim.lr=1e-3", "optim.fused='off'"])
    assert not setup.build_optimizer(model, off.optim, torch.device("cpu")).defaults["fused"]


def test_pin_memory_switch_exists():
    cfg = config_lib.load_config(RunConfig, None, ["data.pin_memory=false", "data.num_workers=2"])
    assert cfg.data.pin_memory is False and cfg.data.num_workers == 2
