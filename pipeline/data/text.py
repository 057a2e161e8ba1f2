"""Text corpora for the engine: raw documents, the tokenizer, and packed blocks.

Shared by every text objective (mlm, infonce): sources are resolved and checked first (cheap,
every process), then the main process loads, trains the tokenizer and fills the caches while
the others wait, then everyone reads the cached result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from pipeline.data import packing, sources, streaming
from pipeline.data.packing import BlockTemplate
from pipeline.data.sources import DataError, Source
from pipeline.data.tokenizer import check_tokenizer, load_tokenizer, train_wordpiece
from pipeline.protocols import DataSection, RunContext
from pipeline.train_config import TokenizerConfig

log = logging.getLogger("pipeline")
MIX_SAMPLE = 2000  # documents of a streamed mix whose sources are counted for the log


@dataclass
class TextCorpus:
    train: Any  # Dataset or IterableDataset of documents
    eval: Any | None
    train_source: Source
    eval_source: Source | None


def resolve_sources(data_cfg: DataSection) -> tuple[Source, Source | None]:
    train = sources.resolve(data_cfg.path, data_cfg.name, data_cfg.split)
    if data_cfg.eval_path:
        paths = list(data_cfg.eval_path)
        if len(paths) == 1 and paths[0].startswith("split:"):  # another split of the same source
            split = paths[0].split(":", 1)[1]
            return train, sources.resolve(data_cfg.path, data_cfg.name, split)
        return train, sources.resolve(paths, data_cfg.name, "train")
    if len(data_cfg.path) == 1 and data_cfg.path[0].startswith("embedded:"):
        return train, sources.resolve(data_cfg.path, None, "validation")
    return train, None


def mix_sources(data_cfg: DataSection) -> list[tuple[Source, float]]:
    """data.mix resolved: (source, weight) per entry, the weights summing to 1."""
    entries = data_cfg.mix or []
    total = sum(float(e.get("weight", 1.0)) for e in entries)
    out = []
    for e in entries:
        src = sources.resolve(e["path"], e.get("name"), e.get("split", "train"))
        out.append((src, float(e.get("weight", 1.0)) / total))
    return out


def load_mix(ctx: RunContext, streaming: bool) -> tuple[Any, Source]:
    """The data.mix sources interleaved: each next document comes from source i with
    probability weight_i, drawn by a sampler seeded with train.seed (the same mixture in every
    run and on resume), until the first source runs out; the realised proportions are logged."""
    data_cfg, column = ctx.cfg.data, ctx.cfg.data.text_column
    parts = mix_sources(data_cfg)
    loaded = []
    for i, (src, _) in enumerate(parts):
        ds = sources.load(src, streaming=streaming)
        sources.require_column(ds, column, src)
        ds = ds.select_columns([column])
        if streaming:
            ds = ds.map(lambda row, i=i: {**row, "mix_source": i})
        else:
            sources.require_text(ds, column, src)
            ds = ds.add_column("mix_source", [i] * len(ds))
        loaded.append(ds)
    weights = [w for _, w in parts]
    mixed = datasets.interleave_datasets(
        loaded, probabilities=weights, seed=ctx.cfg.train.seed, stopping_strategy="first_exhausted"
    )
    described = " + ".join(f"{w:.3g} x {src.describe()}" for src, w in parts)
    key = "|".join(f"{src.fingerprint()}*{w!r}" for src, w in parts) + f"|seed={ctx.cfg.train.seed}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    source = Source(f"mix({described})#{digest}")
    if ctx.is_main:
        # a stream's proportions are those of its first documents (reading it all is the point
        # of not streaming); a mapped dataset's are exact
        ids = (
            [row["mix_source"] for row in mixed.select_columns(["mix_source"]).take(MIX_SAMPLE)]
            if streaming
            else mixed["mix_source"]
        )
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(parts))
        shares = ", ".join(
            f"{src.describe()}: {c / max(1, counts.sum()):.3f} (weight {w:.3f})"
            for (src, w), c in zip(parts, counts)
        )
        where = (
            f"first {int(counts.sum())} documents of the stream"
            if streaming
            else f"{int(counts.sum())} documents"
        )
        log.info("data.mix: %s; proportions %s", where, shares)
    return mixed, source


def load_corpus(ctx: RunContext) -> TextCorpus:
    data_cfg = ctx.cfg.data
    column = data_cfg.text_column
    if data_cfg.mix:
        _, eval_src = resolve_sources(data_cfg) if data_cfg.eval_path else (None, None)
        if data_cfg.streaming:
            train, train_src = load_mix(ctx, streaming=True)
            ev = sources.load(eval_src, streaming=True) if eval_src else None
            return TextCorpus(train, ev, train_src, eval_src)
        with ctx.main_first():
            train, train_src = load_mix(ctx, streaming=False)
            ev = sources.load(eval_src) if eval_src else None
    else:
        train_src, eval_src = resolve_sources(data_cfg)
        if data_cfg.streaming:
            train = sources.load(train_src, streaming=True)
            sources.require_column(train, column, train_src)
            ev = sources.load(eval_src, streaming=True) if eval_src else None
            return TextCorpus(train, ev, train_src, eval_src)
        with ctx.main_first():
            train = sources.load(train_src)
            ev = sources.load(eval_src) if eval_src else None
    sources.require_column(train, column, train_src)
    sources.require_text(train, column, train_src)
    if ev is not None:
        sources.require_column(ev, column, eval_src, key="data.text_column (eval)")
        sources.require_text(ev, column, eval_src)
    elif data_cfg.eval_fraction > 0 and len(train) >= 2:
        split = train.train_test_split(
            test_size=max(1, int(len(train) * data_cfg.eval_fraction)),
            seed=ctx.cfg.train.seed,
            load_from_cache_file=False,
        )
        train, ev = split["train"], split["test"]
        # the split depends on seed and fraction: both are part of the cache identity
        tag = f"heldout seed={ctx.cfg.train.seed} fraction={data_cfg.eval_fraction}"
        base = train_src
        train_src = Source(base.path, base.data_files, base.name, f"{base.split}[-{tag}]")
        eval_src = Source(base.path, base.data_files, base.name, f"{base.split}[{tag}]")
    return TextCorpus(train, ev, train_src, eval_src)


def get_tokenizer(
    ctx: RunContext,
    corpus: TextCorpus,
    need_mask: bool = True,
    trainer: tuple[str, Callable[[Iterable[str], int, bool], Any]] | None = None,
) -> Any:
    """The run's tokenizer: the one saved in the run folder (resume), a named one, or a new
    one trained on the corpus by the main process: WordPiece, or the model family's
    `trainer` = (kind, train(texts, vocab_size, lowercase)), e.g. byte-level BPE. A trained one is read by every process
    from the run folder (which every node sees: checkpoints live there too), never from the
    main process's cache, which another node may not see."""
    tok_cfg = ctx.cfg.tokenizer
    saved = ctx.run_dir / "tokenizer"
    # every process enters (whatever it finds on disk: the barriers inside must pair up); the
    # main process trains, or takes the trained one from its cache, into the run folder
    with ctx.main_first():
        if ctx.is_main and not tok_cfg.name_or_path and not _has_tokenizer(saved):
            # WordPiece training is not bit-reproducible (ties between merges), so a trained
            # tokenizer is cached by corpus and settings: runs on the same data share one
            kind, train = trainer or ("wordpiece", train_wordpiece)
            cached = trained_tokenizer_dir(
                corpus.train_source, tok_cfg, ctx.cfg.data.text_column, kind
            )
            if not _has_tokenizer(cached):
                texts = _first_texts(corpus.train, ctx.cfg.data.text_column, tok_cfg.train_examples)
                tok = train(texts, tok_cfg.vocab_size, tok_cfg.lowercase)
                tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
                tok.save_pretrained(str(tmp))
                try:
                    tmp.rename(cached)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
            load_tokenizer(str(cached)).save_pretrained(str(saved))
    if _has_tokenizer(saved):
        tok = load_tokenizer(str(saved))
        where = (
            str(saved) if tok_cfg.name_or_path else f"trained on {corpus.train_source.describe()}"
        )
    else:
        tok = load_tokenizer(tok_cfg.name_or_path)
        where = tok_cfg.name_or_path
    check_tokenizer(tok, where, need_mask=need_mask)
    if ctx.is_main and not _has_tokenizer(saved):
        tok.save_pretrained(str(saved))
    return tok


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def trained_tokenizer_dir(
    source: Source, tok_cfg: TokenizerConfig, column: str, kind: str = "wordpiece"
) -> Path:
    key = f"{source.fingerprint()}|{column}|{tok_cfg.vocab_size}|{tok_cfg.lowercase}|{tok_cfg.train_examples}"
    if kind != "wordpiece":  # WordPiece keeps its key: existing caches stay valid
        # |2: the byte-level BPEs cached before the mask token kept its lstrip are not reused
        key += f"|{kind}|2"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    folder = packing.default_cache_dir().parent / "tokenizers" / digest
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def _first_texts(ds: Any, column: str, limit: int):
    if hasattr(ds, "__len__"):
        n = min(len(ds), limit)
        for start in range(0, n, 1000):
            yield from ds[start : min(start + 1000, n)][column]
    else:
        for i, row in enumerate(ds):
            if i >= limit:
                break
            yield row[column]


