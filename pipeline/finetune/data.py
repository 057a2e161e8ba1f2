"""Labelled text for fine-tuning: sources, the label map, the held-out split, tokenization.

Sources are resolved exactly as for pretraining (`data.path`, `data.name`, `data.split`,
`data.eval_path`), so a Hub dataset, local files and the embedded corpus all work. The held-out
split is taken by *row* before texts are cut into pieces (`data.chunk_words`), so pieces of one
document never straddle train and eval; for the embedded corpus it is its validation chapters,
whose two translations both stay held out.

Two shapes of example: one class per text (seqcls: `label` is an int) or one tag per word
(tokcls: `label` is a list with a tag id per token, IGNORE where no tag is scored).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import pyarrow.compute as pc

from pipeline.data import sources, text
from pipeline.data.sources import DataError, Source
from pipeline.finetune.metrics import IGNORE
from pipeline.protocols import RunContext

ROW = "__row"  # the source row of an example, for error messages that survive the split


@dataclass
class LabelledData:
    train: Any  # Dataset with input_ids and label
    eval: Any | None
    labels: list[str]  # class names (regression: the label column)
    mean_length: float  # tokens per training example, [CLS] and [SEP] included
    eval_sets: dict[str, Any] = field(default_factory=dict)  # data.eval_sets, tokenized


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


def label_map(
    ds: Any, column: str, configured: list[str] | None, source: Source, per_token: bool = False
) -> LabelMap:
    """Class names in id order, from the config, the dataset's ClassLabel, or the values.

    per_token: the column holds a list of tags per row (a `Sequence(ClassLabel)` feature, or
    lists of ints or strings), and the map is over the tags."""
    feature = ds.features[column]
    if per_token:
        feature = _tag_feature(feature, column, source)

    def values() -> list:  # read only when there is no ClassLabel
        if per_token:
            return pc.unique(pc.list_flatten(ds.with_format("arrow")[column])).to_pylist()
        return ds.unique(column)

    labels = _label_map(feature, values, column, configured, source)
    if len(labels.names) < 2:
        raise DataError(
            f"data.label_column={column!r} of {source.describe()} has a single class "
            f"{labels.names}; classification needs at least 2"
        )
    return labels


def _tag_feature(feature: Any, column: str, source: Source) -> Any:
    if isinstance(feature, list) and len(feature) == 1:  # the `[Value(...)]` spelling
        return feature[0]
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return feature.feature
    raise DataError(
        f"data.label_column={column!r} of {source.describe()} must hold a list of tags per row "
        f"(one per word, objective tokcls), got {feature}"
    )


def _label_map(
    feature: Any,
    unique_values: Callable[[], list],
    column: str,
    configured: list[str] | None,
    source: Source,
) -> LabelMap:
    if isinstance(feature, datasets.ClassLabel):
        return LabelMap(list(configured or feature.names), by_name=False)
    values = unique_values()
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


Steps = tuple[Callable[[dict], dict], Callable[[dict], dict]]  # (rows -> examples, tokenize)


def _sequence_steps(tokenizer: Any, cfg: Any, labels: LabelMap | None, where: str) -> Steps:
    """One class (labels=None: one score) per text or text pair: columns `text`, optionally
    `text_pair`, and `label`; single texts cut into pieces if asked."""
    tcol, pcol, lcol = cfg.text_column, cfg.text_pair_column, cfg.label_column

    def check_texts(batch: dict, column: str) -> None:
        for t, i in zip(batch[column], batch[ROW]):
            if not isinstance(t, str):
                raise DataError(f"{where} row {i}: {column!r} is {t!r}, not text")

    def to_label(value: Any, i: int) -> int | float:
        if labels is not None:
            return labels.to_id(value, f"{where} row {i}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise DataError(f"{where} row {i}: label {value!r} is not a number (regression)")
        return float(value)

    def to_examples(batch: dict) -> dict:
        check_texts(batch, tcol)
        ids = [to_label(v, i) for v, i in zip(batch[lcol], batch[ROW])]
        if pcol:
            check_texts(batch, pcol)
            return {"text": batch[tcol], "text_pair": batch[pcol], "label": ids}
        if not cfg.chunk_words:
            return {"text": batch[tcol], "label": ids}
        pieces = chunk_texts(batch[tcol], cfg.chunk_words)
        return {"text": [p for _, p in pieces], "label": [ids[r] for r, _ in pieces]}

    def tokenize(batch: dict) -> dict:
        if "text_pair" in batch:  # both texts truncated, the longer first (as GLUE baselines)
            enc = tokenizer(
                batch["text"], batch["text_pair"], truncation="longest_first",
                max_length=cfg.max_length,
            )  # fmt: skip
            out = {"input_ids": enc["input_ids"], "label": batch["label"]}
            if "token_type_ids" in enc:  # segment ids, for models that have them (BERT)
                out["token_type_ids"] = enc["token_type_ids"]
            return out
        enc = tokenizer(batch["text"], truncation=True, max_length=cfg.max_length)
        return {"input_ids": enc["input_ids"], "label": batch["label"]}

    return to_examples, tokenize


def continuation_ids(names: list[str]) -> list[int]:
    """Per tag id, the tag a word's later sub-tokens carry when all are labelled: I-X for B-X
    when the tag set has I-X (a word is begun once), else the tag itself."""
    index = {n: i for i, n in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


def align_tags(
    word_ids: list[int | None], tags: list[int], continuation: list[int] | None = None
) -> list[int]:
    """One label per token from one tag per word (`word_ids` as a fast tokenizer's
    `BatchEncoding.word_ids()`): the word's tag on its first sub-token; IGNORE on special tokens
    and on later sub-tokens, or with `continuation` (see continuation_ids) its tag there."""
    out, previous = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(tags[w])
        else:
            out.append(IGNORE if continuation is None else continuation[tags[w]])
        previous = w
    return out


def _token_steps(
    tokenizer: Any, cfg: Any, labels: LabelMap, where: str, label_all_subtokens: bool
) -> Steps:
    """One tag per word: columns `words` and `tags`, then tokens with aligned labels."""
    tcol, lcol = cfg.text_column, cfg.label_column
    continuation = continuation_ids(labels.names) if label_all_subtokens else None

    def to_examples(batch: dict) -> dict:
        out: dict[str, list] = {"words": [], "tags": []}
        for words, tags, i in zip(batch[tcol], batch[lcol], batch[ROW]):
            words = words.split() if isinstance(words, str) else words
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise DataError(f"{where} row {i}: {tcol!r} is {words!r}, not words or text")
            if not isinstance(tags, list):
                raise DataError(f"{where} row {i}: {lcol!r} is {tags!r}, not a list of tags")
            if len(tags) != len(words):
                raise DataError(
                    f"{where} row {i}: {len(tags)} tags in {lcol!r} for {len(words)} words in "
                    f"{tcol!r}; every word needs exactly one tag"
                )
            if words:  # an empty sentence has nothing to tag
                out["words"].append(words)
                out["tags"].append(
                    [labels.to_id(t, f"{where} row {i} word {j}") for j, t in enumerate(tags)]
                )
        return out

    def tokenize(batch: dict) -> dict:
        enc = tokenizer(
            batch["words"], is_split_into_words=True, truncation=True, max_length=cfg.max_length
        )
        aligned = [
            align_tags(enc.word_ids(k), t, continuation) for k, t in enumerate(batch["tags"])
        ]
        return {"input_ids": enc["input_ids"], "label": aligned}

    return to_examples, tokenize


def _prepare(ds: Any, steps: Steps, cfg: Any, where: str, seed: int, limit: int | None) -> Any:
    """Examples (label ids, pieces), a seeded subset, then token ids: `input_ids` and `label`."""
    to_examples, tokenize = steps
    ds = ds.map(to_examples, batched=True, remove_columns=ds.column_names)
    if len(ds) == 0:
        after = f" after data.chunk_words={cfg.chunk_words}" if cfg.chunk_words else ""
        raise DataError(f"{where} has no examples{after}")
    if limit is not None and len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit)).flatten_indices()
    return ds.map(
        tokenize, batched=True, remove_columns=[c for c in ds.column_names if c != "label"]
    )


def _check_columns(ds: Any, cfg: Any, src: Source, which: str = "") -> None:
    sources.require_column(ds, cfg.text_column, src, key=f"data.text_column{which}")
    if cfg.text_pair_column:
        sources.require_column(ds, cfg.text_pair_column, src, key=f"data.text_pair_column{which}")
    sources.require_column(ds, cfg.label_column, src, key=f"data.label_column{which}")
    if len(ds) == 0:
        raise DataError(f"dataset {src.describe()!r} has no rows")


def _with_eval_path(cfg: Any, paths: list[str] | None) -> Any:
    """The data section with data.eval_path replaced (to resolve a named eval set)."""
    import copy

    out = copy.copy(cfg)
    out.eval_path = paths
    return out


def load_labelled(
    ctx: RunContext,
    tokenizer: Any,
    per_token: bool = False,
    label_all_subtokens: bool = False,
    regression: bool = False,
) -> LabelledData:
    """Train and held-out examples. per_token: one tag per word (token classification, which
    needs a fast tokenizer for `word_ids`); label_all_subtokens: tag every sub-token of a word,
    not just its first; regression: float labels (one score per text or pair), no label map.

    The held-out set is data.eval_path, else the first of data.eval_sets, else a split of the
    training rows; `LabelledData.eval_sets` holds every named set (tokenized the same way)."""
    cfg, seed = ctx.cfg.data, ctx.cfg.train.seed
    named = cfg.eval_set_paths() if hasattr(cfg, "eval_set_paths") else {}
    if named and not cfg.eval_path:
        cfg_primary = _with_eval_path(cfg, next(iter(named.values())))
    else:
        cfg_primary = cfg
    train_src, eval_src = text.resolve_sources(cfg_primary)
    named_src = {n: text.resolve_sources(_with_eval_path(cfg, p))[1] for n, p in named.items()}
    with ctx.main_first():
        train = sources.load(train_src)
        ev = sources.load(eval_src) if eval_src else None
        named_ds = {n: sources.load(src) for n, src in named_src.items()}
    _check_columns(train, cfg, train_src)
    if ev is not None:
        _check_columns(ev, cfg, eval_src, " (eval)")
    for n, ds in named_ds.items():
        _check_columns(ds, cfg, named_src[n], f" (eval set {n})")
    if regression:
        labels = None
        names = [cfg.label_column]
    else:
        labels = label_map(train, cfg.label_column, cfg.labels, train_src, per_token)
        names = labels.names
    # number rows before the split so errors name the row of the file, not of a split
    train = train.add_column(ROW, list(range(len(train))))
    if ev is not None:
        ev = ev.add_column(ROW, list(range(len(ev))))
    elif cfg.eval_fraction > 0 and len(train) >= 2:
        # split rows (documents) before cutting them into pieces: no document straddles
        split = train.train_test_split(
            test_size=max(1, int(len(train) * cfg.eval_fraction)), seed=seed
        )
        train, ev = split["train"], split["test"]
        eval_src = train_src
    named_ds = {n: ds.add_column(ROW, list(range(len(ds)))) for n, ds in named_ds.items()}

    def steps(src: Source) -> Steps:
        if per_token:
            return _token_steps(tokenizer, cfg, labels, src.describe(), label_all_subtokens)
        return _sequence_steps(tokenizer, cfg, labels, src.describe())

    with ctx.main_first():  # the main process fills the datasets cache, the others read it
        train = _prepare(
            train, steps(train_src), cfg, train_src.describe(), seed, cfg.max_train_examples
        )
        if ev is not None:
            ev = _prepare(
                ev, steps(eval_src), cfg, eval_src.describe(), seed, cfg.max_eval_examples
            )
        named_ds = {
            n: _prepare(
                ds, steps(named_src[n]), cfg, named_src[n].describe(), seed, cfg.max_eval_examples
            )
            for n, ds in named_ds.items()
        }
    lengths = [len(x) for x in train[: min(len(train), 10_000)]["input_ids"]]
    return LabelledData(train, ev, names, sum(lengths) / len(lengths), named_ds)


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
