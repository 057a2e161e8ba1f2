"""Token classification (objective tokcls): sub-token alignment, tag checks, and a 2-process
fine-tune of a tiny export on a synthetic tagging task whose held-out metrics must equal those
of the exported model under stock `pipeline("token-classification")`.

The task: words of the three topics carry their topic's tag, filler words carry "O"; some
topic words are glued to a filler word ("shipthe"), so they span several sub-tokens. The
2-process run tags in IOB2 (a topic word after one of the same topic continues its entity:
I-sea), so entity-level F1 is logged beside token accuracy and must equal seqeval's on the
exported model's predictions.
"""

from __future__ import annotations

import contextlib
import json
import random
import types
from pathlib import Path

import pytest
import seqeval.metrics as seqeval
from sklearn.metrics import accuracy_score, f1_score

from pipeline.config import load_config
from pipeline.data.sources import DataError
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.data import IGNORE, align_tags, continuation_ids, load_labelled
from tests.conftest import ROOT, metrics, run_cli
from tests.finetune.conftest import FILLER, TOPICS, write_jsonl

TAGS = ["O", *sorted(TOPICS)]  # string tags: the label map sorts them, "O" first
IOB_TAGS = sorted(["O", *(f"{p}-{t}" for t in TOPICS for p in "BI")])
STEPS = 40
RECIPE = str(ROOT / "configs/finetune/wikiann-ner.yaml")


