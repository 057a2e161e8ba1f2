"""Data preparation: our one-pass tokenize + pack vs run_mlm's tokenize + group_texts.

Both run `datasets.Dataset.map(batched=True)` in memory (no cache files) over the same
documents with the same tokenizer, in this process, one after the other and repeated in
alternating order. run_mlm's two steps are copied from
transformers/examples/pytorch/language-modeling/run_mlm.py (the default, not line-by-line,
path): `tokenizer(texts, return_special_tokens_mask=True)`, then `group_texts` concatenates
every column of 1,000 documents and cuts it into blocks of `block_size`.
Throughput is counted in the same unit for both: WordPiece tokens of the corpus per second.
"""

from __future__ import annotations

import statistics
import time
from itertools import chain
from typing import Any

from pipeline.data.packing import PACK_BATCH, BlockTemplate, tokenize_and_pack_fn


def ours(ds: Any, tokenizer: Any, column: str, block_size: int) -> Any:
    return ds.map(
        tokenize_and_pack_fn(tokenizer, column, block_size, BlockTemplate.of(tokenizer)),
        batched=True,
        batch_size=PACK_BATCH,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
    )


def run_mlm(ds: Any, tokenizer: Any, column: str, block_size: int) -> Any:
    def tokenize_function(examples: dict) -> dict:
        return tokenizer(examples[column], return_special_tokens_mask=True)

    def group_texts(examples: dict) -> dict:
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = len(concatenated[list(examples.keys())[0]])
        total = (total // block_size) * block_size
        return {
            k: [t[i : i + block_size] for i in range(0, total, block_size)]
            for k, t in concatenated.items()
        }

    tokenized = ds.map(
        tokenize_function,
        batched=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
    )
    return tokenized.map(group_texts, batched=True, keep_in_memory=True, load_from_cache_file=False)


def corpus_tokens(ds: Any, tokenizer: Any, column: str) -> int:
    n = 0
    for start in range(0, len(ds), 5000):
        texts = ds[start : start + 5000][column]
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        n += sum(len(x) for x in ids)
    return n


def compare(
    ds: Any, tokenizer: Any, column: str, block_size: int, repeats: int = 3
) -> dict[str, dict[str, float]]:
    """{"ours"|"run_mlm": {seconds, tokens_per_s, blocks}}, medians over `repeats` runs."""
    import datasets

    datasets.disable_progress_bars()
    n_tokens = corpus_tokens(ds, tokenizer, column)
    fns = {"ours": ours, "run_mlm": run_mlm}
    times: dict[str, list[float]] = {k: [] for k in fns}
    blocks: dict[str, int] = {}
    for r in range(repeats):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t0 = time.perf_counter()
            out = fns[name](ds, tokenizer, column, block_size)
            times[name].append(time.perf_counter() - t0)
            blocks[name] = len(out)
    return {
        name: {
            "seconds": statistics.median(t),
            "tokens_per_s": n_tokens / statistics.median(t),
            "blocks": blocks[name],
            "corpus_tokens": n_tokens,
        }
        for name, t in times.items()
    }
