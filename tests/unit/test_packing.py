import numpy as np
import pytest

from pipeline.data.packing import BlockTemplate, pack_ids

CLS, SEP = 2, 3


def test_blocks_hold_every_token_once_in_order():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(10, 100, size=n)) for n in rng.integers(1, 50, size=200)]
    blocks, dropped = pack_ids(docs, block_size=16, template=BlockTemplate(CLS, SEP, SEP))
    assert blocks.shape[1] == 16
    assert (blocks[:, 0] == CLS).all() and (blocks[:, -1] == SEP).all()
    stream = blocks[:, 1:-1].reshape(-1).tolist()
    expected = [t for d in docs for t in [*d, SEP]]
    # nothing lost or repeated: the blocks are the document stream, minus a dropped tail
    assert stream == expected[: len(stream)]
    assert dropped == len(expected) - len(stream) and 0 <= dropped < 14


def test_documents_are_separated_by_sep():
    blocks, dropped = pack_ids(
        [[11, 12], [13], [14, 15, 16]], block_size=5, template=BlockTemplate(CLS, SEP, SEP)
    )
    # stream 11 12 SEP 13 SEP 14 15 16 SEP cut into chunks of 3, each wrapped in CLS..SEP
    assert blocks.tolist() == [
        [CLS, 11, 12, SEP, SEP],
        [CLS, 13, SEP, 14, SEP],
        [CLS, 15, 16, SEP, SEP],
    ]
    assert dropped == 0


def test_second_preparation_reads_the_cache(tmp_path, monkeypatch):
    import datasets

    from pipeline.data.packing import packed_blocks
    from pipeline.data.tokenizer import train_wordpiece

    texts = [f"chapter {i} and the words of the chapter number {i}" for i in range(300)]
    tok = train_wordpiece(texts, vocab_size=100)
    ds = datasets.Dataset.from_dict({"text": texts})
    first = packed_blocks(
        ds, tok, "text", 16, BlockTemplate.of(tok), "fingerprint-a", cache_dir=tmp_path
    )
    # every document and its [SEP] in one stream, cut into blocks of 14 between [CLS] and [SEP]
    stream = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert len(first) == stream // 14 and len(list((tmp_path).iterdir())) == 1
    assert all(len(ids) == 16 for ids in first["input_ids"])

    def no_map(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(datasets.Dataset, "map", no_map)
    second = packed_blocks(
        ds, tok, "text", 16, BlockTemplate.of(tok), "fingerprint-a", cache_dir=tmp_path
    )
    assert second["input_ids"] == first["input_ids"]
    # another block size is another cache entry
    with pytest.raises(AssertionError, match="cache should have been used"):
        packed_blocks(
            ds, tok, "text", 32, BlockTemplate.of(tok), "fingerprint-a", cache_dir=tmp_path
        )
