"""The model-family interface: what the text objectives need of a transformer encoder family.

A family (BERT today; one module per family in pipeline/models/) is a class registered with
`@register("model", NAME)` that says how to
  - build its stock transformers masked-LM model (`build_masked_lm`, the class the export is
    loaded with) or bare encoder (`build_encoder`, for InfoNCE) from a size preset, config
    overrides or `from_pretrained`,
  - reach its encoder and its masked-LM head inside the masked-LM model (`encoder`, `mlm_head`):
    sparse prediction runs the head on the masked positions only,
  - name the parameters tied to others (`tied_parameters`: absent from safetensors files),
  - count training FLOPs per token (`flops_per_token`, for MFU),
  - lay out a packed block (`block_template`: the special tokens around and between documents).
The objectives, packing and export code against this interface, never against BERT's names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from pipeline import registry
from pipeline.config import ConfigError
from pipeline.data.packing import BlockTemplate
from pipeline.data.tokenizer import train_wordpiece
from pipeline.train_config import ModelConfig

__all__ = [
    "BlockTemplate",
    "EncoderConfig",
    "ModelConfig",
    "ModelFamily",
    "document_positions",
    "encoder_family",
    "linear_parameters",
]


@dataclass
class EncoderConfig(ModelConfig):
    """The settings every transformer family shares; a family's `Config` subclasses it and sets
    `hf_config_class` (whose fields `overrides` may set) and `presets`."""

    hf_config_class: ClassVar[Any] = None
    presets: ClassVar[dict[str, tuple[int, int, int, int]]] = {}

    preset: str = "tiny"
    """Size preset: tiny, mini, small, medium, base or large."""
    from_pretrained: str | None = None
    """Start from this checkpoint/export (a local folder or Hub name) instead of from scratch."""
    max_position_embeddings: int = 512
    """Longest sequence the position embeddings cover (>= data.block_size)."""
    dropout: float = 0.1
    """Hidden and attention dropout."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "sdpa"
    """Attention kernel: sdpa (PyTorch scaled-dot-product: its own flash/memory-efficient
    kernels on GPU), eager, or flash_attention_2/3 (the flash-attn package, CUDA only; with
    data.document_attention it runs packed documents unpadded, as varlen segments)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them:
    less activation memory for about a third more compute (the same loss)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Any other field of the family's transformers config, e.g. {num_hidden_layers: 6}."""

    def shape_fields(self) -> dict[str, int]:
        """The transformers config fields of the size preset (every family names them alike)."""
        hidden, layers, heads, inter = self.presets[self.preset]
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=inter)  # fmt: skip

    def validate(self) -> list[str]:
        problems = []
        if self.preset not in self.presets:
            problems.append(
                f"preset {self.preset!r} unknown for model.name={self.name}; "
                f"choices: {', '.join(self.presets)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hf_config_class is not None:
            known = set(self.hf_config_class().to_dict())
            unknown = sorted(set(self.overrides) - known)
            if unknown:
                problems.append(
                    f"overrides: {', '.join(unknown)} are not {self.hf_config_class.__name__} "
                    f"fields (model.name={self.name})"
                )
        return problems


# attention kernels that take packed documents as segments (cu_seqlens) instead of a mask
VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3"}


def check_attention(cfg: ModelConfig) -> None:
    """A FlashAttention kernel needs its package and a CUDA GPU: say so before building."""
    impl = getattr(cfg, "attn_implementation", "sdpa")
    if impl not in VARLEN_ATTENTION:
        return
    import importlib.util

    package = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}[impl]
    if importlib.util.find_spec(package) is None or not torch.cuda.is_available():
        raise ConfigError(
            [f"model.attn_implementation={impl} needs the {package} package and a CUDA GPU "
             f"(found: package {'yes' if importlib.util.find_spec(package) else 'no'}, "
             f"CUDA {'yes' if torch.cuda.is_available() else 'no'}); use sdpa"]
        )  # fmt: skip


