"""Time to quality: our engine vs transformers' Trainer at the same wall-clock budget.

Both train the same model config from the same init on the same packed blocks (prepared once,
before any clock starts) with the same tokenizer, batch and sequence length, each in its own
process, for `budget_s` seconds of training (setup excluded for both, the clock starts at the
first step; each side's own snapshot writes count against it). Every `budget_s / snapshots`
seconds each side saves its model; afterwards every snapshot is scored by ONE evaluation that
uses stock transformers only (`evaluate_folder`): held-out documents, one per sequence,
truncated and padded, 15% of their tokens masked by `DataCollatorForLanguageModeling` under a
fixed seed (the same masks for every snapshot of both sides), cross-entropy and accuracy over
the masked tokens. That is the number a downstream user of the export sees; our engine's own
packed-block evaluation is reported beside it.

The Trainer runs as run_mlm.py sets it up (`DataCollatorForLanguageModeling`, AdamW), with the
settings run_mlm users take: lr 1e-3 constant after 20 warmup steps (configurable).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULT_TAG = "QUALITY_RESULT "


def heldout_documents(limit: int, source: str = "embedded:bible") -> list[str]:
    """Held-out documents: the embedded corpus's validation chapters (or a local text file)."""
    if source.startswith("embedded:"):
        from pipeline.data.embedded import materialize

        path = Path(materialize(source.split(":", 1)[1])["validation"])
        docs = [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
    else:
        docs = [line for line in Path(source).read_text().splitlines() if line.strip()]
    return docs[:limit]


@torch.no_grad()
def evaluate_folder(
    folder: str | Path, docs: list[str], block: int, mask_prob: float = 0.15, seed: int = 0,
    batch_size: int = 32,
) -> dict[str, float]:  # fmt: skip
    """Masked-token loss and accuracy of a Hugging Face folder on `docs`, with stock
    transformers only: one document per sequence (truncated to `block` tokens with its special
    tokens, padded), masks from DataCollatorForLanguageModeling seeded by `seed`."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    collator = DataCollatorForLanguageModeling(tokenizer=tok, mlm_probability=mask_prob)
    enc = tok(docs, truncation=True, max_length=block)
    generator = torch.Generator().manual_seed(seed)
    total_loss, hits, count = 0.0, 0, 0
    for start in range(0, len(docs), batch_size):
        rows = [{"input_ids": ids} for ids in enc["input_ids"][start : start + batch_size]]
        state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        batch = collator(rows)  # the collator draws from the global generator: seeded per batch
        torch.set_rng_state(state)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        where = batch["labels"] != -100
        targets = batch["labels"][where]
        picked = logits[where].float()
        total_loss += float(torch.nn.functional.cross_entropy(picked, targets, reduction="sum"))
        hits += int((picked.argmax(-1) == targets).sum())
        count += int(where.sum())
    return {"loss": total_loss / count, "accuracy": hits / count, "masked_tokens": count}


def frequent_token_baseline(docs: list[str], folder: str | Path, block: int) -> float:
    """Accuracy of always answering the most frequent non-special token of the held-out text."""
    from collections import Counter

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    special = set(tok.all_special_ids)
    counts = Counter(
        i for ids in tok(docs, truncation=True, max_length=block)["input_ids"] for i in ids
        if i not in special
    )  # fmt: skip
    return counts.most_common(1)[0][1] / sum(counts.values())


# --------------------------------------------------------------------------- the Trainer side


def run_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    """transformers' Trainer for `budget_s` seconds of training, a snapshot every
    `budget_s / snapshots` seconds into OUT/snapshots/t-SECONDS."""
    import datasets
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from pipeline import registry
    from pipeline.bench.cases import run_config
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.engine import setup

    out = Path(spec["output_dir"])
    # the model, tokenizer and blocks of our side's recipe: the two differ in the trainer only
    cfg = run_config(spec["overrides"], out, spec.get("recipe"))
    tok = load_tokenizer(cfg.tokenizer.name_or_path)
    torch.manual_seed(cfg.train.seed)
    model = registry.get("model", cfg.model.name).build_masked_lm(
        cfg.model, len(tok), tok.pad_token_id
    )
    budget, every = spec["budget_s"], spec["budget_s"] / spec["snapshots"]
    precision = setup.mixed_precision(cfg.engine.mixed_precision)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg.train.micro_batch_size,
        max_steps=10**7, learning_rate=spec["trainer_lr"], warmup_steps=spec["trainer_warmup"],
        lr_scheduler_type="constant_with_warmup", weight_decay=cfg.optim.weight_decay,
        logging_steps=50, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=cfg.train.seed, bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip

    class Budget(TrainerCallback):
        """Snapshots at the time marks; stop at the budget (the snapshot time counts)."""

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.start, self.next = time.perf_counter(), every

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            elapsed = time.perf_counter() - self.start
            if elapsed >= self.next or elapsed >= budget:
                folder = out / "snapshots" / f"t-{elapsed:08.2f}-s{state.global_step}"
                kw["model"].save_pretrained(folder)
                tok.save_pretrained(folder)
                self.next += every
            if elapsed >= budget:
                control.should_training_stop = True

    trainer = Trainer(
        model=model, args=args, train_dataset=datasets.load_from_disk(spec["trainer_data"]),
        data_collator=DataCollatorForLanguageModeling(tokenizer=tok, mlm_probability=0.15),
        processing_class=tok, callbacks=[Budget()],
    )  # fmt: skip
    trainer.train()
    return {"steps": trainer.state.global_step}


if __name__ == "__main__":
    result = run_trainer(json.loads(sys.argv[1]))
    print(RESULT_TAG + json.dumps(result), flush=True)
