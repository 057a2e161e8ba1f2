"""One benchmark case in its own process: `python -m pipeline.bench.worker SPEC_JSON`.

Prints one line `BENCH_RESULT {json}` with tokens_per_s (after the warm-up window),
step_time_s, peak_mem_mb (this process only), the final training loss and the device.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.cases import RESULT_TAG, run_config
from pipeline.bench.report import device_name
from pipeline.engine.metrics import peak_memory_mb


def timed_overrides(spec: dict) -> list[str]:
    steps, window = spec["steps"], spec["window"]
    return [
        *spec["overrides"],
        f"train.max_steps={steps}",
        f"train.log_every={window}",
        f"train.checkpoint_every={steps + 1}",
    ]


def run_ours(spec: dict) -> dict[str, Any]:
    from pipeline.engine.metrics import read_metrics
    from pipeline.engine.train import train

    cfg = run_config(timed_overrides(spec), spec["output_dir"])
    train(cfg)
    rows = [m for m in read_metrics(cfg.output_dir) if m["split"] == "train"]
    timed = [m for m in rows if m["step"] > spec["window"]]
    if not timed:
        raise RuntimeError(f"no logged window after the warm-up of {spec['window']} steps")
    # each row covers `window` steps: seconds = step_time_s x window, tokens = tokens/s x seconds
    seconds = sum(m["step_time_s"] * spec["window"] for m in timed)
    tokens = sum(m["tokens_per_s"] * m["step_time_s"] * spec["window"] for m in timed)
    return {
        "tokens_per_s": tokens / seconds,
        "step_time_s": seconds / (len(timed) * spec["window"]),
        "loss": rows[-1].get("loss"),
        "device_type": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_trainer(spec: dict) -> dict[str, Any]:
    """transformers' Trainer + DataCollatorForLanguageModeling, as run_mlm.py sets them up."""
    import datasets
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from pipeline import registry
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.engine import setup

    cfg = run_config(timed_overrides(spec), spec["output_dir"])
    steps, window = spec["steps"], spec["window"]
    tok = load_tokenizer(cfg.tokenizer.name_or_path)
    torch.manual_seed(cfg.train.seed)
    model = registry.get("model", cfg.model.name).build_masked_lm(
        cfg.model, len(tok), tok.pad_token_id
    )
    data = datasets.load_from_disk(spec["extra"]["trainer_data"])
    accum = setup.accumulation_steps(cfg.train, 1)
    precision = setup.mixed_precision(cfg.engine.mixed_precision)
    on_cuda = torch.cuda.is_available()
    from pipeline.objectives.base import width_lr

    o = cfg.optim
    args = TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "trainer"),
        per_device_train_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=accum,
        max_steps=steps,
        learning_rate=o.lr if o.lr is not None else width_lr(model.config.hidden_size),  # ours
        weight_decay=o.weight_decay,
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm,
        warmup_steps=o.warmup_steps or int(steps * o.warmup_ratio),
        lr_scheduler_type={"constant": "constant_with_warmup"}.get(o.schedule, o.schedule),
        logging_steps=window,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=cfg.train.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_cuda,
        dataloader_num_workers=cfg.data.num_workers,
    )
    collator = DataCollatorForLanguageModeling(
        tokenizer=tok, mlm_probability=cfg.objective.mask_prob
    )

    class StepClock(TrainerCallback):
        """Wall clock at the end of the warm-up window and of the last step."""

        marks: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step in (window, steps):
                if on_cuda:
                    torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()

    clock = StepClock()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collator,
        processing_class=tok,
        callbacks=[clock],
    )
    trainer.train()
    seconds = clock.marks[steps] - clock.marks[window]
    tokens_per_step = cfg.train.micro_batch_size * accum * cfg.data.block_size
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_s": tokens_per_step * (steps - window) / seconds,
        "step_time_s": seconds / (steps - window),
        "loss": losses[-1] if losses else None,
        "device_type": "cuda" if on_cuda else "cpu",
    }


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec["steps"] <= spec["window"] or spec["steps"] % spec["window"]:
        raise SystemExit(
            f"steps ({spec['steps']}) must be a multiple > 1 of window ({spec['window']})"
        )
    run = {"ours": run_ours, "trainer": run_trainer}[spec["runner"]]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run(spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result.update(
        name=spec["name"],
        runner=spec["runner"],
        peak_mem_mb=peak_memory_mb(device),
        device=device_name(),
    )
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
