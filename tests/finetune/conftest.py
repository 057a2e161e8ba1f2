"""A tiny stock export and a small labelled task, built in seconds, for fine-tuning tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

# three topics with their own words, mixed into shared filler: learnable in a few dozen steps
TOPICS = {
    "sea": "ship wave sail fish harbour anchor tide shore boat net".split(),
    "land": "tree hill road field stone wall farm horse wheat barn".split(),
    "sky": "cloud star moon bird wind rain sun thunder eagle dawn".split(),
}
FILLER = "the a and of to in it was on that with as for his they".split()
CLASSES = list(TOPICS)


def make_rows(n: int, seed: int, noisy: float = 0.0) -> list[dict]:
    """Rows of 12 words: 4 topic words and 8 filler words. With `noisy`, that fraction of rows
    carries a wrong label (so held-out accuracy is below 1 and miscounting would show)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(CLASSES)
        words = rng.choices(TOPICS[label], k=4) + rng.choices(FILLER, k=8)
        rng.shuffle(words)
        flip = rng.random() < noisy
        if flip:
            label = rng.choice([c for c in CLASSES if c != label])
        rows.append({"text": " ".join(words), "topic": label, "noisy": flip})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """A stock BertForMaskedLM folder with its WordPiece tokenizer (random weights)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from pipeline.data.tokenizer import train_wordpiece

    folder = tmp_path_factory.mktemp("pretrained") / "export"
    texts = [r["text"] for r in make_rows(500, seed=0)]
    tok = train_wordpiece(texts, vocab_size=200)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def topic_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("topics")
    return {
        "train": write_jsonl(root / "train.jsonl", make_rows(400, seed=1)),
        # 61 rows: not a multiple of (micro batch x processes), so eval needs padding
        "eval": write_jsonl(root / "eval.jsonl", make_rows(61, seed=2, noisy=0.2)),
    }
