"""Fine-tuning from a real (short) pretraining run's export, not only from a random-weight
folder saved by transformers: a few MLM steps of configs/mlm/tiny.yaml, shrunk, on the topic
texts. Its encoder must arrive in the classifier tensor for tensor (model.init=pretrained), and
not with model.init=random.

(Whether such a short pretraining beats random weights on the same fine-tune was measured and
it does not at this scale: see the branch report; no test claims it.)

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
COMMON = ["log.progress_bar=false", "log.plots=false", "log.trackers=[]"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    corpus = write_jsonl(root / "corpus.jsonl", make_rows(600, seed=10))
    out = root / "run"
    run_cli(
        ["train", TINY, f"data.path={corpus}", "data.block_size=32", "tokenizer.vocab_size=200",
         "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, "
         "num_attention_heads: 2}", "model.max_position_embeddings=64", "optim.lr=3e-3",
         "optim.warmup_steps=2", "train.max_steps=6", "train.micro_batch_size=32",
         "train.log_every=2", "train.eval_every=0", "train.checkpoint_every=6",
         "card.license=mit", "card.language=[en, fr]", *COMMON, "--output-dir", str(out)],
        timeout=600,
    )  # fmt: skip
    return out


def test_the_classifier_starts_from_the_pretrained_encoder(pretrained):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from pipeline.finetune.objective import load_pretrained

    export = pretrained / "export"
    mlm = metrics(pretrained, "train")
    assert mlm[-1]["loss"] < mlm[0]["loss"], (mlm[0], mlm[-1])  # it trained
    saved = load_file(export / "model.safetensors")
    config = AutoConfig.from_pretrained(export, num_labels=3)
    model = load_pretrained(str(export), config, is_main=False)
    torch.manual_seed(0)
    fresh = AutoModelForSequenceClassification.from_config(config)
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("bert.")}
    encoder = {k: v for k, v in encoder.items() if not k.startswith("bert.pooler")}
    assert len(encoder) > 10
    for key, value in encoder.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)
    differs = [k for k in encoder if not torch.equal(fresh.state_dict()[k], saved[k])]
    assert len(differs) > len(encoder) // 2  # random init is not the export


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
