"""The BERT family against its reference: the interface (encoder, LM head, encoder-only build,
from_pretrained, tied weights, FLOPs, block layout) gives exactly what stock transformers does
with the same weights."""

from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertModel

from pipeline import config as config_lib
from pipeline.models.base import encoder_family
from pipeline.models.bert import Bert
from pipeline.objectives.mlm import SparseMaskedLM
from pipeline.train_config import RunConfig

SMALL = "model.overrides={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2}"


def model_cfg(*overrides: str):
    return config_lib.load_config(RunConfig, None, [SMALL, "model.dropout=0.0", *overrides]).model


def ids(n=3, length=16, vocab=120, seed=0):
    return torch.randint(5, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def test_the_family_is_registered_and_builds_the_stock_class():
    assert encoder_family("bert", "mlm") is Bert
    model = Bert.build_masked_lm(model_cfg(), vocab_size=120, pad_token_id=0)
    assert type(model) is BertForMaskedLM
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size, c.hidden_dropout_prob) == (
        32,
        2,
        120,
        0.0,
    )


def test_encoder_and_head_give_the_reference_logits():
    torch.manual_seed(0)
    model = Bert.build_masked_lm(model_cfg(), 120, 0).eval()
    x = ids()
    with torch.no_grad():
        ours = Bert.mlm_head(model)(Bert.encoder(model)(input_ids=x)[0])
        reference = model(input_ids=x).logits
    assert torch.equal(ours, reference)


def test_sparse_prediction_equals_the_dense_loss_at_masked_positions():
    torch.manual_seed(0)
    model = Bert.build_masked_lm(model_cfg(), 120, 0).eval()
    x = ids()
    labels = torch.full_like(x, -100)
    labels[:, 3], labels[1, 7] = x[:, 3], x[1, 7]
    sparse = SparseMaskedLM(model, Bert, sparse_prediction=True)
    with torch.no_grad():
        loss, _ = sparse(input_ids=x, labels=labels)
        logits = model(input_ids=x).logits
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert torch.allclose(loss, reference, rtol=1e-6, atol=0)


def test_bare_encoder_and_from_pretrained_match_the_stock_classes(tmp_path):
    torch.manual_seed(0)
    model = Bert.build_masked_lm(model_cfg(), 120, 0).eval()
    model.save_pretrained(tmp_path / "mlm")
    encoder = Bert.build_encoder(model_cfg(), 120, 0)
    assert type(encoder) is BertModel and encoder.pooler is None
    encoder.load_state_dict(model.bert.state_dict())
    reloaded = Bert.build_masked_lm(model_cfg(f"model.from_pretrained={tmp_path / 'mlm'}"), 0, 0)
    stock = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    from_export = Bert.build_encoder(model_cfg(f"model.from_pretrained={tmp_path / 'mlm'}"), 0, 0)
    x = ids(seed=1)
    with torch.no_grad():
        assert torch.equal(encoder.eval()(input_ids=x)[0], model.bert(input_ids=x)[0])
        assert torch.equal(from_export.eval()(input_ids=x)[0], model.bert(input_ids=x)[0])
        assert torch.equal(reloaded.eval()(input_ids=x).logits, stock(input_ids=x).logits)


def test_tied_weights_and_flops():
    model = Bert.build_masked_lm(model_cfg(), 120, 0)
    assert "cls.predictions.decoder.weight" in Bert.tied_parameters(model)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    h, i, layers, v, seq = 32, 64, 2, 120, 16
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h)  # Q K V O, FFN in and out
    head = (h * h + h) + (h * v + v)  # transform dense, decoder (weight tied, bias)
    attention = 12 * layers * h * seq
    assert Bert.flops_per_token(model, seq, 1.0) == 6 * layers * per_layer + attention + 6 * head
    assert (
        Bert.flops_per_token(model, seq, 0.15)
        == 6 * layers * per_layer + attention + 6 * head * 0.15
    )


def test_block_template_is_cls_and_sep():
    from pipeline.data.tokenizer import load_tokenizer
    from tests.engine.golden import TOKENIZER

    tok = load_tokenizer(str(TOKENIZER))
    t = Bert.block_template(tok)
    assert (t.start, t.sep, t.end) == (tok.cls_token_id, tok.sep_token_id, tok.sep_token_id)


def test_bert_config_overrides_are_checked():
    import pytest

    with pytest.raises(config_lib.ConfigError, match="not BertConfig fields"):
        model_cfg("model.overrides={hiden_size: 3}")
    assert set(BertConfig().to_dict()) >= {"hidden_size", "num_hidden_layers"}
