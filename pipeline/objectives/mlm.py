"""Masked-LM denoising (BERT): corrupt tokens, predict the originals.

In the energy-based view, BERT is a contrastive method: the corrupted sequence is a
contrastive sample near the data and the model learns to map it back to low energy (high
likelihood of the original tokens).

Masking follows BERT: each non-special token is selected with `mask_prob`; a selected token
becomes [MASK] with `mask_replace`, a random token with `random_replace`, and stays itself
otherwise. With `whole_word_mask`, all pieces of a word share one decision. The loss is computed
only on selected positions, and with `sparse_prediction` the prediction head (a vocab-sized
matmul, the costliest layer of a small BERT) runs only on them too (as in cramming and
academic-budget-bert). The model is any registered encoder family (pipeline/models/base.py):
this module reaches its encoder and LM head only through that interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import registry
from pipeline.data import text
from pipeline.data.sources import DataError
from pipeline.data.tokenizer import word_continuation
from pipeline.models.base import ModelFamily, encoder_family
from pipeline.objectives.base import Datasets, Objective, ObjectiveConfig, Task
from pipeline.protocols import RunContext

IGNORE = -100


@dataclass
class MaskingSpec:
    mask_prob: float
    mask_replace: float
    random_replace: float
    whole_word_mask: bool


def mask_tokens(
    input_ids: torch.Tensor,
    spec: MaskingSpec,
    special_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted input_ids, labels with IGNORE where not selected)."""
    ids = input_ids.long()
    draw = torch.rand(ids.shape, generator=generator)
    if spec.whole_word_mask and continuation is not None:
        # every piece takes the draw of the first piece of its word
        starts = ~continuation[ids]
        starts[:, 0] = True
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        word_start = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        draw = draw.gather(1, word_start)
    selected = (draw < spec.mask_prob) & ~torch.isin(ids, special_ids)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    how = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (how < spec.mask_replace)
    to_random = (
        selected & (how >= spec.mask_replace) & (how < spec.mask_replace + spec.random_replace)
    )
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    corrupted = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


class SparseMaskedLM(nn.Module):
    """Wraps a stock `*ForMaskedLM` model; forward returns (loss, metrics). The wrapped model
    stays a stock transformers model, so the export is a plain `save_pretrained`. The family
    (a class, not a module: no second name for the same parameters) says where its encoder
    and LM head are."""

    def __init__(self, model: nn.Module, family: type[ModelFamily], sparse_prediction: bool = True):
        super().__init__()
        self.model = model
        self.family = family
        self.sparse_prediction = sparse_prediction

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask=None,
        masked_positions: torch.Tensor | None = None,
        masked_labels: torch.Tensor | None = None,
    ):
        if self.sparse_prediction:
            encoder = self.family.encoder(self.model)
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            if masked_positions is not None:
                # positions found by collate, padded to a fixed count: a static shape for
                # torch.compile and CUDA graphs, and no device-to-host sync of `hidden[mask]`
                hidden = hidden.flatten(0, 1).index_select(0, masked_positions)
                targets = masked_labels
            else:
                where = labels != IGNORE
                hidden, targets = hidden[where], labels[where]
            logits = self.family.mlm_head(self.model)(hidden)
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            where = labels != IGNORE
            logits, targets = logits[where], labels[where]
        loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)
        with torch.no_grad():
            real = targets != IGNORE
            hits = ((logits.argmax(-1) == targets) & real).sum()
            accuracy = hits.float() / real.sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "mlm_accuracy": accuracy}