def tagging_rows(n: int, seed: int, noisy: float = 0.0, iob: bool = False) -> list[dict]:
    """Rows of 10 words, 3 to 5 from random topics; `noisy` of the tags are wrong (held-out
    accuracy then stays below 1, so a miscount would show). iob: topic tags in IOB2, B-topic
    on a word that does not follow a word of its topic, I-topic on one that does."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 5)):
            topic = rng.choice(sorted(TOPICS))
            word = rng.choice(TOPICS[topic])
            words.append(word + rng.choice(FILLER) if rng.random() < 0.25 else word)
            tags.append(topic)
        words += rng.choices(FILLER, k=10 - len(words))
        tags += ["O"] * (10 - len(tags))
        order = list(range(10))
        rng.shuffle(order)
        words, tags = [words[i] for i in order], [tags[i] for i in order]
        names = TAGS
        if iob:
            tags = [
                t if t == "O" else ("I-" if j and tags[j - 1] == t else "B-") + t
                for j, t in enumerate(tags)
            ]
            names = IOB_TAGS
        tags = [
            rng.choice([x for x in names if x != t]) if rng.random() < noisy else t for t in tags
        ]
        rows.append({"tokens": words, "tags": tags})
    return rows


def _labelled(tmp_path: Path, rows: list[dict], export: Path, *overrides: str, every=False):
    from pipeline.finetune.objective import load_tokenizer

    path = write_jsonl(tmp_path / "tags.jsonl", rows)
    cfg = load_config(
        FinetuneConfig,
        RECIPE,
        [f"model.from_pretrained={export}", f"data.path={path}", "data.eval_path=null",
         "data.eval_fraction=0", "data.label_column=tags", "data.name=null", *overrides],
    )  # fmt: skip
    ctx = types.SimpleNamespace(cfg=cfg, main_first=contextlib.nullcontext)
    tok = load_tokenizer(str(export))
    return load_labelled(ctx, tok, per_token=True, label_all_subtokens=every), path


def test_first_subtoken_of_each_word_carries_its_tag(tiny_export):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_export)
    enc = tok([["ship", "shipthe", "wave"]], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    assert word_ids[0] is None and word_ids[-1] is None  # [CLS] ... [SEP]
    assert word_ids.count(1) > 1, tok.convert_ids_to_tokens(enc["input_ids"][0])  # split word
    first = [i for i, w in enumerate(word_ids) if w is not None and w != word_ids[i - 1]]
    labels = align_tags(word_ids, [1, 2, 3])
    assert [labels[i] for i in first] == [1, 2, 3]
    assert all(v == IGNORE for i, v in enumerate(labels) if i not in first)
    # label_all_subtokens: later sub-tokens carry the tag, B-X continued as I-X
    names = ["O", "B-LOC", "I-LOC", "B-MISC"]
    assert continuation_ids(names) == [0, 2, 2, 3]
    every = align_tags(word_ids, [0, 1, 3], continuation_ids(names))
    assert every == [IGNORE, 0, 1] + [2] * (word_ids.count(1) - 1) + [3, IGNORE]


def test_tags_are_mapped_and_aligned_through_the_dataset(tiny_export, tmp_path):
    rows = tagging_rows(6, seed=3)
    rows[0] = {"tokens": " ".join(rows[0]["tokens"]), "tags": rows[0]["tags"]}  # a text row
    data, _ = _labelled(tmp_path, rows, tiny_export, "data.max_length=64")
    assert data.labels == TAGS
    for row, ex in zip(rows, data.train):
        scored = [v for v in ex["label"] if v != IGNORE]
        assert scored == [TAGS.index(t) for t in row["tags"]]  # one label per word, in order
        assert len(ex["label"]) == len(ex["input_ids"])
    data, _ = _labelled(tmp_path, rows, tiny_export, "data.max_length=64", every=True)
    for row, ex in zip(rows, data.train):  # every sub-token of a word carries its tag
        assert ex["label"][0] == ex["label"][-1] == IGNORE
        assert set(ex["label"][1:-1]) == {TAGS.index(t) for t in row["tags"]}
    # some words span several sub-tokens
    assert sum(len(ex["label"]) - 12 for ex in data.train) > 0
    data, _ = _labelled(tmp_path, rows, tiny_export, "data.max_length=6")
    assert all(len(ex["input_ids"]) <= 6 for ex in data.train)  # truncated with its labels


def test_a_row_whose_tags_do_not_match_its_words_is_refused(tiny_export, tmp_path):
    rows = tagging_rows(8, seed=4)
    rows[5]["tags"] = rows[5]["tags"][:-1]
    with pytest.raises(DataError) as err:
        _labelled(tmp_path, rows, tiny_export)
    assert str(err.value) == (
        f"{tmp_path / 'tags.jsonl'} row 5: 9 tags in 'tags' for 10 words in 'tokens'; every "
        "word needs exactly one tag"
    )
    rows[5]["tags"].append("weather")
    with pytest.raises(
        DataError, match=r"row 5 word 9: label 'weather' is not one of data\.labels"
    ):
        _labelled(tmp_path, rows, tiny_export, f"data.labels={TAGS}")
    with pytest.raises(DataError, match=r"'tags' of .* must hold a list of tags per row"):
        _labelled(tmp_path, [{"tokens": "a b", "tags": "O"}] * 2, tiny_export)


@pytest.fixture(scope="module")
def run(tiny_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokcls")
    train = write_jsonl(root / "train.jsonl", tagging_rows(300, seed=1, iob=True))
    # 61 rows: not a multiple of (micro batch x processes), so eval needs padding
    heldout = write_jsonl(root / "eval.jsonl", tagging_rows(61, seed=2, noisy=0.1, iob=True))
    out = root / "run"
    run_cli(
        ["finetune", str(tiny_export), RECIPE, f"data.path={train}", f"data.eval_path={heldout}",
         "data.name=null", "data.label_column=tags", "data.max_length=32", "optim.lr=3e-3",
         f"train.max_steps={STEPS}", "train.micro_batch_size=8",
         "train.eval_every=20", "train.log_every=10", "train.checkpoint_every=1000",
         "log.progress_bar=false", "log.plots=false", "log.trackers=[]", "--output-dir", str(out)],
        launcher="accelerate", nproc=2, timeout=600,
    )  # fmt: skip
    return out, heldout


def test_tokcls_learns_and_writes_token_metrics(run):
    out, _ = run
    evals, train = metrics(out, "eval"), metrics(out, "train")
    assert [e["step"] for e in evals] == [20, STEPS]
    assert all({"loss", "accuracy", "macro_f1"} <= set(e) for e in evals + train)
    # entity scores are counted in evaluation only (a host sync per batch)
    assert all({"entity_f1", "entity_precision", "entity_recall"} <= set(e) for e in evals)
    assert not any(
        k.startswith(("tp_", "pred_", "true_", "ent_")) for e in evals + train for k in e
    )
    assert train[-1]["loss"] < train[0]["loss"] - 0.3, (train[0], train[-1])
    # every word "O" would score about 0.6 (4 of 10 words are topic words on average); 10% of
    # held-out tags are wrong, so 0.9 is the ceiling
    assert evals[-1]["accuracy"] > 0.8, evals[-1]


def test_export_tags_with_stock_pipeline_as_logged(run):
    from transformers import AutoModelForTokenClassification, pipeline

    out, heldout = run
    export = out / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {str(i): t for i, t in enumerate(IOB_TAGS)}
    AutoModelForTokenClassification.from_pretrained(export)
    tagger = pipeline("token-classification", model=str(export), ignore_labels=[])
    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    y, pred, y_rows, pred_rows = [], [], [], []
    for row, tokens in zip(rows, tagger([" ".join(r["tokens"]) for r in rows])):
        # a word's prediction is its first sub-token's, as in training
        words = [t["entity"] for t in tokens if not t["word"].startswith("##")]
        assert len(words) == len(row["tokens"]), tokens
        y += row["tags"]
        pred += words
        y_rows.append(row["tags"])
        pred_rows.append(words)
    logged = metrics(out, "eval")[-1]
    # 2 processes, 61 rows padded to 64: the reduced metrics equal the whole-set ones
    assert logged["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert logged["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    # entity level, as seqeval scores it (the padding copies counted for nothing)
    assert logged["entity_f1"] == pytest.approx(seqeval.f1_score(y_rows, pred_rows), abs=1e-6)
    assert logged["entity_precision"] == pytest.approx(
        seqeval.precision_score(y_rows, pred_rows), abs=1e-6
    )
    assert logged["entity_recall"] == pytest.approx(
        seqeval.recall_score(y_rows, pred_rows), abs=1e-6
    )
    assert 0.3 < logged["entity_f1"] < logged["accuracy"], logged  # learned; entities are harder
    card = (export / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card
    assert "fine-tuned for token classification" in card and "text classification" not in card
    assert "type: seqeval" in card  # the model-index reports entity F1
