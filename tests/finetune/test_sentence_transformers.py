"""The export of an InfoNCE run loads with the real `SentenceTransformer(path)` (modules.json,
sentence_bert_config.json, 1_Pooling/config.json, 2_Normalize) and its `encode` gives the
objective's own embeddings: InfoNCEModule.embed (pooling, then L2 normalisation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli
from tests.finetune.conftest import make_rows, write_jsonl

TEXTS = [
    "ship wave sail the a and of fish harbour",
    "the tree hill",
    "cloud star moon bird wind rain sun thunder eagle dawn and of to in it was on",
]


@pytest.fixture(scope="module")
def infonce_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("infonce")
    corpus = write_jsonl(root / "corpus.jsonl", make_rows(300, seed=5))
    out = root / "run"
    run_cli(
        ["train", str(ROOT / "configs/ebm/infonce-tiny.yaml"), f"data.path={corpus}",
         "tokenizer.vocab_size=200", "data.block_size=16",
         "model.overrides={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
         "num_attention_heads: 2}", "objective.pooling=mean", "train.max_steps=3",
         "train.micro_batch_size=8", "train.log_every=1", "train.eval_every=0",
         "train.checkpoint_every=3", "optim.warmup_steps=1", "log.progress_bar=false",
         "log.plots=false", "--output-dir", str(out)],
        timeout=600,
    )  # fmt: skip
    return out / "export"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_transformer_encodes_as_the_objective_embeds(infonce_export, pooling, tmp_path):
    import shutil

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from pipeline.objectives.infonce import InfoNCEModule, write_sentence_transformers

    export = infonce_export
    if pooling == "cls":  # the files a pooling=cls run writes, over the same weights
        export = Path(shutil.copytree(infonce_export, tmp_path / "cls"))
        write_sentence_transformers(str(export), 32, "cls", 16)
    pool_cfg = json.loads((export / "1_Pooling" / "config.json").read_text())
    assert pool_cfg["pooling_mode_mean_tokens"] == (pooling == "mean")
    assert pool_cfg["pooling_mode_cls_token"] == (pooling == "cls")
    assert pool_cfg["word_embedding_dimension"] == 32
    st = SentenceTransformer(str(export), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert st.max_seq_length == 16
    got = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))

    tok = AutoTokenizer.from_pretrained(export)
    ours = InfoNCEModule(AutoModel.from_pretrained(export), 0.05, pooling, True).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        want = ours.embed(batch["input_ids"], batch["attention_mask"])
    assert got.shape == want.shape == (3, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the texts differ: not one vector for all (a pooling that ignored the mask would still
    # pass on texts of equal length, hence the unequal lengths above)
    assert float((want[0] - want[2]).norm()) > 1e-3
