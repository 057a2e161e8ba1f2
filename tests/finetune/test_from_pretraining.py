"""Fine-tuning from a real (short) pretraining run, not only from random-weight exports: a few
dozen MLM steps of configs/mlm/tiny.yaml, shrunk, on the topic texts; then the same fine-tune
(data, seed, steps) from its export and from the same architecture with random weights.

The same run checks the model card of an *offline* `pipeline export`: hardware, processes and
global batch come from RUN_DIR/run_info.json as the trainer wrote it, not from the machine that
exports, and license and language from the card section of the config.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import ROOT, metrics, run_cli
from tests.finetune.conftest import make_rows, write_jsonl

TINY = str(ROOT / "configs/mlm/tiny.yaml")
RECIPE = str(ROOT / "configs/finetune/bible-sections.yaml")
COMMON = ["log.progress_bar=false", "log.plots=false", "log.trackers=[]"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    corpus = write_jsonl(root / "corpus.jsonl", make_rows(3000, seed=10))
    out = root / "run"
    run_cli(
        ["train", TINY, f"data.path={corpus}", "data.block_size=32", "tokenizer.vocab_size=200",
         "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, "
         "num_attention_heads: 2}", "model.max_position_embeddings=64", "optim.lr=3e-3",
         "optim.warmup_steps=5", "train.max_steps=60", "train.micro_batch_size=32",
         "train.log_every=20", "train.eval_every=0", "train.checkpoint_every=60",
         "card.license=mit", "card.language=[en, fr]", *COMMON, "--output-dir", str(out)],
        timeout=600,
    )  # fmt: skip
    return out


def _finetune(export, topic_data, out, init: str) -> dict:
    run_cli(
        ["finetune", str(export), RECIPE, f"data.path={topic_data['train']}",
         f"data.eval_path={topic_data['eval']}", "data.text_column=text",
         "data.label_column=topic", "data.labels=null", "data.chunk_words=0",
         "data.max_length=32", f"model.init={init}", "model.dropout=0.0", "optim.lr=1e-3",
         "optim.warmup_ratio=0.0", "optim.warmup_steps=2", "train.max_steps=12", "train.micro_batch_size=16",
         "train.seed=3", "train.log_every=6", "train.eval_every=0", "train.checkpoint_every=100",
         "train.export=false", *COMMON, "--output-dir", str(out)],
        timeout=600,
    )  # fmt: skip
    return metrics(out, "eval")[-1]


def test_pretraining_beats_random_weights_on_the_same_fine_tune(pretrained, topic_data, tmp_path):
    export = pretrained / "export"
    mlm = metrics(pretrained, "train")
    assert mlm[-1]["loss"] < mlm[0]["loss"] - 1.0, (mlm[0], mlm[-1])  # it did pretrain
    ours = _finetune(export, topic_data, tmp_path / "pretrained", "pretrained")
    base = _finetune(export, topic_data, tmp_path / "random", "random")
    # 12 steps: the random encoder has barely started; the pretrained one knows which words
    # go together (noisy eval labels: 20% wrong, so 0.8 is the ceiling)
    assert ours["loss"] < base["loss"] - 0.1, (ours, base)
    assert ours["accuracy"] > base["accuracy"] + 0.15, (ours, base)


def test_offline_export_card_reports_the_training_hardware(pretrained):
    info_path = pretrained / "run_info.json"
    info = json.loads(info_path.read_text())
    assert info["num_processes"] == 1  # trained here
    # as if trained on 4 GPUs with 2-step accumulation; exported here, offline, on CPU
    info.update(num_processes=4, device="NVIDIA H100 80GB HBM3", distributed_type="MULTI_GPU",
                gradient_accumulation_steps=2, mixed_precision="bf16")  # fmt: skip
    info_path.write_text(json.dumps(info))
    run_cli(["export", str(pretrained)])
    card = (pretrained / "export" / "README.md").read_text()
    assert "- hardware: 4 x NVIDIA H100 80GB HBM3 (4 processes; MULTI_GPU, bf16 precision)" in card
    assert "global batch: 256 examples" in card  # 32 x 4 processes x 2 steps
    assert not re.search(r"CPU \(|1 process\b", card), card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "mit" and meta["language"] == ["en", "fr"]
    assert "A `BertForMaskedLM` model (`bert`) pretrained with the `mlm` objective" in card
