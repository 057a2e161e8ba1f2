import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from pipeline.data.tokenizer import train_wordpiece
from pipeline.objectives.mlm import IGNORE, MaskingSpec, mask_tokens, span_length_probs

SPECIAL = torch.tensor([0, 1, 2, 3, 4])  # pad unk cls sep mask
MASK, VOCAB = 4, 1000


def _batch(n=400, length=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, 50] = 3  # a document boundary inside the block
    return ids


def test_rate_and_80_10_10_split():
    ids = _batch()
    spec = MaskingSpec(0.15, 0.8, 0.1, False)
    corrupted, labels = mask_tokens(
        ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(1)
    )
    selected = labels != IGNORE
    maskable = ~torch.isin(ids, SPECIAL)
    rate = selected.sum() / maskable.sum()
    assert abs(rate - 0.15) < 0.005, rate
    assert (labels[selected] == ids[selected]).all()  # labels are the original tokens
    n = selected.sum()
    as_mask = (corrupted[selected] == MASK).sum() / n
    kept = (corrupted[selected] == ids[selected]).sum() / n
    as_random = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(as_random - 0.1) < 0.01
    assert (corrupted[~selected] == ids[~selected]).all()  # unselected tokens untouched


def test_special_tokens_never_masked():
    ids = _batch()
    spec = MaskingSpec(0.9, 0.8, 0.1, False)
    corrupted, labels = mask_tokens(
        ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(2)
    )
    special = torch.isin(ids, SPECIAL)
    assert (labels[special] == IGNORE).all()
    assert (corrupted[special] == ids[special]).all()


def test_same_generator_same_masks():
    ids = _batch(n=8)
    spec = MaskingSpec(0.15, 0.8, 0.1, False)
    a = mask_tokens(ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_whole_word_masking_masks_all_pieces_of_a_word():
    ids = _batch()
    continuation = torch.zeros(VOCAB, dtype=torch.bool)
    continuation[500:] = True  # ids >= 500 are "##pieces" continuing the previous word
    spec = MaskingSpec(0.15, 0.8, 0.1, True)
    _, labels = mask_tokens(
        ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(4), continuation
    )
    selected = labels != IGNORE
    is_cont = continuation[ids] & ~torch.isin(ids, SPECIAL)
    # a continuation piece is selected exactly when the piece before it is (same word)
    prev_selected = selected[:, :-1]
    cont = is_cont[:, 1:] & ~torch.isin(ids[:, :-1], SPECIAL)
    assert torch.equal(selected[:, 1:][cont], prev_selected[cont])
    assert abs(selected.sum() / (~torch.isin(ids, SPECIAL)).sum() - 0.15) < 0.02


def _stats(ids, corrupted, labels, special, mask_id):
    selected = labels != IGNORE
    rate = selected.sum().item() / (~torch.isin(ids, special)).sum().item()
    as_mask = (corrupted[selected] == mask_id).float().mean().item()
    kept = (corrupted[selected] == ids[selected]).float().mean().item()
    return rate, as_mask, kept, selected[torch.isin(ids, special)].any().item()


def test_statistics_match_transformers_collator():
    """Ours and DataCollatorForLanguageModeling on the same texts: the same selection rate,
    [MASK]/kept shares, and neither touches special tokens (compared with each other)."""
    texts = _bible(100)
    tok = train_wordpiece(texts, vocab_size=500)
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=64, padding="max_length")
    ids = torch.tensor(enc["input_ids"])
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    ref = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    torch.manual_seed(0)
    ref_batch = ref.torch_call([{"input_ids": row} for row in ids])
    spec = MaskingSpec(0.15, 0.8, 0.1, False)
    ours, labels = mask_tokens(
        ids, spec, special, tok.mask_token_id, len(tok), torch.Generator().manual_seed(0)
    )
    theirs = _stats(ids, ref_batch["input_ids"], ref_batch["labels"], special, tok.mask_token_id)
    mine = _stats(ids, ours, labels, special, tok.mask_token_id)
    assert abs(mine[0] - theirs[0]) < 0.01, (mine, theirs)
    assert abs(mine[1] - theirs[1]) < 0.03 and abs(mine[2] - theirs[2]) < 0.03, (mine, theirs)
    assert mine[3] is False and theirs[3] is False


def _bible(n: int) -> list[str]:
    import json

    from pipeline.data.embedded import materialize

    lines = open(materialize("bible")["train"]).read().splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


def _sentencepiece(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   cls_token="<s>", sep_token="</s>", mask_token="<mask>")  # fmt: skip


