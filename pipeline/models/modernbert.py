"""ModernBERT (`model.name=modernbert`, Warner et al. 2024): pre-norm, GeGLU, rotary positions,
alternating global and local (sliding-window) attention, no biases; byte-level BPE tokenizer
with BERT's special tokens ([CLS] [SEP] [PAD] [MASK] [UNK]) as the released models."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertModel,
    PreTrainedTokenizerBase,
)

from pipeline.data.tokenizer import train_byte_bpe
from pipeline.models.base import EncoderConfig, ModelFamily, linear_parameters
from pipeline.registry import register

# (hidden, layers, heads, intermediate); base and large are ModernBERT's own shapes (the GLU's
# intermediate is 1.5 x hidden for base), the small ones keep those proportions
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 2, 2, 192),
    "mini": (256, 4, 4, 384),
    "small": (512, 4, 8, 768),
    "medium": (512, 8, 8, 768),
    "base": (768, 22, 12, 1152),
    "large": (1024, 28, 16, 2624),
}


@register("model", "modernbert")
class ModernBert(ModelFamily):
    masked_lm_class = ModernBertForMaskedLM
    encoder_class = ModernBertModel
    tokenizer_kind = "byte-bpe-bert"

    @dataclass
    class Config(EncoderConfig):
        hf_config_class: ClassVar[Any] = ModernBertConfig
        presets: ClassVar[dict[str, tuple[int, int, int, int]]] = PRESETS
        name: str = "modernbert"
        dropout: float = 0.0
        """Attention, embedding and MLP dropout (ModernBERT trains without)."""
        local_attention: int = 128
        """Window of the local-attention layers (every third layer is global)."""

    @classmethod
    def hf_config(cls, cfg: Config, vocab_size: int, pad_token_id: int = 0) -> ModernBertConfig:
        fields = dict(
            vocab_size=vocab_size,
            **cfg.shape_fields(),
            max_position_embeddings=cfg.max_position_embeddings,
            attention_dropout=cfg.dropout,
            embedding_dropout=cfg.dropout,
            mlp_dropout=cfg.dropout,
            local_attention=cfg.local_attention,
            pad_token_id=pad_token_id,
            # the released models' ids (50281...) mean nothing in a trained vocabulary
            bos_token_id=None,
            eos_token_id=None,
            cls_token_id=None,
            sep_token_id=None,
        )
        fields.update(cfg.overrides)
        return ModernBertConfig(**fields)

    @staticmethod
    def mlm_head(model: nn.Module) -> nn.Module:
        # the prediction head (dense, GELU, LayerNorm) then the decoder tied to the embeddings
        return nn.Sequential(model.head, model.decoder)

    @classmethod
    def flops_per_token(
        cls, model: nn.Module, seq_len: int, predicted_fraction: float = 1.0
    ) -> float:
        """As the base count, with local layers attending to their window only."""
        return (
            cls.encoder_flops_per_token(cls.encoder(model), seq_len)
            + 6.0 * linear_parameters(cls.mlm_head(model)) * predicted_fraction
        )

    @classmethod
    def encoder_flops_per_token(cls, encoder: nn.Module, seq_len: int) -> float:
        config = encoder.config
        window = 2 * config.sliding_window + 1
        keys = [
            min(seq_len, window) if kind == "sliding_attention" else seq_len
            for kind in config.layer_types
        ]
        return 6.0 * linear_parameters(encoder) + 12.0 * config.hidden_size * sum(keys)

    @classmethod
    def document_inputs(
        cls, model: nn.Module, input_ids: torch.Tensor, document_ids: torch.Tensor
    ) -> dict[str, Any]:
        """The block-diagonal mask for the global layers, and intersected with the window for
        the local ones (a prepared mask skips transformers' own window); a varlen kernel
        applies the window inside each segment itself."""
        inputs = super().document_inputs(model, input_ids, document_ids)
        same = inputs["attention_mask"]
        if same is None:  # varlen segments
            return inputs
        n = document_ids.shape[1]
        pos = torch.arange(n, device=document_ids.device)
        near = (pos[:, None] - pos[None, :]).abs() <= model.config.sliding_window
        inputs["attention_mask"] = {"full_attention": same, "sliding_attention": same & near}
        return inputs

    @classmethod
    def train_tokenizer(
        cls, texts: Iterable[str], vocab_size: int, lowercase: bool
    ) -> PreTrainedTokenizerBase:
        return train_byte_bpe(texts, vocab_size, lowercase, style="bert")
