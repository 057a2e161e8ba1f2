"""Tokenizers: load one by name/folder, or train one on the corpus (WordPiece for BERT, byte-level
BPE for RoBERTa and ModernBERT); which tokens continue a word, for whole-word masking."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import (
    AddedToken,
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


# special tokens of a byte-level BPE, in id order: RoBERTa's (as roberta-base: <s>=0, <pad>=1,
# </s>=2, <unk>=3, <mask> last) or BERT's names (as ModernBERT's tokenizer)
BPE_SPECIALS = {
    "roberta": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "bert": {"cls": "[CLS]", "pad": "[PAD]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
}


def train_byte_bpe(
    texts: Iterable[str], vocab_size: int, lowercase: bool = False, style: str = "roberta"
) -> PreTrainedTokenizerFast:
    """GPT-2/RoBERTa's byte-level BPE (every byte is in the alphabet: no unknown token in
    practice; a leading space is part of a word, shown as `Ġ`) trained with `tokenizers`, with
    the family's special tokens; the mask token swallows the space before it, so
    `fill-mask("a <mask> b")` works as with roberta-base."""
    names = BPE_SPECIALS[style]
    order = [names[k] for k in ("cls", "pad", "sep", "unk", "mask")]
    tok = Tokenizer(models.BPE(unk_token=None))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=order,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    # the trainer added the mask token without lstrip; the flag must be on the backend's token
    # itself (a mask_token= argument below is not saved), or "be <mask>" leaves a lone "Ġ"
    # before the mask and fill-mask answers word pieces instead of words
    mask = AddedToken(names["mask"], lstrip=True, rstrip=False, special=True, normalized=False)
    tok.add_special_tokens([mask])
    cls_tok, sep_tok = names["cls"], names["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_tok} $A {sep_tok}",
        pair=f"{cls_tok} $A {sep_tok} {sep_tok} $B:1 {sep_tok}:1"
        if style == "roberta"
        else f"{cls_tok} $A {sep_tok} $B:1 {sep_tok}:1",
        special_tokens=[(cls_tok, tok.token_to_id(cls_tok)), (sep_tok, tok.token_to_id(sep_tok))],
    )
    extra = {"bos_token": cls_tok, "eos_token": sep_tok} if style == "roberta" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=names["unk"],
        pad_token=names["pad"],
        cls_token=cls_tok,
        sep_token=sep_tok,
        mask_token=mask,
        model_input_names=["input_ids", "attention_mask"],
        **extra,
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


def word_marking(tok: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """How the tokenizer's pieces show word boundaries: ("continuation", "##") for WordPiece
    (a piece continuing a word carries the prefix), ("start", "Ġ") for byte-level BPE and
    ("start", "▁") for SentencePiece / Metaspace (a piece starting a word carries it); None
    when it gives no word information (then whole-word masking is impossible)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    model = backend.model
    prefix = getattr(model, "continuing_subword_prefix", None)
    if type(model).__name__ == "WordPiece":
        return ("continuation", prefix or "##")
    if prefix:
        return ("continuation", prefix)
    described = repr(backend.pre_tokenizer) + repr(backend.decoder) + repr(backend.normalizer)
    if "ByteLevel" in described:
        return ("start", "Ġ")
    if "Metaspace" in described or "▁" in described:
        return ("start", "▁")
    return None


