"""Mean-pooled embeddings of a masked-LM export, then K-means on them (a text corpus)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.stages.runner import run_stage

TOPIC_A = ["cat", "dog", "horse", "cow", "sheep", "goat"]
TOPIC_B = ["red", "blue", "green", "black", "white", "pink"]


@pytest.fixture
def tiny_export(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path / "export"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TOPIC_A, *TOPIC_B]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)  # fmt: skip
    model = BertForMaskedLM(config)
    # each topic's words get embeddings near one shared vector: an encoder that "knows" the
    # two topics, so the right clustering of the texts is known
    emb = model.bert.embeddings.word_embeddings.weight
    topic = torch.randn(16)  # not constant: LayerNorm would erase a constant vector
    with torch.no_grad():
        for words, sign in ((TOPIC_A, 1.0), (TOPIC_B, -1.0)):
            ids = [vocab.index(w) for w in words]
            emb[ids] = sign * topic + 0.1 * torch.randn(len(ids), 16)
    model.save_pretrained(folder)
    return folder


def test_embed_then_kmeans(tiny_export, tmp_path, stage_cfg):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        words, topic = (TOPIC_A, "animals") if i % 2 else (TOPIC_B, "colours")
        n = int(rng.integers(2, 9))  # different lengths: batches are padded
        rows.append({"text": " ".join(rng.choice(words, n)), "topic": topic})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = stage_cfg("configs/stages/embed.yaml", f"stage.model={tiny_export}",
                    f"data.path={corpus}", "data.label_column=topic", "stage.batch_size=5",
                    "data.max_examples=null", name="embed")  # fmt: skip
    result = run_stage(cfg)
    assert set(result) == {"examples", "dim", "seconds"}
    assert (result["examples"], result["dim"]) == (24, 16)
    assert 0 < result["seconds"] < 60
    features = np.load(tmp_path / "embed" / "outputs" / "features.npy")
    assert features.shape == (24, 16)

    # mean over real tokens: the same vector whatever the padding of the batch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(tiny_export), AutoModel.from_pretrained(tiny_export)
    for i in (0, 7):
        with torch.no_grad():
            hidden = model(**tok(rows[i]["text"], return_tensors="pt")).last_hidden_state
        np.testing.assert_allclose(features[i], hidden[0].mean(0).numpy(), atol=1e-5)

    km = stage_cfg("configs/stages/kmeans.yaml", f"input={tmp_path / 'embed'}", "stage.k=2",
                   "data.scale=none", name="kmeans")  # fmt: skip
    result = run_stage(km)
    # the two topics are found (labels come from data.label_column of the corpus)
    assert result["ari"] == pytest.approx(1.0)
    assert (tmp_path / "kmeans" / "plots" / "clusters.png").is_file()