def packed(
    ctx: RunContext, corpus: TextCorpus, tokenizer: PreTrainedTokenizerBase, template: BlockTemplate
) -> tuple[Any, Any | None]:
    """(train blocks, eval blocks) of `data.block_size` tokens laid out by the model family's
    `template`; cached on disk."""
    d = ctx.cfg.data
    if d.streaming:
        return _streamed(ctx, corpus, tokenizer, template)
    with ctx.main_first():
        train = packing.packed_blocks(
            corpus.train,
            tokenizer,
            d.text_column,
            d.block_size,
            template,
            corpus.train_source.fingerprint() + f"|n={len(corpus.train)}",
            d.cache_dir,
            d.num_proc,
        )
        ev = None
        if corpus.eval is not None:
            ev = packing.packed_blocks(
                corpus.eval,
                tokenizer,
                d.text_column,
                d.block_size,
                template,
                corpus.eval_source.fingerprint() + f"|n={len(corpus.eval)}",
                d.cache_dir,
                d.num_proc,
            )
    if len(train) == 0:
        raise DataError(
            f"data {corpus.train_source.describe()!r} is shorter than one block of "
            f"{d.block_size} tokens; add text or lower data.block_size"
        )
    if ev is not None:
        ev = ev.select(range(min(len(ev), d.max_eval_examples))) if len(ev) else None
    return train.with_format("torch"), (ev.with_format("torch") if ev is not None else None)


def _streamed(
    ctx: RunContext, corpus: TextCorpus, tokenizer: PreTrainedTokenizerBase,
    template: BlockTemplate,
) -> tuple[Any, Any | None]:  # fmt: skip
    """(this process's BlockStream, held-out blocks): the eval source when there is one, else
    the first data.eval_documents documents of the stream, which training then skips."""
    d = ctx.cfg.data
    docs, held_out = corpus.train, corpus.eval
    if held_out is None and d.eval_documents:
        held_out, docs = docs.take(d.eval_documents), docs.skip(d.eval_documents)
    ev = None
    if held_out is not None:
        blocks = streaming.packed_documents(
            held_out, tokenizer, d.text_column, d.block_size, template
        )
        ev = streaming.materialize(blocks, d.max_eval_examples)
    train = streaming.BlockStream(
        docs, tokenizer, d.text_column, d.block_size, template, shuffle_buffer=d.shuffle_buffer,
        seed=ctx.cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size,
    )  # fmt: skip
    return train, ev