class WordBoundaries:
    """Where words start in a row of token ids: the fast tokenizer's word ids, recovered from
    the ids alone (packed blocks keep no offsets). WordPiece and SentencePiece mark it on each
    piece (`##` continues a word, `▁` starts one), a per-id table. Byte-level BPE marks a
    leading space (`Ġ`) only; its pre-tokenizer (GPT-2's) also starts a word where the
    character class changes (letters, digits, other; a lone space joins what follows), so a
    piece starts a word by its own first character and the previous piece's last one."""

    LETTER, DIGIT, OTHER, SPACE, INSIDE = 0, 1, 2, 3, 4

    def __init__(self, continuation: torch.Tensor, byte_level: bool = False,
                 first: torch.Tensor | None = None, last: torch.Tensor | None = None,
                 space: torch.Tensor | None = None) -> None:  # fmt: skip
        self.continuation, self.byte_level = continuation, byte_level
        self.first, self.last, self.space = first, last, space

    def starts(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool like `ids`: True at the first piece of a word (and at position 0)."""
        if not self.byte_level:
            out = ~self.continuation[ids]
        else:
            first, space = self.first[ids], self.space[ids]
            prev_last = torch.full_like(first, self.SPACE)
            prev_last[:, 1:] = self.last[ids[:, :-1]]
            joins = (
                (first == self.INSIDE)
                | (prev_last == self.SPACE)
                | ((first == prev_last) & (first != self.SPACE))
            )
            out = space | ~joins
            out |= self.continuation[ids]  # special tokens are words of their own
        out = out.clone()
        out[:, 0] = True
        return out

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        """`continuation[ids]`: True where a piece continues the word before it."""
        return ~self.starts(ids)


def _char_class(ch: str) -> int:
    if ch.isspace():
        return WordBoundaries.SPACE
    if ch.isdigit():
        return WordBoundaries.DIGIT
    return WordBoundaries.LETTER if ch.isalpha() else WordBoundaries.OTHER


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what byte-level BPE pieces are spelled in)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _byte_level_tables(tok: PreTrainedTokenizerBase) -> tuple[torch.Tensor, ...]:
    """(first class, last class, leading space) per id of a byte-level BPE vocabulary."""
    decode = {c: b for b, c in _bytes_to_unicode().items()}
    n = len(tok)
    first = torch.full((n,), WordBoundaries.OTHER, dtype=torch.int8)
    last = torch.full((n,), WordBoundaries.OTHER, dtype=torch.int8)
    space = torch.zeros(n, dtype=torch.bool)
    special = torch.zeros(n, dtype=torch.bool)
    specials = set(tok.all_special_tokens)
    for token, i in tok.get_vocab().items():
        if i >= n:
            continue
        if token in specials or any(c not in decode for c in token):
            special[i] = True
            continue
        raw = bytes(decode[c] for c in token)
        space[i] = raw[:1].isspace()
        body = raw.lstrip() if not raw.isspace() else raw
        if 0x80 <= body[0] < 0xC0:  # the middle of a character begun in the previous piece
            first[i] = WordBoundaries.INSIDE
        else:
            ch = body.decode("utf-8", errors="ignore")[:1]
            # a character cut off inside this piece: General Punctuation (e2 80..) is OTHER
            first[i] = _char_class(ch) if ch else (
                WordBoundaries.OTHER if body[0] == 0xE2 else WordBoundaries.LETTER
            )  # fmt: skip
        tail = raw.decode("utf-8", errors="ignore")
        complete = raw[-1] < 0x80 or tail.encode()[-1:] == raw[-1:]
        last[i] = _char_class(tail[-1]) if tail and complete else WordBoundaries.OTHER
        if raw.isspace():
            last[i] = WordBoundaries.SPACE
    return first, last, space, special


def word_boundaries(tok: PreTrainedTokenizerBase, where: str = "") -> WordBoundaries:
    """The tokenizer's word boundaries for whole-word and span masking; a DataError when it
    marks none (not WordPiece, byte-level BPE or SentencePiece)."""
    marking = word_marking(tok)
    if marking is None:
        name = where or getattr(tok, "name_or_path", "") or type(tok).__name__
        raise DataError(
            f"whole-word masking needs word boundaries, but tokenizer {name} gives no word ids "
            "(not WordPiece, byte-level BPE or SentencePiece); use objective.masking=token or span"
        )
    how, mark = marking
    if mark == "Ġ":
        first, last, space, special = _byte_level_tables(tok)
        return WordBoundaries(special, True, first, last, space)
    special = set(tok.all_special_tokens)
    cont = torch.zeros(len(tok), dtype=torch.bool)
    for token, i in tok.get_vocab().items():
        if i >= len(cont) or token in special:
            continue
        cont[i] = token.startswith(mark) if how == "continuation" else not token.startswith(mark)
    return WordBoundaries(cont)


def word_continuation(tok: PreTrainedTokenizerBase, where: str = "") -> WordBoundaries:
    """What whole-word masking indexes with token ids: `result[ids]` is True where a piece
    continues the word before it (see WordBoundaries)."""
    return word_boundaries(tok, where)