@pytest.mark.parametrize("kind", ["wordpiece", "byte-bpe", "sentencepiece"])
def test_word_boundaries_equal_the_tokenizers_word_ids(kind):
    """The word-start table (## / Ġ / ▁) marks exactly where the fast tokenizer's word ids
    change, on real text; whole-word masking then gives each word one decision."""
    from pipeline.data.tokenizer import train_byte_bpe, word_continuation, word_marking

    texts = _bible(60)
    tok = {"wordpiece": lambda: train_wordpiece(texts, 400),
           "byte-bpe": lambda: train_byte_bpe(texts, 400, lowercase=False),
           "sentencepiece": lambda: _sentencepiece(texts)}[kind]()  # fmt: skip
    mark = {"wordpiece": "##", "byte-bpe": "Ġ", "sentencepiece": "▁"}[kind]
    assert word_marking(tok)[1] == mark
    cont = word_continuation(tok)
    checked = 0
    for text in texts:
        enc = tok(text, add_special_tokens=False)
        words = enc.word_ids()
        expected = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
        ours = cont.starts(torch.tensor([enc["input_ids"]]))[0].tolist()
        assert ours == expected, (kind, text)
        checked += sum(not e for e in expected)
    assert checked > 1000  # many words of several pieces were checked

    ids = torch.tensor([[tok.cls_token_id] + tok(t, add_special_tokens=False)["input_ids"][:62]
                        + [tok.sep_token_id] for t in texts if len(tok(t)["input_ids"]) > 64])  # fmt: skip
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    spec = MaskingSpec(0.15, 0.8, 0.1, True)
    _, labels = mask_tokens(
        ids, spec, special, tok.mask_token_id, len(tok), torch.Generator().manual_seed(0), cont
    )
    selected = labels != IGNORE
    inside = cont[ids][:, 1:] & ~torch.isin(ids[:, :-1], special)
    assert torch.equal(selected[:, 1:][inside], selected[:, :-1][inside])


def test_whole_word_masking_without_word_boundaries_is_an_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pipeline.data.sources import DataError
    from pipeline.data.tokenizer import word_continuation

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(DataError, match="gives no word ids") as err:
        word_continuation(tok, "my-tokenizer")
    assert "\n" not in str(err.value) and "my-tokenizer" in str(err.value)


def test_span_length_distribution_is_spanberts():
    lengths = torch.arange(1, 11).double()
    probs = torch.from_numpy(span_length_probs(3.8, 10))
    assert (probs * lengths).sum().item() == pytest.approx(3.8, abs=1e-6)
    # SpanBERT's geometric p = 0.2 clipped at 10 has this mean
    p = 0.2 * 0.8 ** (lengths - 1)
    assert torch.allclose(probs, p / p.sum(), atol=2e-3)
    assert (torch.from_numpy(span_length_probs(2.0, 5)) * lengths[:5]).sum() == pytest.approx(2.0)


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_span_masking_rate_and_span_lengths(rate):
    """masking=span: the configured rate (the budget per row), contiguous runs about the
    configured mean length (token masking's runs are about 1 / (1 - rate)), whole words."""
    ids = _batch(n=300)
    continuation = torch.zeros(VOCAB, dtype=torch.bool)
    continuation[800:] = True  # a fifth of the tokens continue a word
    gen = torch.Generator().manual_seed(5)
    spec = MaskingSpec(rate, 0.8, 0.1, False, span=True, span_mean=3.8, span_max=10)
    corrupted, labels = mask_tokens(ids, spec, SPECIAL, MASK, VOCAB, gen, continuation)
    selected = labels != IGNORE
    special = torch.isin(ids, SPECIAL)
    assert not selected[special].any()
    realised = selected.sum().item() / (~special).sum().item()
    assert abs(realised - rate) < 0.003, realised
    n = selected.sum()
    assert abs((corrupted[selected] == MASK).sum() / n - 0.8) < 0.02
    # runs of selected tokens, in words (a run ends at an unselected token)
    words_per_run = []
    for row, sel in zip(ids, selected):
        run = 0
        for t, s in zip(row.tolist(), sel.tolist()):
            if s:
                run += 0 if continuation[t] else 1
            elif run:
                words_per_run.append(run)
                run = 0
    mean_run = sum(words_per_run) / len(words_per_run)
    assert 3.0 < mean_run < 6.0, mean_run  # spans of mean 3.8, some merged, some cut
    token_mode = mask_tokens(ids, MaskingSpec(rate, 0.8, 0.1, True), SPECIAL, MASK, VOCAB,
                             torch.Generator().manual_seed(5), continuation)[1] != IGNORE  # fmt: skip
    assert abs(token_mode.sum().item() / (~special).sum().item() - rate) < 0.01
    # whole words: a continuation piece is selected with the piece before it (but at the cut)
    inside = continuation[ids][:, 1:] & ~torch.isin(ids[:, :-1], SPECIAL)
    disagree = (selected[:, 1:][inside] != selected[:, :-1][inside]).sum().item()
    assert disagree <= len(ids)  # at most one cut word per row


def test_span_masking_is_reproducible():
    ids = _batch(n=8)
    spec = MaskingSpec(0.15, 0.8, 0.1, False, span=True)
    a = mask_tokens(ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, spec, SPECIAL, MASK, VOCAB, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("style", ["roberta", "bert"])
def test_byte_bpe_mask_token_takes_the_space_before_it_after_a_reload(style, tmp_path):
    """As in training, where "Ġthe" is replaced by the mask: "made <mask> firmament" must
    encode as "made the firmament" with that one token swapped, in the saved tokenizer a user's fill-mask loads
    (without the flag on the backend's token a lone "Ġ" precedes the mask, and the model
    answers word pieces: "rough", "ise")."""
    from transformers import AutoTokenizer

    from pipeline.data.tokenizer import train_byte_bpe

    train_byte_bpe(_bible(60), 400, style=style).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    word = tok("and god made the firmament", add_special_tokens=False)["input_ids"]
    masked = tok(f"and god made {tok.mask_token} firmament", add_special_tokens=False)["input_ids"]
    the = tok.convert_tokens_to_ids("Ġthe")
    assert word.count(the) == 1
    assert masked == [tok.mask_token_id if t == the else t for t in word], (
        tok.convert_ids_to_tokens(masked)
    )
