"""The learning rate follows the model width when optim.lr is unset (the recipe's size can be
changed on the command line without the lr going stale)."""

from __future__ import annotations

import pytest

from pipeline import config as config_lib
from pipeline import registry
from pipeline.objectives.base import OTHER_LR, transformer_width, width_lr
from pipeline.train_config import RunConfig


def test_width_rule():
    assert width_lr(128) == pytest.approx(2e-3)
    assert width_lr(256) == pytest.approx(1e-3)
    assert width_lr(768) == pytest.approx(2e-3 / 6)
    assert width_lr(64) == pytest.approx(2e-3)  # narrower models keep the tiny lr


@pytest.mark.parametrize("preset, hidden", [("tiny", 128), ("mini", 256), ("small", 512)])
def test_the_mlm_objective_reads_the_width_of_the_model_it_built(preset, hidden):
    family = registry.get("model", "bert")
    cfg = config_lib.load_config(RunConfig, "configs/mlm/tiny.yaml", [f"model.preset={preset}"])
    assert cfg.optim.lr is None  # the shipped recipe leaves it to the model size
    model = family.build_masked_lm(cfg.model, 1000, 0)
    objective = registry.get("objective", "mlm")(cfg.objective)
    assert transformer_width(model) == hidden
    assert objective.default_lr(model) == pytest.approx(width_lr(hidden))


def test_fine_tuning_does_not_take_the_pretraining_rule():
    import torch

    from pipeline.objectives.base import Objective, Task

    class FineTune(Objective):
        task = Task(finetuned=True)

    from transformers import BertConfig, BertModel

    model = torch.nn.Sequential(BertModel(BertConfig(hidden_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64)))  # fmt: skip
    assert FineTune(None).default_lr(model) == OTHER_LR
    assert Objective(None).default_lr(model) == width_lr(64)
