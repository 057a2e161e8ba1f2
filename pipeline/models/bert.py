"""BERT (`model.name=bert`): size presets, any `BertConfig` field, or a checkpoint/export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from pipeline.models.base import ModelConfig, ModelFamily
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


@register("model", "bert")
class Bert(ModelFamily):
    masked_lm_class = BertForMaskedLM
    encoder_class = BertModel

    @dataclass
    class Config(ModelConfig):
        name: str = "bert"
        preset: str = "tiny"
        """Size preset: tiny, mini, small, medium, base or large."""
        from_pretrained: str | None = None
        """Start from this checkpoint/export (a local folder or Hub name) instead of from scratch."""
        max_position_embeddings: int = 512
        """Longest sequence the position embeddings cover (>= data.block_size)."""
        dropout: float = 0.1
        """Hidden and attention dropout."""
        attn_implementation: str = "sdpa"
        """Attention kernel: sdpa (PyTorch scaled-dot-product, picks FlashAttention on GPU) or eager."""
        gradient_checkpointing: bool = False
        """Recompute each layer's activations in the backward pass instead of keeping them:
        less activation memory for about a third more compute (the same loss)."""
        overrides: dict[str, Any] = field(default_factory=dict)
        """Any other `BertConfig` field, e.g. {num_hidden_layers: 6}."""

        def validate(self) -> list[str]:
            problems = []
            if self.preset not in PRESETS:
                problems.append(f"preset {self.preset!r} unknown; choices: {', '.join(PRESETS)}")
            if not 0.0 <= self.dropout < 1.0:
                problems.append(f"dropout must be in [0, 1), got {self.dropout}")
            unknown = sorted(set(self.overrides) - set(BertConfig().to_dict()))
            if unknown:
                problems.append(f"overrides: {', '.join(unknown)} are not BertConfig fields")
            return problems

    @classmethod
    def hf_config(cls, cfg: Config, vocab_size: int, pad_token_id: int = 0) -> BertConfig:
        hidden, layers, heads, inter = PRESETS[cfg.preset]
        fields = dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=cfg.max_position_embeddings,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=pad_token_id,
        )
        fields.update(cfg.overrides)
        return BertConfig(**fields)

    @classmethod
    def encoder_kwargs(cls) -> dict[str, Any]:
        return {"add_pooling_layer": False}  # sentence embeddings pool the hidden states

    @staticmethod
    def mlm_head(model: nn.Module) -> nn.Module:
        return model.cls  # transform (dense, GELU, LayerNorm) + decoder tied to the embeddings