def prediction_slots(selected: int, tokens: int, rate: float, static: bool) -> int:
    """How many masked positions a batch carries, padding included (a multiple of 8).

    static (torch.compile / CUDA graphs): one count for every batch of this size, the mean
    plus 6 standard deviations of the binomial draw, so shapes never change in practice; a
    batch with more selected tokens (about 1 in 10^9, more often with whole-word masking) gets
    a larger count (one recompilation). Otherwise: just the selected tokens, rounded up."""
    want = selected
    if static:
        mean = tokens * rate
        want = max(selected, math.ceil(mean + 6.0 * math.sqrt(mean * (1.0 - rate))))
    return max(8, -(-want // 8) * 8)


@registry.register("objective", "mlm")
class MaskedLM(Objective):
    task = Task(
        pipeline_tag="fill-mask",
        name="Masked language modelling",
        metrics={
            "mlm_accuracy": ("accuracy", "masked-token accuracy"),
            "perplexity": ("perplexity", "perplexity"),
        },
    )

    @dataclass
    class Config(ObjectiveConfig):
        name: str = "mlm"
        mask_prob: float = 0.15
        """Fraction of tokens selected for prediction (0.15 as BERT; 0.30 as MosaicBERT)."""
        mask_replace: float = 0.8
        """Of the selected tokens, the fraction replaced by [MASK]."""
        random_replace: float = 0.1
        """Of the selected tokens, the fraction replaced by a random token (the rest stay)."""
        whole_word_mask: bool = False
        """Mask all WordPiece pieces of a word together."""
        sparse_prediction: bool = True
        """Run the prediction head only on the selected positions."""

        def validate(self) -> list[str]:
            problems = []
            if not 0 < self.mask_prob < 1:
                problems.append(f"mask_prob must be in (0, 1), got {self.mask_prob}")
            if self.mask_replace < 0 or self.random_replace < 0:
                problems.append("mask_replace and random_replace must be >= 0")
            if self.mask_replace + self.random_replace > 1:
                problems.append(
                    f"mask_replace + random_replace must be <= 1, got "
                    f"{self.mask_replace + self.random_replace}"
                )
            return problems

    def build_data(self, ctx: RunContext) -> Datasets:
        corpus = text.load_corpus(ctx)
        tok = text.get_tokenizer(ctx, corpus, need_mask=True)
        ctx.tokenizer = tok
        self._seq_len = ctx.cfg.data.block_size
        self._setup_masking(tok, ctx)
        template = encoder_family(ctx.cfg.model.name, "mlm").block_template(tok)
        train, ev = text.packed(ctx, corpus, tok, template)
        return Datasets(train, ev, tokens_per_example=ctx.cfg.data.block_size)

    def _setup_masking(self, tok, ctx: RunContext) -> None:
        self.spec = MaskingSpec(
            self.cfg.mask_prob,
            self.cfg.mask_replace,
            self.cfg.random_replace,
            self.cfg.whole_word_mask,
        )
        self.special_ids = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
        self.mask_id = tok.mask_token_id
        self.vocab_size = len(tok)
        self.continuation = word_continuation(tok) if self.cfg.whole_word_mask else None

    def build_module(self, ctx: RunContext) -> nn.Module:
        family = encoder_family(ctx.cfg.model.name, "mlm")
        tok = ctx.tokenizer
        model = family.build_masked_lm(ctx.cfg.model, len(tok), tok.pad_token_id)
        if model.config.vocab_size < len(tok):
            raise DataError(
                f"the tokenizer has {len(tok)} tokens but the model's vocabulary has "
                f"{model.config.vocab_size}; use the model's tokenizer or a larger model.vocab_size"
            )
        if model.config.max_position_embeddings < ctx.cfg.data.block_size:
            raise DataError(
                f"data.block_size={ctx.cfg.data.block_size} exceeds the model's "
                f"max_position_embeddings={model.config.max_position_embeddings}"
            )
        # a compiled module wants one shape: pad the masked positions to a fixed count
        self.static_shapes = bool(ctx.cfg.engine.compile)
        return SparseMaskedLM(model, family, self.cfg.sparse_prediction)

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = examples["input_ids"]
        if not torch.is_tensor(ids):
            ids = torch.as_tensor(ids)
        corrupted, labels = mask_tokens(
            ids,
            self.spec,
            self.special_ids,
            self.mask_id,
            self.vocab_size,
            generator,
            self.continuation,
        )
        batch = {"input_ids": corrupted, "labels": labels}
        if self.cfg.sparse_prediction:
            flat = labels.flatten()
            where = (flat != IGNORE).nonzero().squeeze(1)
            static = getattr(self, "static_shapes", False)
            slots = prediction_slots(len(where), flat.numel(), self.cfg.mask_prob, static)
            batch["masked_positions"] = torch.zeros(slots, dtype=torch.long)
            batch["masked_positions"][: len(where)] = where
            batch["masked_labels"] = torch.full((slots,), IGNORE, dtype=torch.long)
            batch["masked_labels"][: len(where)] = flat[where]
        return batch

    def flops_per_example(self, module: nn.Module) -> float:
        # the FLOPs actually done: with sparse prediction the LM head runs on the selected
        # (about mask_prob of the) tokens only
        predicted = self.cfg.mask_prob if self.cfg.sparse_prediction else 1.0
        seq = self.seq_len
        return seq * module.family.flops_per_token(module.model, seq, predicted)

    @property
    def seq_len(self) -> int:
        return getattr(self, "_seq_len", 128)

    def export(self, module: nn.Module, folder: str, ctx: RunContext) -> None:
        module.model.save_pretrained(folder, safe_serialization=True)
        if ctx.tokenizer is not None:
            ctx.tokenizer.save_pretrained(folder)

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        if "loss" in metrics:
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        return metrics
