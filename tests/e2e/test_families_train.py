"""Each encoder family beyond BERT (tests/e2e/test_mlm_train.py covers BERT): a tiny run on a
slice of the embedded corpus trains (held-out loss well below the uniform guess of a fresh
model), its export loads in stock transformers (AutoModelForMaskedLM, AutoTokenizer, fill-mask,
AutoModelForSequenceClassification), `pipeline finetune` learns a small task from it (held-out
accuracy 1.0 measured, chance 1/3), and a run resumed from its middle checkpoint ends bitwise
equal to the straight run. The RoBERTa run also uses document attention and whole-word
masking, the ModernBERT run span masking."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import metrics, run_cli

STEPS, HALF, VOCAB = 40, 20, 1000
ARGS = [
    "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2}",
    "model.dropout=0.0",
    "data.block_size=32",
    f"tokenizer.vocab_size={VOCAB}",
    "train.micro_batch_size=16",
    "optim.lr=5e-3",
    "optim.warmup_steps=5",
    f"train.max_steps={STEPS}",
    f"train.checkpoint_every={HALF}",
    f"train.eval_every={HALF}",
    "train.keep_checkpoints=2",
    "data.eval_fraction=0.1",
    "log.progress_bar=false",
    "log.plots=false",
    "log.trackers=[]",
]
EXTRA = {
    "roberta": ["data.document_attention=true", "objective.masking=word"],
    "modernbert": ["objective.masking=span", "model.local_attention=16"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from pipeline.data.embedded import materialize

    lines = Path(materialize("bible")["train"]).read_text().splitlines()[:250]
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(family: str, corpus: Path, out: Path) -> None:
    run_cli(["train", "configs/mlm/tiny.yaml", f"model.name={family}", f"data.path={corpus}",
             *ARGS, *EXTRA[family], "--output-dir", str(out)])  # fmt: skip


def finetune(export: Path, tmp_path: Path) -> Path:
    from tests.finetune.conftest import make_rows, write_jsonl

    data = {k: write_jsonl(tmp_path / f"{k}.jsonl", make_rows(n, seed)) for k, n, seed in
            (("train", 400, 1), ("eval", 60, 2))}  # fmt: skip
    out = tmp_path / "finetuned"
    run_cli(["finetune", str(export), "configs/finetune/bible-sections.yaml",
             f"data.path={data['train']}", f"data.eval_path={data['eval']}",
             "data.label_column=topic", "data.labels=null", "data.chunk_words=0",
             "data.max_length=32", "optim.lr=3e-3", "train.max_steps=60", "train.micro_batch_size=16",
             "train.eval_every=60", "train.checkpoint_every=1000", "model.dropout=0.0",
             "log.progress_bar=false", "log.plots=false", "log.trackers=[]",
             "--output-dir", str(out)])  # fmt: skip
    return out


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_family_trains_exports_and_resumes(family, corpus, tmp_path):
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        pipeline,
    )

    straight = tmp_path / "straight"
    train(family, corpus, straight)
    evals = metrics(straight, "eval")
    assert [e["step"] for e in evals] == [HALF, STEPS]
    assert evals[-1]["loss"] < math.log(VOCAB) - 1.0, evals  # a fresh model: about log(V)

    export = str(straight / "export")
    model = AutoModelForMaskedLM.from_pretrained(export)
    assert type(model).__name__ == {"roberta": "RobertaForMaskedLM",
                                    "modernbert": "ModernBertForMaskedLM"}[family]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(export)
    preds = pipeline("fill-mask", model=export)(f"and god said, let there be {tok.mask_token}.")
    assert len(preds) == 5 and all(p["token_str"] for p in preds)
    clf = AutoModelForSequenceClassification.from_pretrained(export, num_labels=2)
    assert clf(**tok(["in the beginning"], return_tensors="pt")).logits.shape == (1, 2)

    # `pipeline finetune` on the export: the topic task of tests/finetune (3 classes, chance
    # 1/3) is learnt, and the fine-tuned folder is the family's stock classifier
    tuned = finetune(Path(export), tmp_path)
    accuracy = metrics(tuned, "eval")[-1]["accuracy"]
    assert accuracy > 0.8, accuracy
    clf = AutoModelForSequenceClassification.from_pretrained(tuned / "export")
    assert type(clf).__name__ == type(model).__name__.replace("MaskedLM", "SequenceClassification")

    # resume from the middle checkpoint in a copy: the same losses and the same final weights
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns(f"step-{STEPS:08d}", "export"))
    train(family, corpus, resumed)
    a = {r["step"]: r["loss"] for r in metrics(straight)}
    b = {r["step"]: r["loss"] for r in metrics(resumed)}
    assert a == b
    last = f"checkpoints/step-{STEPS:08d}/model.safetensors"
    pa, pb = load_file(str(straight / last)), load_file(str(resumed / last))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
