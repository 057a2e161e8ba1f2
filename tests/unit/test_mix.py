"""data.mix: weighted, seeded interleaving of several sources; bad weights and sources fail
before any work, naming the entry."""

from __future__ import annotations

import contextlib
import json
import logging
from types import SimpleNamespace

import pytest

from pipeline import config as config_lib
from pipeline.config import ConfigError
from pipeline.data import text
from pipeline.data.sources import DataError
from pipeline.train_config import RunConfig


def cfg(*args: str) -> RunConfig:
    return config_lib.load_config(RunConfig, None, list(args))


def ctx(c: RunConfig) -> SimpleNamespace:
    return SimpleNamespace(cfg=c, is_main=True, main_first=contextlib.nullcontext)


@pytest.fixture()
def files(tmp_path):
    out = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": f"{name} {i}"}) + "\n" for i in range(600)))
        out.append(path)
    return out


def test_mix_parses_and_bad_weights_are_errors(files):
    a, b = files
    c = cfg(f"data.mix=[{{path: {a}, weight: 0.7}}, {{path: {b}, weight: 0.3}}]")
    assert [e["weight"] for e in c.data.mix] == [0.7, 0.3]
    with pytest.raises(ConfigError, match=r"mix\[1\].*weight must be a number >= 0"):
        cfg(f"data.mix=[{{path: {a}, weight: 0.7}}, {{path: {b}, weight: -1}}]")
    with pytest.raises(ConfigError, match="weights are all zero"):
        cfg(f"data.mix=[{{path: {a}, weight: 0}}, {{path: {b}, weight: 0}}]")
    with pytest.raises(ConfigError, match=r"mix\[0\].*unknown keys wieght"):
        cfg(f"data.mix=[{{path: {a}, wieght: 1}}]")


def test_a_mix_source_that_cannot_load_is_named(files, tmp_path):
    c = cfg(
        f"data.mix=[{{path: {files[0]}, weight: 1}}, {{path: {tmp_path}/nope.jsonl, weight: 1}}]"
    )
    with pytest.raises(DataError, match="nope.jsonl"):
        text.load_corpus(ctx(c))


def test_realised_proportions_follow_the_weights_and_the_seed(files, caplog):
    a, b = files
    mix = f"data.mix=[{{path: {a}, weight: 3}}, {{path: {b}, weight: 1}}]"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        corpus = text.load_corpus(ctx(cfg(mix, "data.eval_fraction=0")))
    docs = corpus.train["text"]
    share_a = sum(d.startswith("a ") for d in docs) / len(docs)
    assert abs(share_a - 0.75) < 0.04, share_a
    assert "data.mix" in caplog.text and "(weight 0.750)" in caplog.text
    same = text.load_corpus(ctx(cfg(mix, "data.eval_fraction=0"))).train["text"]
    other = text.load_corpus(ctx(cfg(mix, "data.eval_fraction=0", "train.seed=7"))).train["text"]
    assert same == docs and other != docs  # the mixture is the seed's: a resume re-reads it
    # the cache identity names the sources, the weights and the seed
    ids = {text.load_corpus(ctx(cfg(mix, "data.eval_fraction=0", f"train.seed={s}"))).train_source.fingerprint() for s in (1, 1, 2)}  # fmt: skip
    assert len(ids) == 2
