import numpy as np

from pipeline.data.packing import pack_ids

CLS, SEP = 2, 3


def test_blocks_hold_every_token_once_in_order():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(10, 100, size=n)) for n in rng.integers(1, 50, size=200)]
    blocks, dropped = pack_ids(docs, block_size=16, cls_id=CLS, sep_id=SEP)
    assert blocks.shape[1] == 16
    assert (blocks[:, 0] == CLS).all() and (blocks[:, -1] == SEP).all()
    stream = blocks[:, 1:-1].reshape(-1).tolist()
    expected = [t for d in docs for t in [*d, SEP]]
    # nothing lost or repeated: the blocks are the document stream, minus a dropped tail
    assert stream == expected[: len(stream)]
    assert dropped == len(expected) - len(stream) and 0 <= dropped < 14


def test_documents_are_separated_by_sep():
    blocks, dropped = pack_ids([[11, 12], [13], [14, 15, 16]], block_size=5, cls_id=CLS, sep_id=SEP)
    # stream 11 12 SEP 13 SEP 14 15 16 SEP cut into chunks of 3, each wrapped in CLS..SEP
    assert blocks.tolist() == [
        [CLS, 11, 12, SEP, SEP],
        [CLS, 13, SEP, 14, SEP],
        [CLS, 15, 16, SEP, SEP],
    ]
    assert dropped == 0
