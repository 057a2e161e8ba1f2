import torch
from transformers import DataCollatorForLanguageModeling

from pipeline.data.tokenizer import train_wordpiece
from pipeline.objectives.mlm import IGNORE, MaskingSpec, mask_tokens

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


def test_statistics_match_transformers_collator():
    texts = ["in the beginning god created the heaven and the earth"] * 50
    tok = train_wordpiece(texts, vocab_size=200)
    ids = torch.tensor(tok(texts * 40, add_special_tokens=True)["input_ids"])
    ref = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    torch.manual_seed(0)
    ref_batch = ref.torch_call([{"input_ids": row} for row in ids])
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    spec = MaskingSpec(0.15, 0.8, 0.1, False)
    ours, labels = mask_tokens(
        ids, spec, special, tok.mask_token_id, len(tok), torch.Generator().manual_seed(0)
    )
    for corrupted, lab in ((ref_batch["input_ids"], ref_batch["labels"]), (ours, labels)):
        selected = lab != -100
        assert (
            abs(selected.float().mean() * ids.numel() / (~torch.isin(ids, special)).sum() - 0.15)
            < 0.01
        )
        assert abs((corrupted[selected] == tok.mask_token_id).float().mean() - 0.8) < 0.02
        assert not selected[torch.isin(ids, special)].any()
