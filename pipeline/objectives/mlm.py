"""Masked-LM denoising (BERT): corrupt tokens, predict the originals.

In the energy-based view, BERT is a contrastive method: the corrupted sequence is a
contrastive sample near the data and the model learns to map it back to low energy (high
likelihood of the original tokens).

Masking follows BERT: each non-special token is selected with `mask_prob`; a selected token
becomes [MASK] with `mask_replace`, a random token with `random_replace`, and stays itself
otherwise. With `masking=word` (or `whole_word_mask`), all pieces of a word share one decision
(word boundaries from the tokenizer: WordPiece `##`, byte-level BPE `Ġ`, SentencePiece `▁`);
with `masking=span` (SpanBERT, Joshi et al. 2020) contiguous spans of whole words are selected,
lengths drawn from a geometric distribution clipped at `span_max` with mean `span_mean`, until
`mask_prob` of the row's tokens are selected (the last span is cut at that budget, so the rate
is the configured one). The loss is computed
only on selected positions, and with `sparse_prediction` the prediction head (a vocab-sized
matmul, the costliest layer of a small BERT) runs only on them too (as in cramming and
academic-budget-bert). The model is any registered encoder family (pipeline/models/base.py):
this module reaches its encoder and LM head only through that interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import registry
from pipeline.data import text
from pipeline.data.packing import BlockTemplate
from pipeline.data.sources import DataError
from pipeline.data.tokenizer import word_continuation, word_marking
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
    span: bool = False
    span_mean: float = 3.8
    span_max: int = 10


def span_length_probs(mean: float, longest: int) -> np.ndarray:
    """P(length = 1..longest) of a geometric distribution clipped at `longest` whose mean is
    `mean` (SpanBERT: p = 0.2 clipped at 10, mean 3.8); p found by bisection."""
    lengths = np.arange(1, longest + 1)

    def dist(p: float) -> np.ndarray:
        w = p * (1 - p) ** (lengths - 1)
        return w / w.sum()

    lo, hi = 1e-9, 1.0  # the mean falls as p rises
    for _ in range(100):
        mid = (lo + hi) / 2
        if (dist(mid) * lengths).sum() > mean:
            lo = mid
        else:
            hi = mid
    return dist((lo + hi) / 2)


def span_selection(
    ids: torch.Tensor,
    special: torch.Tensor,
    word_start: torch.Tensor,
    spec: MaskingSpec,
    generator: torch.Generator,
) -> torch.Tensor:
    """Bool [rows, len]: spans of whole words (units starting where `word_start`), about
    `mask_prob` of each row's maskable tokens, exactly that many after rounding."""
    probs = span_length_probs(spec.span_mean, spec.span_max)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    maskable = (~special).numpy()
    starts = (word_start & ~special).numpy()
    selected = np.zeros(ids.shape, dtype=bool)
    for r in range(ids.shape[0]):
        positions = np.flatnonzero(maskable[r])
        if len(positions) == 0:
            continue
        unit_of = np.cumsum(starts[r][positions]) - 1  # word index of each maskable token
        unit_of -= unit_of.min()
        n_units = int(unit_of.max()) + 1
        bounds = np.searchsorted(unit_of, np.arange(n_units + 1))  # token range of each unit
        budget = int(np.floor(spec.mask_prob * len(positions) + rng.random()))
        taken = np.zeros(n_units, dtype=bool)
        count, tries = 0, 0
        while count < budget and tries < 20 * n_units:
            tries += 1
            length = int(rng.choice(len(probs), p=probs)) + 1
            first = int(rng.integers(n_units))
            for u in range(first, min(first + length, n_units)):
                if taken[u]:
                    continue
                taken[u] = True
                toks = positions[bounds[u] : bounds[u + 1]][: budget - count]
                selected[r, toks] = True
                count += len(toks)
                if count >= budget:
                    break
    return torch.from_numpy(selected)


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
    if spec.span:
        special = torch.isin(ids, special_ids)
        if continuation is not None:
            word_start = ~continuation[ids]
        else:
            word_start = torch.ones_like(ids, dtype=torch.bool)
        prev_special = torch.ones_like(special)
        prev_special[:, 1:] = special[:, :-1]
        selected = span_selection(ids, special, word_start | prev_special, spec, generator)
        return _corrupt(ids, selected, spec, mask_id, vocab_size, generator)
    draw = torch.rand(ids.shape, generator=generator)
    if spec.whole_word_mask and continuation is not None:
        # every piece takes the draw of the first piece of its word
        starts = ~continuation[ids]
        starts[:, 0] = True
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        word_start = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        draw = draw.gather(1, word_start)
    selected = (draw < spec.mask_prob) & ~torch.isin(ids, special_ids)
    return _corrupt(ids, selected, spec, mask_id, vocab_size, generator)


