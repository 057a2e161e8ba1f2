"""Token classification (NER, POS tagging) on the training engine: a stock
`AutoModelForTokenClassification` started from a pretrained export, one tag per word.

Rows hold a list of words (or a text, split on whitespace) and a list of as many tags. Words are
tokenized with `is_split_into_words=True` and each word's tag goes on its first sub-token
(`data.align_tags`); later sub-tokens, special tokens and padding carry IGNORE, so loss and
metrics count each word once. Token accuracy and macro-F1 over tags (the "O" tag included) come
from the same exact counts as seqcls (`finetune.metrics`). The export loads with
`pipeline("token-classification")` as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from pipeline import registry
from pipeline.data.sources import DataError
from pipeline.finetune.metrics import is_iob
from pipeline.finetune.objective import SequenceClassification, SequenceClassifier
from pipeline.objectives.base import Task
from pipeline.protocols import RunContext

if TYPE_CHECKING:
    from pipeline.finetune.data import LabelledData


@registry.register("objective", "tokcls")
class TokenClassification(SequenceClassification):
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    config_extras: ClassVar[dict[str, Any]] = {}
    task = Task(
        pipeline_tag="token-classification",
        name="Token classification",
        metrics={
            "entity_f1": ("seqeval", "entity F1 (seqeval)"),
            "accuracy": ("accuracy", "token accuracy"),
            "macro_f1": ("f1", "token macro-F1"),
        },
        finetuned=True,
    )
    per_token_head = True

    @dataclass
    class Config(SequenceClassification.Config):
        name: str = "tokcls"
        label_all_subtokens: bool = False
        """Put a word's tag on every sub-token, not only the first (a B-X tag becomes I-X after
        the first); metrics then count sub-tokens, not words."""

    def wrap(self, model: nn.Module) -> nn.Module:
        entity_tags = self.labels if is_iob(self.labels) else None
        return SequenceClassifier(model, len(self.labels), self.cfg.label_smoothing, entity_tags)

    def load_data(self, ctx: RunContext, tokenizer: Any) -> LabelledData:
        from pipeline.finetune.data import load_labelled

        if ctx.cfg.data.chunk_words:
            raise DataError(
                f"data.chunk_words={ctx.cfg.data.chunk_words} cuts texts for seqcls; "
                "objective tokcls tags whole rows (set data.chunk_words=0)"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                f"the tokenizer of {ctx.cfg.model.from_pretrained!r} is not a fast (Rust) "
                "tokenizer; aligning word tags to sub-tokens needs its word_ids()"
            )
        return load_labelled(
            ctx, tokenizer, per_token=True, label_all_subtokens=self.cfg.label_all_subtokens
        )
