"""RoBERTa (`model.name=roberta`, Liu et al. 2019): BERT's shapes with a byte-level BPE
tokenizer (<s> </s> <pad> <mask>), no next-sentence task, positions counted from pad + 1."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from transformers import (
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaModel,
)

from pipeline.data.tokenizer import train_byte_bpe
from pipeline.models.base import EncoderConfig, ModelFamily
from pipeline.models.bert import PRESETS, bert_fields
from pipeline.registry import register


@register("model", "roberta")
class Roberta(ModelFamily):
    masked_lm_class = RobertaForMaskedLM
    encoder_class = RobertaModel
    tokenizer_kind = "byte-bpe-roberta"
    position_offset = None  # RoBERTa's positions start at pad_token_id + 1

    @dataclass
    class Config(EncoderConfig):
        hf_config_class: ClassVar[Any] = RobertaConfig
        presets: ClassVar[dict[str, tuple[int, int, int, int]]] = PRESETS
        name: str = "roberta"

    @classmethod
    def hf_config(cls, cfg: Config, vocab_size: int, pad_token_id: int = 1) -> RobertaConfig:
        fields = bert_fields(cfg, vocab_size, pad_token_id)
        # positions run from pad_token_id + 1: 512 tokens need 514 embeddings (as roberta-base)
        fields["max_position_embeddings"] = cfg.max_position_embeddings + pad_token_id + 1
        return RobertaConfig(**{**fields, "type_vocab_size": 1, **cfg.overrides})

    @classmethod
    def max_tokens(cls, config: Any) -> int:
        return config.max_position_embeddings - config.pad_token_id - 1

    @classmethod
    def encoder_kwargs(cls) -> dict[str, Any]:
        return {"add_pooling_layer": False}

    @staticmethod
    def mlm_head(model: nn.Module) -> nn.Module:
        return model.lm_head  # dense, GELU, LayerNorm, decoder tied to the embeddings

    @classmethod
    def train_tokenizer(
        cls, texts: Iterable[str], vocab_size: int, lowercase: bool
    ) -> PreTrainedTokenizerBase:
        return train_byte_bpe(texts, vocab_size, lowercase, style="roberta")