def _corrupt(
    ids: torch.Tensor,
    selected: torch.Tensor,
    spec: MaskingSpec,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
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


def document_ids(ids: torch.Tensor, sep: int) -> torch.Tensor:
    """Index of the document each token of a packed block belongs to: a document's tokens and
    the separator after it share one (the block's start token goes with the first)."""
    out = torch.zeros_like(ids, dtype=torch.long)
    out[:, 1:] = (ids[:, :-1] == sep).long().cumsum(1)
    return out


def family_template(ctx: RunContext, tok) -> BlockTemplate:
    return encoder_family(ctx.cfg.model.name, "mlm").block_template(tok)


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
        document_ids: torch.Tensor | None = None,
    ):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if document_ids is not None:  # data.document_attention: documents apart in a block
            inputs = self.family.document_inputs(self.model, input_ids, document_ids)
        if self.sparse_prediction:
            encoder = self.family.encoder(self.model)
            # [rows, block, hidden] also when a varlen kernel ran the rows as one sequence
            hidden = encoder(**inputs)[0].view(*input_ids.shape, -1)
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
            logits = self.model(**inputs).logits.view(*input_ids.shape, -1)
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
        """Mask all pieces of a word together (the same as masking=word)."""
        masking: Literal["token", "word", "span"] = "token"
        """token: each token on its own (BERT); word: whole words (the tokenizer's word
        boundaries); span: SpanBERT's contiguous spans of whole words."""
        span_mean: float = 3.8
        """masking=span: mean span length in words (SpanBERT: 3.8, geometric p=0.2)."""
        span_max: int = 10
        """masking=span: longest span in words (SpanBERT: 10)."""
        sparse_prediction: bool = True
        """Run the prediction head only on the selected positions."""

        def validate(self) -> list[str]:
            problems = []
            if self.masking == "span" and not (
                self.span_max >= 1 and 1 <= self.span_mean < (self.span_max + 1) / 2
            ):
                problems.append(
                    f"span_mean must be in [1, (span_max + 1) / 2) and span_max >= 1, got "
                    f"span_mean={self.span_mean}, span_max={self.span_max}"
                )
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
        family = encoder_family(ctx.cfg.model.name, "mlm")
        corpus = text.load_corpus(ctx)
        tok = text.get_tokenizer(ctx, corpus, need_mask=True, trainer=family.tokenizer_trainer())
        ctx.tokenizer = tok
        self._seq_len = ctx.cfg.data.block_size
        self._setup_masking(tok, ctx)
        template = family.block_template(tok)
        train, ev = text.packed(ctx, corpus, tok, template)
        return Datasets(train, ev, tokens_per_example=ctx.cfg.data.block_size)

    def _setup_masking(self, tok, ctx: RunContext) -> None:
        words = self.cfg.whole_word_mask or self.cfg.masking == "word"
        self.spec = MaskingSpec(
            self.cfg.mask_prob,
            self.cfg.mask_replace,
            self.cfg.random_replace,
            words,
            span=self.cfg.masking == "span",
            span_mean=self.cfg.span_mean,
            span_max=self.cfg.span_max,
        )
        self.special_ids = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
        self.mask_id = tok.mask_token_id
        self.vocab_size = len(tok)
        self.continuation = None
        if words:
            self.continuation = word_continuation(tok)
        elif self.cfg.masking == "span" and word_marking(tok) is not None:
            self.continuation = word_continuation(tok)  # spans of whole words where it can
        self.document_sep = (
            family_template(ctx, tok).sep if ctx.cfg.data.document_attention else None
        )

    def build_module(self, ctx: RunContext) -> nn.Module:
        family = encoder_family(ctx.cfg.model.name, "mlm")
        tok = ctx.tokenizer
        model = family.build_masked_lm(ctx.cfg.model, len(tok), tok.pad_token_id)
        if model.config.vocab_size < len(tok):
            raise DataError(
                f"the tokenizer has {len(tok)} tokens but the model's vocabulary has "
                f"{model.config.vocab_size}; use the model's tokenizer or a larger model.vocab_size"
            )
        if family.max_tokens(model.config) < ctx.cfg.data.block_size:
            raise DataError(
                f"data.block_size={ctx.cfg.data.block_size} exceeds the model's "
                f"{family.max_tokens(model.config)} positions (model.max_position_embeddings)"
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
        if getattr(self, "document_sep", None) is not None:
            batch["document_ids"] = document_ids(ids, self.document_sep)
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
