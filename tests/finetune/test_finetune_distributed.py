"""Fine-tune a tiny export for 2 processes (gloo), push the result to a local mock of the Hub's
HTTP API (127.0.0.1, not the real Hub), then check metrics, the export, the card and secrecy.

One run serves every test here: a 2-process launch is the expensive part.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from tests.conftest import metrics, run_cli
from tests.finetune.conftest import CLASSES
from tests.hub.mock_hub import MockHub

SENTINEL = "hf_SENTINELfinetune0123456789abcdefXYZ"
STEPS = 80


@pytest.fixture(scope="module")
def run(tiny_export, topic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    with MockHub() as hub:
        proc = run_cli(
            ["finetune", str(tiny_export), "configs/finetune/bible-sections.yaml",
             f"data.path={topic_data['train']}", f"data.eval_path={topic_data['eval']}",
             "data.label_column=topic", "data.labels=null", "data.chunk_words=0",
             "data.max_length=32", "optim.lr=3e-3", f"train.max_steps={STEPS}",
             "train.micro_batch_size=8", "train.eval_every=40", "train.log_every=10",
             "train.checkpoint_every=1000", "train.push_to_hub=alice/topics", "model.dropout=0.05",
             "log.progress_bar=false", "log.plots=false", "log.trackers=[tensorboard]",
             "--output-dir", str(out)],
            launcher="accelerate", nproc=2, timeout=900,
            # publishing is the one online step; the endpoint is the local mock server
            HF_TOKEN=SENTINEL, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
            HF_HOME=str(out.parent / "hf-home"), HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )  # fmt: skip
    return out, proc, hub.state


def predict(export: Path, rows: list[dict]) -> list[int]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=32,
              return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        return model(**enc).logits.argmax(-1).tolist()


def test_metrics_written_with_accuracy_and_macro_f1(run):
    out, _, _ = run
    evals, train = metrics(out, "eval"), metrics(out, "train")
    assert [e["step"] for e in evals] == [40, STEPS]
    assert all({"loss", "accuracy", "macro_f1"} <= set(e) for e in evals + train)
    assert not any(k.startswith(("tp_", "pred_", "true_")) for e in evals + train for k in e)
    assert train[-1]["loss"] < train[0]["loss"] - 0.3, (train[0], train[-1])


def test_export_loads_in_stock_transformers_and_matches_logged_metrics(run, topic_data):
    out, _, _ = run
    export = out / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.05
    assert config["id2label"] == {str(i): c for i, c in enumerate(sorted(CLASSES))}
    assert sorted(p.name for p in export.iterdir() if p.suffix in (".bin", ".pt", ".pkl")) == []
    rows = [json.loads(line) for line in topic_data["eval"].read_text().splitlines()]
    pred = predict(export, rows)
    label2id = {c: i for i, c in enumerate(sorted(CLASSES))}
    y = [label2id[r["topic"]] for r in rows]
    logged = metrics(out, "eval")[-1]
    # 2 processes, 61 examples padded to 64: the reduced metrics equal the whole-set ones
    assert logged["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert logged["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    clean = [i for i, r in enumerate(rows) if not r["noisy"]]
    clean_acc = accuracy_score([y[i] for i in clean], [pred[i] for i in clean])
    assert clean_acc >= 0.8, clean_acc  # it learned (chance is 1/3)


def test_model_card_parses_with_eval_results(run):
    from huggingface_hub import ModelCard

    out, _, _ = run
    card = ModelCard.load(out / "export" / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.license == "apache-2.0" and card.data.language == ["en"]
    logged = metrics(out, "eval")[-1]
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    # the exported weights scored on the held-out set after training (eval_results.json):
    # the same weights and examples as the last logged evaluation
    final = json.loads((out / "export" / "eval_results.json").read_text())["eval"]
    assert results == {
        "accuracy": round(logged["accuracy"], 4),
        "macro-F1": round(logged["macro_f1"], 4),
        "Matthews correlation": round(final["mcc"], 4),
    }
    assert final["n"] == 61
    for section in ("## Training data", "## Training", "hardware: CPU", "2 processes",
                    "throughput:", "## Intended use and limits", "## Configuration"):  # fmt: skip
        assert section in card.text, section


def test_push_to_hub_uploads_the_export_once(run):
    out, _, state = run
    assert state.unexpected == []
    assert len(state.commits) == 1  # the main process only
    commit = state.commits[0]
    assert commit.repo == "alice/topics"
    assert commit.files == {p.name: p.read_bytes() for p in (out / "export").iterdir()}


def test_token_never_written_or_logged(run):
    out, proc, state = run
    assert any(auth == f"Bearer {SENTINEL}" for _, _, auth in state.requests)  # it was used
    assert SENTINEL not in proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("events.out.tfevents" in p.name for p in files)  # the tracker wrote its config
    assert (out / "config.yaml").is_file()
    leaked = [str(p) for p in files if SENTINEL.encode() in p.read_bytes()]
    assert leaked == []
