"""Sequence classification on the training engine: a stock `AutoModelForSequenceClassification`
started from a pretrained export (or, as a baseline, the same architecture freshly initialised).

The forward returns the cross-entropy loss and per-class counts (see `finetune.metrics`), from
which `summarize` derives loss, accuracy and macro-F1 over all processes. The export is a plain
`save_pretrained` folder with the tokenizer and `id2label`, so `pipeline("text-classification")`
loads it as is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import registry
from pipeline.data.sources import DataError
from pipeline.finetune import metrics as cls_metrics
from pipeline.finetune.metrics import IGNORE
from pipeline.models.base import ModelFamily, linear_parameters
from pipeline.objectives.base import Datasets, Objective, ObjectiveConfig, Task
from pipeline.protocols import RunContext

if TYPE_CHECKING:
    from pipeline.finetune.data import LabelledData

log = logging.getLogger("pipeline")


class SequenceClassifier(nn.Module):
    """Wraps the stock model; forward returns (loss, counts) for the engine.

    Token classification (logits per token) is the same computation over labelled tokens: each
    token whose label is not IGNORE counts as one example, weighted by its row's weight."""

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        label_smoothing: float = 0.0,
        entity_tags: list[str] | None = None,
    ):
        super().__init__()
        self.model = model
        self.num_labels = num_labels
        self.label_smoothing = label_smoothing
        self.entity_tags = entity_tags
        """IOB tag names (tokcls): evaluation also counts entities, as seqeval does."""

    def forward(self, input_ids, attention_mask, labels, weight, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        logits = logits.logits.float()
        w = weight.float()
        entities = {}
        if logits.dim() == 3:  # (batch, tokens, tags): one example per labelled token
            if self.entity_tags and not self.training:  # a host sync: evaluation only
                entities = cls_metrics.entity_counts(logits, labels, w, self.entity_tags)
            w = (w[:, None] * (labels != IGNORE)).flatten()
            logits, labels = logits.flatten(0, 1), labels.clamp(min=0).flatten()
        losses = F.cross_entropy(
            logits, labels, reduction="none", label_smoothing=self.label_smoothing
        )
        loss = (losses * w).sum() / w.sum().clamp(min=1.0)
        return loss, {**cls_metrics.counts(logits, labels, losses, w, self.num_labels), **entities}


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        # trust_remote_code stays off: a tokenizer never runs code from a download
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise DataError(
            f"model.from_pretrained={source!r} has no loadable tokenizer: {err}"
        ) from None
    if tok.pad_token_id is None:
        raise DataError(f"the tokenizer of {source!r} has no pad token; fine-tuning pads batches")
    return tok


def load_pretrained(
    source: str, config: Any, is_main: bool, auto_class: str = "AutoModelForSequenceClassification"
) -> nn.Module:
    """The export's encoder under a fresh classification head (`auto_class`, a transformers
    Auto class name).

    A masked-LM export has no pooler and no classifier: those start fresh (from the seeded
    global RNG) and its LM head is dropped. Any *other* missing weight means the export does
    not match its config, which would silently fine-tune a half-random model: refused."""
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the expected head swap as alarms
    try:
        model, info = getattr(transformers, auto_class).from_pretrained(
            source, config=config, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    fresh = [k for k in info["missing_keys"] if "pooler" in k or k.startswith("classifier.")]
    missing = sorted(set(info["missing_keys"]) - set(fresh))
    if missing:
        raise DataError(
            f"model.from_pretrained={source!r} lacks encoder weights {missing[:4]} "
            f"({len(missing)} missing); is it an export of this architecture?"
        )
    if is_main:
        log.info(
            "loaded the encoder of %s; new: %s; dropped: %d pretraining-head tensors",
            source, ", ".join(sorted(fresh)) or "none", len(info["unexpected_keys"]),
        )  # fmt: skip
    return model


@registry.register("objective", "seqcls")
class SequenceClassification(Objective):
    """One class per text. Subclasses (tokcls) change the Auto class, the config extras and how
    examples are built; the module, collation, metrics and export are shared."""

    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    config_extras: ClassVar[dict[str, Any]] = {"problem_type": "single_label_classification"}
    task = Task(
        pipeline_tag="text-classification",
        name="Text classification",
        metrics={"accuracy": ("accuracy", "accuracy"), "macro_f1": ("f1", "macro-F1")},
        finetuned=True,
    )
    per_token_head: ClassVar[bool] = False
    """The classification head runs on every token (tokcls), not once per text."""
    regression: ClassVar[bool] = False
    """One float score per example (seqreg), not a class."""

    @dataclass
    class Config(ObjectiveConfig):
        name: str = "seqcls"
        label_smoothing: float = 0.0
        """Cross-entropy label smoothing (0 = plain cross-entropy)."""

        def validate(self) -> list[str]:
            if not 0.0 <= self.label_smoothing < 1.0:
                return [f"label_smoothing must be in [0, 1), got {self.label_smoothing}"]
            return []

    def build_data(self, ctx: RunContext) -> Datasets:
        from pipeline.finetune.data import PaddedEval

        tok = load_tokenizer(ctx.cfg.model.from_pretrained)
        ctx.tokenizer = tok
        self.pad_id = tok.pad_token_id
        data = self.load_data(ctx, tok)
        self.labels = data.labels
        self.mean_length = data.mean_length
        # scored after training, at export: the named sets, else the held-out set
        self.final_sets = data.eval_sets or ({"eval": data.eval} if data.eval is not None else {})
        micro_total = ctx.cfg.train.micro_batch_size * ctx.world_size
        if len(data.train) < micro_total:
            raise DataError(
                f"{len(data.train)} training examples are fewer than one batch of "
                f"{micro_total} (train.micro_batch_size x processes)"
            )
        ev = PaddedEval(data.eval, micro_total) if data.eval is not None else None
        if ctx.is_main:
            log.info(
                "fine-tuning on %d examples (%d held out), %d classes: %s",
                len(data.train), data.eval.num_rows if data.eval is not None else 0,
                len(self.labels), ", ".join(self.labels),
            )  # fmt: skip
        return Datasets(data.train, ev, tokens_per_example=round(self.mean_length))

    def load_data(self, ctx: RunContext, tokenizer: Any) -> LabelledData:
        from pipeline.finetune.data import load_labelled

        return load_labelled(ctx, tokenizer)

    def build_module(self, ctx: RunContext) -> nn.Module:
        import transformers
        from transformers import AutoConfig

        mcfg = ctx.cfg.model
        id2label = dict(enumerate(self.labels))
        extra = {}
        if mcfg.dropout is not None:
            extra.update(
                hidden_dropout_prob=mcfg.dropout, attention_probs_dropout_prob=mcfg.dropout
            )
        if mcfg.classifier_dropout is not None:
            extra["classifier_dropout"] = mcfg.classifier_dropout
        try:
            config = AutoConfig.from_pretrained(
                mcfg.from_pretrained,
                num_labels=len(self.labels),
                id2label=id2label,
                label2id={v: k for k, v in id2label.items()},
                **self.config_extras,
                **extra,
            )
        except (OSError, ValueError) as err:
            raise DataError(f"model.from_pretrained={mcfg.from_pretrained!r}: {err}") from None
        if mcfg.init == "pretrained":
            model = load_pretrained(mcfg.from_pretrained, config, ctx.is_main, self.auto_class)
        else:
            model = getattr(transformers, self.auto_class).from_config(config)
        if model.config.max_position_embeddings < ctx.cfg.data.max_length:
            raise DataError(
                f"data.max_length={ctx.cfg.data.max_length} exceeds the model's "
                f"max_position_embeddings={model.config.max_position_embeddings}"
            )
        return self.wrap(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The engine's module around the stock model (loss and reducible metric counts)."""
        return SequenceClassifier(model, len(self.labels), self.cfg.label_smoothing)

    def collate(self, examples: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = examples["input_ids"]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        weight = examples.get("weight") or [1.0] * len(rows)
        labels = examples["label"]
        if labels and isinstance(labels[0], list):  # a tag per token: padding is not scored
            tags = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
            for i, t in enumerate(labels):
                tags[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
            labels = tags
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.as_tensor(labels, dtype=torch.float if self.regression else torch.long),
            "weight": torch.as_tensor(weight, dtype=torch.float),
        }
        if "token_type_ids" in examples:  # sentence pairs: segment ids, padding in segment 0
            types = torch.zeros((len(rows), longest), dtype=torch.long)
            for i, t in enumerate(examples["token_type_ids"]):
                types[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
            batch["token_type_ids"] = types
        return batch

    def flops_per_example(self, module: nn.Module) -> float:
        model = module.model
        seq = max(1, round(self.mean_length))
        encoder = ModelFamily.encoder_flops_per_token(model.base_model, seq)
        head = 6.0 * (linear_parameters(model) - linear_parameters(model.base_model))
        return seq * encoder + head * (seq if self.per_token_head else 1)

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        return cls_metrics.from_counts(metrics, len(self.labels))

    def export(self, module: nn.Module, folder: str, ctx: RunContext) -> None:
        module.model.save_pretrained(folder, safe_serialization=True)
        if ctx.tokenizer is not None:
            ctx.tokenizer.save_pretrained(folder)
        sets = getattr(self, "final_sets", {})
        if sets and not self.per_token_head:
            scores = {
                name: self.score(module.model, ds, ctx.cfg.train.micro_batch_size)
                for name, ds in sets.items()
            }
            Path(folder, cls_metrics.RESULTS_FILE).write_text(json.dumps(scores, indent=1))
            if ctx.is_main:
                log.info("held-out scores: %s", json.dumps(scores))

    @torch.no_grad()
    def score(self, model: nn.Module, ds: Any, batch_size: int) -> dict[str, float]:
        """GLUE-style scores of `model` on a tokenized held-out set, from its predictions
        (scikit-learn and scipy; see metrics.glue_scores)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        preds, gold = [], []
        generator = torch.Generator().manual_seed(0)
        for start in range(0, len(ds), batch_size):
            batch = self.collate(ds[start : start + batch_size], generator)
            inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "weight")}
            logits = model(**inputs).logits.float()
            preds.append(logits.squeeze(-1) if self.regression else logits.argmax(-1))
            gold.append(batch["labels"])
        model.train(was_training)
        pred = torch.cat(preds).cpu().numpy()
        true = torch.cat(gold).numpy()
        return cls_metrics.glue_scores(pred, true, len(self.labels), self.regression)
