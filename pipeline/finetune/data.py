"""Labelled text for fine-tuning: sources, the label map, the held-out split, tokenization.

Sources are resolved exactly as for pretraining (`data.path`, `data.name`, `data.split`,
`data.eval_path`), so a Hub dataset, local files and the embedded corpus all work. The held-out
split is taken by *row* before texts are cut into pieces (`data.chunk_words`), so pieces of one
document never straddle train and eval; for the embedded corpus it is its validation chapters,
whose two translations both stay held out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import datasets

from pipeline.data import sources, text
from pipeline.data.sources import DataError, Source
from pipeline.engine.context import RunContext


@dataclass
class LabelledData:
    train: Any  # Dataset with input_ids and label
    eval: Any | None
    labels: list[str]
    mean_length: float  # tokens per training example, [CLS] and [SEP] included


@dataclass
class LabelMap:
    names: list[str]
    by_name: bool  # string labels are looked up by name; integer labels are class ids

    def to_id(self, value: Any, where: str) -> int:
        if self.by_name and isinstance(value, str):
            try:
                return self.names.index(value)
            except ValueError:
                raise DataError(
                    f"{where}: label {value!r} is not one of data.labels {self.names}"
                ) from None
        if not self.by_name and isinstance(value, int) and 0 <= value < len(self.names):
            return int(value)
        kind = "a class name" if self.by_name else f"a class id in [0, {len(self.names)})"
        raise DataError(f"{where}: label {value!r} is not {kind}")


def label_map(ds: Any, column: str, configured: list[str] | None, source: Source) -> LabelMap:
    """Class names in id order, from the config, the dataset's ClassLabel, or the values."""
    labels = _label_map(ds, column, configured, source)
    if len(labels.names) < 2:
        raise DataError(
            f"data.label_column={column!r} of {source.describe()} has a single class "
            f"{labels.names}; classification needs at least 2"
        )
    return labels


def _label_map(ds: Any, column: str, configured: list[str] | None, source: Source) -> LabelMap:
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return LabelMap(list(configured or feature.names), by_name=False)
    values = ds.unique(column)
    if not values:
        raise DataError(f"data.label_column={column!r} of {source.describe()} is empty")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise DataError(
                f"data.label_column={column!r} of {source.describe()} has the negative label "
                f"{min(values)} (an unlabelled split?); use a labelled split"
            )
        names = list(configured) if configured else [str(i) for i in range(max(values) + 1)]
        return LabelMap(names, by_name=False)
    if all(isinstance(v, str) for v in values):
        return LabelMap(list(configured) if configured else sorted(values), by_name=True)
    kinds = sorted({type(v).__name__ for v in values})
    raise DataError(
        f"data.label_column={column!r} of {source.describe()} must hold class names (strings) "
        f"or class ids (integers), got {', '.join(kinds)} values"
    )


def chunk_texts(texts: list[str], words: int) -> list[tuple[int, str]]:
    """(row, piece) for consecutive pieces of `words` words; a trailing piece under half the
    length is dropped (it would be a near-empty, unfair example)."""
    out = []
    for row, t in enumerate(texts):
        tokens = t.split()
        for start in range(0, len(tokens), words):
            piece = tokens[start : start + words]
            if len(piece) * 2 >= words:
                out.append((row, " ".join(piece)))
    return out


def _prepare(
    ds: Any,
    tokenizer: Any,
    cfg: Any,
    labels: LabelMap,
    source: Source,
    seed: int,
    limit: int | None,
) -> Any:
    """Label ids, pieces, a seeded subset, then token ids: columns `input_ids` and `label`."""
    tcol, lcol = cfg.text_column, cfg.label_column

    def to_examples(batch: dict, idx: list[int]) -> dict:
        for t, i in zip(batch[tcol], idx):
            if not isinstance(t, str):
                raise DataError(f"{source.describe()} row {i}: {tcol!r} is {t!r}, not text")
        ids = [labels.to_id(v, f"{source.describe()} row {i}") for v, i in zip(batch[lcol], idx)]
        if not cfg.chunk_words:
            return {"text": batch[tcol], "label": ids}
        pieces = chunk_texts(batch[tcol], cfg.chunk_words)
        return {"text": [p for _, p in pieces], "label": [ids[r] for r, _ in pieces]}

    ds = ds.map(to_examples, batched=True, with_indices=True, remove_columns=ds.column_names)
    if len(ds) == 0:
        raise DataError(f"{source.describe()} has no examples after data.chunk_words")
    if limit is not None and len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit)).flatten_indices()

    def tokenize(batch: dict) -> dict:
        enc = tokenizer(batch["text"], truncation=True, max_length=cfg.max_length)
        return {"input_ids": enc["input_ids"], "label": batch["label"]}

    return ds.map(tokenize, batched=True, remove_columns=["text"])


def load_labelled(ctx: RunContext, tokenizer: Any) -> LabelledData:
    cfg, seed = ctx.cfg.data, ctx.cfg.train.seed
    train_src, eval_src = text.resolve_sources(cfg)
    with ctx.main_first():
        train = sources.load(train_src)
        ev = sources.load(eval_src) if eval_src else None
    for ds, src, which in ((train, train_src, ""), (ev, eval_src, " (eval)")):
        if ds is None:
            continue
        sources.require_column(ds, cfg.text_column, src, key=f"data.text_column{which}")
        sources.require_column(ds, cfg.label_column, src, key=f"data.label_column{which}")
        if len(ds) == 0:
            raise DataError(f"dataset {src.describe()!r} has no rows")
    labels = label_map(train, cfg.label_column, cfg.labels, train_src)
    if ev is None and cfg.eval_fraction > 0 and len(train) >= 2:
        # split rows (documents) before cutting them into pieces: no document straddles
        split = train.train_test_split(
            test_size=max(1, int(len(train) * cfg.eval_fraction)), seed=seed
        )
        train, ev = split["train"], split["test"]
        eval_src = train_src
    with ctx.main_first():  # the main process fills the datasets cache, the others read it
        train = _prepare(train, tokenizer, cfg, labels, train_src, seed, cfg.max_train_examples)
        if ev is not None:
            ev = _prepare(ev, tokenizer, cfg, labels, eval_src, seed, cfg.max_eval_examples)
    lengths = [len(x) for x in train[: min(len(train), 10_000)]["input_ids"]]
    return LabelledData(train, ev, labels.names, sum(lengths) / len(lengths))


class PaddedEval:
    """Held-out examples padded with weight-0 copies to a multiple of (micro batch x
    processes): the engine's eval batches then cover every example exactly once, and the
    copies it would otherwise wrap around to count for nothing."""

    def __init__(self, data: Any, multiple: int):
        self.data = data
        self.n = len(data)
        self.length = math.ceil(self.n / multiple) * multiple

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: list[int]) -> dict:
        rows = self.data[[i % self.n for i in idx]]
        rows["weight"] = [1.0 if i < self.n else 0.0 for i in idx]
        return rows