def document_positions(document_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its own document (0 at every document's first token)."""
    pos = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    new = torch.ones_like(document_ids, dtype=torch.bool)
    new[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=1).values
    return pos - start


def linear_parameters(module: nn.Module) -> int:
    """Parameters that take part in matrix products (nn.Linear weights and biases): the `N` of
    the 6N FLOPs-per-token rule. Embedding lookups and norms do (almost) no FLOPs. Partitioned
    (ZeRO-3) parameters count with their full size (`ds_numel`)."""
    seen: set[int] = set()
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += getattr(p, "ds_numel", p.numel())
    return total


class ModelFamily:
    """Base of the transformer encoder families. Subclasses set the class attributes and
    implement the builders; the defaults here follow transformers' conventions."""

    Config: ClassVar[type[ModelConfig]] = ModelConfig
    is_energy_model: ClassVar[bool] = False
    masked_lm_class: ClassVar[Any]
    """The stock `*ForMaskedLM` class (what `AutoModelForMaskedLM` resolves the export to)."""
    encoder_class: ClassVar[Any]
    """The stock bare encoder class (`*Model`), for objectives that need no LM head."""

    @classmethod
    def hf_config(cls, cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> Any:
        """The transformers config of this size preset with `cfg.overrides` applied."""
        raise NotImplementedError

    @classmethod
    def build_masked_lm(cls, cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> nn.Module:
        check_attention(cfg)
        if cfg.from_pretrained:
            # trust_remote_code stays off: only stock transformers classes are loaded
            model = cls.masked_lm_class.from_pretrained(
                cfg.from_pretrained, attn_implementation=cfg.attn_implementation
            )
        else:
            config = cls.hf_config(cfg, vocab_size, pad_token_id)
            config._attn_implementation = cfg.attn_implementation
            # _from_config, not the constructor: under DeepSpeed ZeRO-3 it builds the model
            # partitioned (zero.Init) and initialises it module by module, gathered
            model = cls.masked_lm_class._from_config(config)
        return cls.finish(model, cfg)

    @classmethod
    def build_encoder(cls, cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> nn.Module:
        check_attention(cfg)
        if cfg.from_pretrained:
            model = cls.encoder_class.from_pretrained(
                cfg.from_pretrained, attn_implementation=cfg.attn_implementation,
                **cls.encoder_kwargs(),
            )  # fmt: skip
        else:
            config = cls.hf_config(cfg, vocab_size, pad_token_id)
            config._attn_implementation = cfg.attn_implementation
            model = cls.encoder_class._from_config(config, **cls.encoder_kwargs())
        return cls.finish(model, cfg)

    @classmethod
    def finish(cls, model: nn.Module, cfg: ModelConfig) -> nn.Module:
        """Settings every family applies the same way once the model exists."""
        if getattr(cfg, "gradient_checkpointing", False):
            # non-reentrant: works with inputs that need no grad and with DDP's hooks
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable({"use_reentrant": False})
        return model

    @classmethod
    def max_tokens(cls, config: Any) -> int:
        """Longest input the position embeddings cover (RoBERTa: 2 fewer than its table)."""
        return config.max_position_embeddings

    @classmethod
    def encoder_kwargs(cls) -> dict[str, Any]:
        """Extra constructor arguments of the bare encoder (BERT: no pooler)."""
        return {}

    @staticmethod
    def encoder(model: nn.Module) -> nn.Module:
        """The encoder inside a task model (transformers' `base_model`)."""
        return model.base_model

    @staticmethod
    def mlm_head(model: nn.Module) -> nn.Module:
        """The module mapping final hidden states to vocabulary logits."""
        raise NotImplementedError

    @classmethod
    def tied_parameters(cls, model: nn.Module) -> list[str]:
        """Names of parameters that share storage with another (safetensors keeps one)."""
        return list(getattr(model, "_tied_weights_keys", None) or [])

    @classmethod
    def flops_per_token(
        cls, model: nn.Module, seq_len: int, predicted_fraction: float = 1.0
    ) -> float:
        """Training FLOPs (forward + backward) per input token of the masked-LM model: 6 x the
        encoder's matmul parameters, attention's score and value products (12 x layers x
        hidden x sequence, PaLM appendix B), and the LM head's matmuls on the fraction of
        tokens it actually runs on (all of them without sparse prediction)."""
        config = model.config
        encoder = cls.encoder(model)
        head = linear_parameters(cls.mlm_head(model))
        attention = 12.0 * config.num_hidden_layers * config.hidden_size * seq_len
        return 6.0 * linear_parameters(encoder) + attention + 6.0 * head * predicted_fraction

    @classmethod
    def encoder_flops_per_token(cls, encoder: nn.Module, seq_len: int) -> float:
        """The same count for a bare encoder (no LM head)."""
        config = encoder.config
        attention = 12.0 * config.num_hidden_layers * config.hidden_size * seq_len
        return 6.0 * linear_parameters(encoder) + attention

    @staticmethod
    def block_template(tokenizer: PreTrainedTokenizerBase) -> BlockTemplate:
        """BERT/RoBERTa style: the tokenizer's cls (<s>) starts, sep (</s>) separates and ends."""
        return BlockTemplate.of(tokenizer)

    tokenizer_kind: ClassVar[str] = "wordpiece"
    """What `train_tokenizer` trains (part of the trained tokenizer's cache key)."""

    @classmethod
    def train_tokenizer(
        cls, texts: Iterable[str], vocab_size: int, lowercase: bool
    ) -> PreTrainedTokenizerBase:
        """The family's tokenizer trained on the corpus (BERT: WordPiece)."""
        return train_wordpiece(texts, vocab_size, lowercase)

    @classmethod
    def tokenizer_trainer(cls) -> tuple[str, Callable[[Iterable[str], int, bool], Any]]:
        """(kind, trainer) for `data.text.get_tokenizer`."""
        return cls.tokenizer_kind, cls.train_tokenizer

    position_offset: ClassVar[int | None] = 0
    """Position id of a sequence's first token (RoBERTa: pad_token_id + 1, None = that)."""

    @classmethod
    def document_inputs(
        cls, model: nn.Module, input_ids: torch.Tensor, document_ids: torch.Tensor
    ) -> dict[str, Any]:
        """Encoder inputs that keep packed documents apart (data.document_attention): positions
        that restart at each document and, for SDPA/eager, a block-diagonal attention mask (a
        token sees only its own document), so a document in a block is encoded as it is alone.

        With a varlen kernel (FlashAttention) no mask is built: the block rows are laid end to
        end as one sequence whose documents are segments given by cumulative lengths
        (transformers' packed-sequence path), so no attention is computed between documents at
        all. Outputs then come back as [1, rows x block, ...]: reshape them to the rows."""
        offset = cls.position_offset
        if offset is None:
            offset = model.config.pad_token_id + 1
        positions = document_positions(document_ids) + offset
        if model.config._attn_implementation in VARLEN_ATTENTION:
            from transformers.modeling_flash_attention_utils import (
                prepare_fa_kwargs_from_position_ids,
            )

            flat = positions.reshape(1, -1)  # every row starts at a restart, hence a segment
            (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(flat)
            return {"input_ids": input_ids.reshape(1, -1), "attention_mask": None,
                    "position_ids": flat, "cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k,
                    "max_length_q": int(max_q), "max_length_k": int(max_k)}  # fmt: skip
        same = document_ids[:, None, :, None] == document_ids[:, None, None, :]
        return {"input_ids": input_ids, "attention_mask": same, "position_ids": positions}


def families() -> list[str]:
    """Names of the registered transformer encoder families."""
    return [n for n in registry.names("model") if _is_family(registry.get("model", n))]


def _is_family(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, ModelFamily)


def encoder_family(name: str, objective: str) -> type[ModelFamily]:
    """The transformer family registered as `name`, or a ConfigError listing the families."""
    family = registry.get("model", name)
    if not _is_family(family):
        raise ConfigError(
            [f"objective {objective} needs a transformer encoder, got model.name={name}; "
             f"choices: {', '.join(families())}"]
        )  # fmt: skip
    return family
