"""BERT (`model.name=bert`): size presets, any `BertConfig` field, or a checkpoint/export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from pipeline.models.base import EncoderConfig, ModelFamily
from pipeline.registry import register

# (hidden, layers, heads, intermediate): tiny/mini/small as in Turc et al. (2019), base/large as BERT
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 2, 2, 512),
    "mini": (256, 4, 4, 1024),
    "small": (512, 4, 8, 2048),
    "medium": (512, 8, 8, 2048),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


def bert_fields(cfg: EncoderConfig, vocab_size: int, pad_token_id: int) -> dict[str, Any]:
    """The BertConfig fields of a preset (RoBERTa's config takes the same ones)."""
    return dict(
        vocab_size=vocab_size,
        **cfg.shape_fields(),
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=pad_token_id,
    )


@register("model", "bert")
class Bert(ModelFamily):
    masked_lm_class = BertForMaskedLM
    encoder_class = BertModel

    @dataclass
    class Config(EncoderConfig):
        hf_config_class: ClassVar[Any] = BertConfig
        presets: ClassVar[dict[str, tuple[int, int, int, int]]] = PRESETS
        name: str = "bert"

    @classmethod
    def hf_config(cls, cfg: Config, vocab_size: int, pad_token_id: int = 0) -> BertConfig:
        return BertConfig(**{**bert_fields(cfg, vocab_size, pad_token_id), **cfg.overrides})

    @classmethod
    def encoder_kwargs(cls) -> dict[str, Any]:
        return {"add_pooling_layer": False}  # sentence embeddings pool the hidden states

    @staticmethod
    def mlm_head(model: nn.Module) -> nn.Module:
        return model.cls  # transform (dense, GELU, LayerNorm) + decoder tied to the embeddings
