"""Tokenizers: load one by name/folder, or train a WordPiece tokenizer on the corpus."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.data.sources import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """BERT's tokenizer recipe (normalise, split on whitespace/punctuation, WordPiece) trained
    with the Rust `tokenizers` library: seconds for the embedded corpus."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        do_lower_case=lowercase,
    )


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        if isinstance(t, str) and t.strip():
            batch.append(t)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise DataError(f"tokenizer.name_or_path={name_or_path!r} does not exist")
    try:
        # trust_remote_code stays off: a tokenizer never runs code from a download
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"tokenizer.name_or_path={name_or_path!r} cannot be loaded: {err}"
        ) from None


def check_tokenizer(tok: PreTrainedTokenizerBase, where: str, need_mask: bool = True) -> None:
    """Everything masked-LM needs of a tokenizer, checked before any work is done with it."""
    missing = [
        name
        for name in (["mask_token"] if need_mask else []) + ["cls_token", "sep_token", "pad_token"]
        if getattr(tok, name, None) is None
    ]
    if missing:
        raise DataError(f"tokenizer {where} has no {', '.join(missing)}; masked-LM needs them")


def save_tokenizer(tok: PreTrainedTokenizerBase, folder: str | Path) -> None:
    tok.save_pretrained(str(folder))


def word_continuation(tok: PreTrainedTokenizerBase) -> torch.Tensor:
    """Bool per token id: True where the token continues the previous word (WordPiece `##x`),
    so whole-word masking gives every piece of a word the decision of its first piece."""
    prefix = "##"
    model = getattr(getattr(tok, "backend_tokenizer", None), "model", None)
    if model is not None and getattr(model, "continuing_subword_prefix", None):
        prefix = model.continuing_subword_prefix
    cont = torch.zeros(len(tok), dtype=torch.bool)
    for token, i in tok.get_vocab().items():
        cont[i] = token.startswith(prefix)
    return cont
