"""Every encoder family through the one interface: the stock classes, encoder + head equal the
stock forward, sparse prediction equals the dense loss, FLOPs, checked overrides, document
attention (a document inside a packed block is encoded as it is alone), the bare encoder for
InfoNCE pooling, and the family's tokenizer + export in stock transformers (fill-mask)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from pipeline import config as config_lib
from pipeline.config import ConfigError
from pipeline.models.base import encoder_family, families, linear_parameters
from pipeline.objectives.infonce import pool
from pipeline.objectives.mlm import SparseMaskedLM, document_ids
from pipeline.train_config import RunConfig

FAMILIES = ["bert", "roberta", "modernbert"]
SMALL = "model.overrides={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 3, num_attention_heads: 2}"
STOCK = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
         "modernbert": "ModernBertForMaskedLM"}  # fmt: skip
PAD = {"bert": 0, "roberta": 1, "modernbert": 1}


def model_cfg(name: str, *overrides: str):
    extra = ["model.local_attention=8"] if name == "modernbert" else []
    args = [f"model.name={name}", SMALL, "model.dropout=0.0", *extra, *overrides]
    return config_lib.load_config(RunConfig, None, args).model


def build(name: str, vocab: int = 120):
    torch.manual_seed(0)
    family = encoder_family(name, "mlm")
    return family, family.build_masked_lm(model_cfg(name), vocab, PAD[name]).eval()


def ids(n=3, length=24, vocab=120, seed=0):
    return torch.randint(5, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def test_families_are_listed_and_unknown_names_list_them():
    assert set(FAMILIES) <= set(families())
    with pytest.raises(ConfigError) as err:
        config_lib.load_config(RunConfig, None, ["model.name=gpt9"])
    assert all(f in str(err.value) for f in FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_override_names_the_field_and_family(name):
    with pytest.raises(
        ConfigError, match=rf"hiden_size are not \w+Config fields \(model.name={name}\)"
    ):
        model_cfg(name, "model.overrides={hiden_size: 3}")


@pytest.mark.parametrize("name", FAMILIES)
def test_stock_class_head_and_sparse_loss(name):
    family, model = build(name)
    assert type(model).__name__ == STOCK[name]
    assert model.config._attn_implementation == "sdpa"
    x = ids()
    labels = torch.full_like(x, -100)
    labels[:, 3], labels[1, 7] = x[:, 3], x[1, 7]
    with torch.no_grad():
        reference = model(input_ids=x).logits
        ours = family.mlm_head(model)(family.encoder(model)(input_ids=x)[0])
        loss, _ = SparseMaskedLM(model, family, sparse_prediction=True)(input_ids=x, labels=labels)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    dense = torch.nn.functional.cross_entropy(reference.flatten(0, 1), labels.flatten())
    assert torch.allclose(loss, dense, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_flops_count_the_head_on_the_predicted_fraction(name):
    family, model = build(name)
    head = linear_parameters(family.mlm_head(model))
    full, sparse = family.flops_per_token(model, 16, 1.0), family.flops_per_token(model, 16, 0.15)
    assert full - sparse == pytest.approx(6 * head * 0.85)
    assert sparse > 6 * linear_parameters(family.encoder(model))


def test_modernbert_flops_count_local_layers_on_their_window():
    family, model = build("modernbert")
    c = model.config  # 3 layers: global, local, local; window 2 * 4 + 1 = 9
    assert c.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    enc = 6 * linear_parameters(family.encoder(model))
    assert family.encoder_flops_per_token(family.encoder(model), 64) == enc + 12 * 32 * (64 + 9 + 9)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_document_in_a_packed_block_is_encoded_as_alone(name):
    family, model = build(name)
    sep = 4
    docs = [ids(1, 11, seed=1)[0], ids(1, 17, seed=2)[0], ids(1, 5, seed=3)[0]]
    block = torch.cat([torch.tensor([3]), docs[0], torch.tensor([sep]), docs[1],
                       torch.tensor([sep]), docs[2], torch.tensor([sep])])[None]  # fmt: skip
    doc = document_ids(block, sep)
    assert doc.unique().tolist() == [0, 1, 2]
    with torch.no_grad():
        packed = model(**family.document_inputs(model, block, doc)).logits[0]
        for d in range(3):
            alone = block[:, doc[0] == d]
            logits = model(input_ids=alone).logits[0]
            assert torch.allclose(packed[doc[0] == d], logits, atol=1e-5, rtol=0), (name, d)
        # without document attention the documents see each other
        mixed = model(input_ids=block).logits[0]
        assert (mixed[doc[0] == 1] - packed[doc[0] == 1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_bare_encoder_pools_for_infonce(name):
    family = encoder_family(name, "infonce")
    torch.manual_seed(0)
    encoder = family.build_encoder(model_cfg(name), 120, PAD[name]).eval()
    assert type(encoder).__name__ == STOCK[name].replace("ForMaskedLM", "Model")
    x, mask = ids(), torch.ones(3, 24, dtype=torch.long)
    mask[0, 20:], mask[2, 9:] = 0, 0  # padded rows, as span-crop views are
    x[mask == 0] = PAD[name]
    with torch.no_grad():
        hidden = encoder(input_ids=x, attention_mask=mask)[0]
        for how in ("mean", "cls"):
            pooled = pool(hidden, mask, how)
            assert pooled.shape == (3, 32)
            # a row's embedding is its own: padding and the other rows of the batch change
            # nothing (ModernBERT unpads the batch into one sequence: no row may see another)
            for i in range(3):
                n = int(mask[i].sum())
                alone = encoder(input_ids=x[i : i + 1, :n])[0]
                assert torch.allclose(pooled[i], pool(alone, mask[i : i + 1, :n], how)[0],
                                      atol=1e-5, rtol=0), (name, how, i)  # fmt: skip


@pytest.fixture(scope="module")
def texts() -> list[str]:
    from pipeline.data.embedded import materialize

    lines = open(materialize("bible")["train"]).read().splitlines()[:600]
    return [json.loads(line)["text"] for line in lines]


@pytest.mark.parametrize("name", ["roberta", "modernbert"])
def test_family_tokenizer_and_export_work_in_stock_transformers(name, texts, tmp_path):
    family = encoder_family(name, "mlm")
    tok = family.train_tokenizer(texts, 600, True)
    specials = {"roberta": ("<s>", "</s>", "<pad>", "<mask>"),
                "modernbert": ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}[name]  # fmt: skip
    assert (tok.cls_token, tok.sep_token, tok.pad_token, tok.mask_token) == specials
    pieces = tok.convert_ids_to_tokens(tok("in the beginning god")["input_ids"])
    assert pieces[0] == specials[0] and pieces[-1] == specials[1] and "Ġgod" in pieces
    model = family.build_masked_lm(model_cfg(name), len(tok), tok.pad_token_id)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)).__name__ == STOCK[name]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("let there be light")["input_ids"] == tok("let there be light")["input_ids"]
    preds = pipeline("fill-mask", model=str(tmp_path))(f"let there be {loaded.mask_token}.")
    assert len(preds) == 5


def test_roberta_positions_cover_the_block():
    family, model = build("roberta")
    assert model.config.max_position_embeddings == 512 + 1 + 1  # as roberta-base's 514
    assert family.max_tokens(model.config) == 512


def varlen_reference(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     sliding_window=None, cu_seq_lens_q=None, **_):  # fmt: skip
    """What flash_attn_varlen_func computes, on CPU: attention inside each segment of the one
    packed sequence only, and for local layers inside FlashAttention's inclusive window
    (sliding_window - 1 on each side). Inputs [1, heads, tokens, dim]; output [1, tokens, ...]."""
    assert query.shape[0] == 1 and attention_mask is None and cu_seq_lens_q is not None
    out = torch.empty_like(query)
    bounds = cu_seq_lens_q.tolist()
    for s, e in zip(bounds, bounds[1:]):
        band = None
        if sliding_window is not None:
            pos = torch.arange(e - s)
            band = (pos[:, None] - pos[None, :]).abs() <= sliding_window - 1
        q, k, v = (t[:, :, s:e] for t in (query, key, value))
        out[:, :, s:e] = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=band, scale=scaling
        )
    return out.transpose(1, 2), None


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("name", FAMILIES)
def test_varlen_documents_equal_the_block_diagonal_mask(name, sparse, monkeypatch):
    """data.document_attention with a varlen kernel (FlashAttention on GPU; here a CPU reference
    of flash_attn_varlen_func registered with transformers): the rows run as one unpadded
    sequence of document segments, and the MLM loss, accuracy and gradients equal those of the
    SDPA block-diagonal mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    from pipeline.models import base

    AttentionInterface.register("varlen_reference", varlen_reference)
    AttentionMaskInterface.register("varlen_reference", flash_attention_mask)
    monkeypatch.setattr(base, "VARLEN_ATTENTION", {"varlen_reference"})
    family, model = build(name)
    sep = 4
    rows = []
    for seed in (1, 2):  # two blocks of 32, documents of different lengths, one cut at the end
        parts, g = [torch.tensor([3])], torch.Generator().manual_seed(seed)
        while sum(len(p) for p in parts) < 32:
            n = int(torch.randint(3, 12, (1,), generator=g))
            parts += [torch.randint(5, 120, (n,), generator=g), torch.tensor([sep])]
        rows.append(torch.cat(parts)[:32])
    block = torch.stack(rows)
    doc = document_ids(block, sep)
    labels = torch.full_like(block, -100)
    labels[:, 1::3] = block[:, 1::3]  # a third of the tokens predicted
    mlm = SparseMaskedLM(model, family, sparse_prediction=sparse)

    def run(impl: str):
        model.zero_grad()
        model.config._attn_implementation = impl
        loss, metrics = mlm(block, labels, document_ids=doc)
        loss.backward()
        return loss.detach(), metrics["mlm_accuracy"], [p.grad.clone() for p in model.parameters()]

    masked, varlen = run("sdpa"), run("varlen_reference")
    inputs = family.document_inputs(model, block, doc)
    assert inputs["input_ids"].shape == (1, 64) and inputs["attention_mask"] is None
    starts = [
        0,
        *(i for i in range(1, 64) if i % 32 == 0 or doc.view(-1)[i] != doc.view(-1)[i - 1]),
        64,
    ]
    assert inputs["cu_seq_lens_q"].tolist() == starts  # one segment per document and row
    assert torch.allclose(masked[0], varlen[0], atol=1e-5, rtol=0), (masked[0], varlen[0])
    assert masked[1] == varlen[1]
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(masked[2], varlen[2]))


def test_flash_attention_without_its_package_is_one_line():
    cfg = model_cfg("modernbert", "model.attn_implementation=flash_attention_2")
    with pytest.raises(
        ConfigError, match="flash_attention_2 needs the flash_attn package and a CUDA GPU"
    ):
        encoder_family("modernbert", "mlm").build_masked_lm(cfg, 120, 1)
