#!/usr/bin/env python
"""Score a masked-LM export as a downstream user sees it: held-out masked-token loss and
accuracy with stock transformers (one document per sequence, padded, 15% masked under a fixed
seed: pipeline/bench/quality.py), the most-frequent-token baseline beside it, and fill-mask
answers.

    python scripts/score_mlm.py runs/tiny/export
    python scripts/score_mlm.py runs/tiny/export --block 128 --fill "the lord is my [MASK] ."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bench import quality  # noqa: E402

FILL = [
    "and god said , let there be [MASK] : and there was light .",
    "in the beginning god created the heaven and the [MASK] .",
    "the lord is my [MASK] ; i shall not want .",
]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("export", type=Path, help="a Hugging Face folder (RUN_DIR/export)")
    p.add_argument("--block", type=int, default=64, help="tokens per held-out sequence")
    p.add_argument("--docs", type=int, default=512, help="held-out documents (validation split)")
    p.add_argument("--source", default="embedded:bible", help="embedded:NAME or a text file")
    p.add_argument("--fill", nargs="*", default=FILL, help="fill-mask prompts ([MASK] marks)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    docs = quality.heldout_documents(args.docs, args.source)
    score = quality.evaluate_folder(args.export, docs, args.block)
    baseline = quality.frequent_token_baseline(docs, args.export, args.block)
    print(f"held-out ({len(docs)} documents, one per sequence, {args.block} tokens, 15% masked): "
          f"loss {score['loss']:.3f}, accuracy {score['accuracy']:.3f} "
          f"(most-frequent-token baseline {baseline:.3f})")  # fmt: skip
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(args.export))
    answers = {}
    for text in args.fill:
        prompt = text.replace("[MASK]", fill.tokenizer.mask_token)
        answers[text] = [(r["token_str"].strip(), round(r["score"], 3)) for r in fill(prompt)[:3]]
        shown = ", ".join(f"{w} ({s:.2f})" for w, s in answers[text])
        print(f"  {text}\n    -> {shown}")
    result = {**score, "baseline": baseline, "fill_mask": answers}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
