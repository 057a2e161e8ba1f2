"""The training loop. One loop for every objective, under DDP or DeepSpeed; read top to bottom."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline import config as config_lib
from pipeline import registry
from pipeline.engine import checkpoint, elastic, faults, guards, setup
from pipeline.engine.batches import StepBatches, StreamBatches, eval_batches, micro_batches
from pipeline.engine.context import RunContext
from pipeline.engine.memory import peak_memory_by_rank
from pipeline.engine.metrics import (
    Averager,
    MetricsLog,
    peak_flops,
    peak_memory_mb,
    write_run_info,
)
from pipeline.engine.signals import PREEMPTED, StopFlag

log = logging.getLogger("pipeline")


def train(cfg: Any) -> dict[str, float]:
    """Train `cfg` (a RunConfig) to its end; return the final eval (or train) metrics."""
    run_dir = Path(cfg.output_dir)
    resolved = config_lib.redact(config_lib.to_dict(cfg))

    # ---- cheap checks first: nothing is tokenized or built before they pass
    world = setup.launched_world_size()
    accum = setup.accumulation_steps(cfg.train, world)
    if cfg.train.push_to_hub:  # token, repo name, online: fail now, not after training
        from pipeline.hub import check_can_publish

        check_can_publish(cfg.train.push_to_hub, export=cfg.train.export)
    setup.prepare_run_dir(run_dir)
    if cfg.train.resume != "never":
        setup.check_resume_compatible(run_dir, resolved)
    resume_from = checkpoint.latest_valid(run_dir) if cfg.train.resume != "never" else None
    if cfg.train.resume == "required" and resume_from is None:
        raise setup.SetupError(
            f"train.resume=required but {run_dir}/checkpoints has no valid checkpoint"
        )

    accelerator = setup.make_accelerator(cfg, run_dir, accum)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, accelerator=accelerator)
    if ctx.is_main:
        config_lib.dump_yaml(cfg, run_dir / "config.yaml")
        if accelerator.trackers is not None and cfg.log.trackers:
            accelerator.init_trackers("pipeline", config=config_lib.flatten(resolved))
        write_run_info(run_dir, accelerator, accum)
    stop = StopFlag().install()

    # ---- data, model, optimizer (seeded identically on every process)
    torch.manual_seed(cfg.train.seed)
    objective = registry.get("objective", cfg.objective.name)(cfg.objective)
    data = objective.build_data(ctx)
    torch.manual_seed(cfg.train.seed)
    module = objective.build_module(ctx)
    if elastic.needs_weights_only(resume_from, ctx.world_size):
        # another process count: full weights now, before sharding; fresh optimizer (elastic.py)
        elastic.load_weights(module, resume_from, ctx.world_size, bool(cfg.train.global_batch_size))
    if cfg.engine.strategy == "deepspeed":
        from pipeline.engine.deepspeed import fill_model_sizes

        fill_model_sizes(accelerator, module)  # "auto" bucket sizes follow the hidden size
    # counted before prepare: ZeRO-3 leaves empty parameter shards behind
    flops_per_example = objective.flops_per_example(module)
    optimizer = setup.build_optimizer(module, cfg.optim, accelerator.device)
    scheduler = setup.build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    # the scheduler is stepped by us once per optimizer step (Accelerate's wrapper would step
    # it once per process), and saved in trainer_state
    module, optimizer = accelerator.prepare(module, optimizer)
    if cfg.engine.compile:
        module = setup.compile_module(module, cfg.engine)

    # ---- resume
    start_step, tokens_seen, elapsed_before, stream_state = 0, 0, 0.0, None
    spikes = guards.LossSpikeDetector(cfg.train.loss_spike_window, cfg.train.loss_spike_zscore)
    if resume_from is not None:
        state, rank_state = checkpoint.load(accelerator, resume_from)
        start_step, tokens_seen = state["step"], state["tokens"]
        spikes.load_state_dict(state.get("loss_spike"))
        elapsed_before = state.get("elapsed_s", 0.0)
        scheduler.load_state_dict(state["scheduler"])
        objective.load_state_dict(rank_state.get("objective", {}))
        stream_state = rank_state.get("stream")
        if ctx.is_main:
            log.info("resumed from %s at step %d", resume_from, start_step)

    micro = cfg.train.micro_batch_size
    if cfg.data.streaming:
        batches = StreamBatches(
            data.train, objective.collate, seed=cfg.train.seed, micro_batch=micro, rank=ctx.rank
        )
        if stream_state is not None:
            batches.load_state_dict(stream_state)
        batch_iter = iter(batches)
    else:
        batches = StepBatches(
            data.train, objective.collate, seed=cfg.train.seed, micro_batch=micro,
            accumulation=accum, rank=ctx.rank, world=ctx.world_size,
        )  # fmt: skip
        pin = cfg.data.pin_memory and accelerator.device.type == "cuda"
        batch_iter = micro_batches(batches, start_step, cfg.data.num_workers, pin_memory=pin)
    tokens_per_step = micro * accum * ctx.world_size * data.tokens_per_example
    flops_per_step = flops_per_example * micro * accum * ctx.world_size
    peak = peak_flops(accelerator.device, cfg.engine.peak_flops)
    metrics_log = MetricsLog(run_dir, accelerator, enabled=ctx.is_main)

    saved_at = [-1]  # a stop right after a checkpoint must not write (and replace) it again

    def save_checkpoint(step: int) -> None:
        if saved_at[0] == step:
            return
        saved_at[0] = step
        trainer_state = {
            "step": step, "tokens": tokens_seen, "world_size": ctx.world_size,
            "elapsed_s": elapsed_before + time.time() - t_start, "scheduler": scheduler.state_dict(),
            "loss_spike": spikes.state_dict(),
        }  # fmt: skip
        rank_state = {"objective": objective.state_dict()}
        if cfg.data.streaming:
            rank_state["stream"] = batches.state_dict()
        checkpoint.save(
            accelerator, run_dir, step, trainer_state, rank_state, cfg.train.keep_checkpoints
        )

    def evaluate(step: int) -> dict[str, float]:
        if data.eval is None:
            return {}
        module.eval()
        avg = Averager()
        with torch.no_grad():
            for batch in eval_batches(
                data.eval, objective.collate, micro, ctx.rank, ctx.world_size, cfg.train.seed
            ):
                with accelerator.autocast():
                    _, m = module(**_to(batch, accelerator.device))
                avg.add(m)
        module.train()
        result = objective.summarize(avg.reduce(accelerator))
        objective.plots(accelerator.unwrap_model(module), ctx, step)
        metrics_log.write(step, "eval", result)
        return result

    # ---- the loop
    module.train()
    step = start_step
    train_avg, last_eval = Averager(), {}
    bad_steps = guards.BadStepCounter(cfg.train.on_nonfinite, cfg.train.max_bad_steps)
    stop_reason = None
    bar = tqdm(
        total=cfg.train.max_steps, initial=start_step, disable=not (ctx.is_main and cfg.log.progress_bar),
        desc="train", dynamic_ncols=True, file=sys.stderr,
    )  # fmt: skip
    t_start = t_log = time.time()
    steps_since_log = 0
    while step < cfg.train.max_steps:
        step_metrics, finite, loss_sum = [], True, 0.0
        for j in range(accum):
            batch = _to(next(batch_iter), accelerator.device)
            # gradients are all-reduced only on the last micro batch of a step
            sync = contextlib.nullcontext() if j == accum - 1 else accelerator.no_sync(module)
            # DeepSpeed reduces and steps inside backward when this is True: last micro batch only
            accelerator.sync_gradients = j == accum - 1
            with sync, accelerator.autocast():
                loss, metrics = module(**batch)
                loss = faults.corrupt_loss(loss, step + 1)  # tests only (PIPELINE_FAULT)
                accelerator.backward(loss)  # Accelerate divides by the accumulation steps
            loss_sum += loss.item()
            finite = finite and math.isfinite(loss_sum)
            step_metrics.append(metrics)
        grad_norm = _clip(accelerator, module, cfg.optim.max_grad_norm)

        # every process agrees on skipping a non-finite step and on stopping for a signal
        flags = torch.tensor(
            [float(not (finite and math.isfinite(grad_norm))), float(stop.requested),
             loss_sum / accum if finite else 0.0],
            device=accelerator.device,
        )  # fmt: skip
        flags = accelerator.reduce(flags, reduction="sum")
        nonfinite = bool(flags[0] > 0)
        mean_loss = float(flags[2]) / ctx.world_size  # the same number on every process
        if nonfinite or spikes.is_spike(mean_loss):
            optimizer.zero_grad(set_to_none=True)  # parameters and optimizer state unchanged
            if ctx.is_main:
                why = "non-finite loss or gradient" if nonfinite else f"loss spike {mean_loss:.4g}"
                log.warning("step %d: %s, step skipped", step + 1, why)
            if bad_steps.bad(nonfinite):
                stop_reason = "nonfinite"
                break
            continue
        bad_steps.good()
        spikes.update(mean_loss)
        for m in step_metrics:
            train_avg.add(m)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        faults.maybe_fail("after_step", step)
        steps_since_log += 1
        tokens_seen += tokens_per_step
        bar.update(1)

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            now = time.time()
            m = objective.summarize(train_avg.reduce(accelerator))
            dt = max(now - t_log, 1e-9)
            m.update(lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=tokens_seen,
                     tokens_per_s=tokens_per_step * steps_since_log / dt,
                     step_time_s=dt / steps_since_log, peak_mem_mb=peak_memory_mb(accelerator.device))  # fmt: skip
            m.update(peak_memory_by_rank(accelerator))  # collective: max and per process
            if peak and flops_per_step:
                m["mfu"] = flops_per_step * steps_since_log / dt / (peak * ctx.world_size)
            metrics_log.write(step, "train", m)
            bar.set_postfix(
                loss=f"{m.get('loss', float('nan')):.3f}", tok_s=f"{m['tokens_per_s']:.0f}"
            )
            t_log, steps_since_log = time.time(), 0
        faults.hold(step, lambda: stop.requested)  # tests only: wait here for a signal
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.max_steps:
            last_eval = evaluate(step)
        if step % cfg.train.checkpoint_every == 0 and step < cfg.train.max_steps:
            save_checkpoint(step)
        if flags[1] > 0:
            stop_reason = "signal"
            break
        if cfg.train.max_tokens and tokens_seen >= cfg.train.max_tokens:
            stop_reason = "max_tokens"
            break
        if cfg.train.max_time_s and elapsed_before + time.time() - t_start >= cfg.train.max_time_s:
            stop_reason = "max_time"
            break
    bar.close()

    # ---- the end: checkpoint, evaluate, export, plots
    save_checkpoint(step)
    if stop_reason == "nonfinite":
        raise guards.NonFiniteStop(bad_steps.stop_message(step, run_dir))
    if stop_reason == "signal":
        if ctx.is_main:
            log.warning("stopped by %s at step %d; checkpoint saved, exit %d asks for a requeue",
                        stop.signal_name or "another process", step, PREEMPTED)  # fmt: skip
        accelerator.free_memory()  # DeepSpeed: tear the engine down before its process group
        accelerator.end_training()
        raise SystemExit(PREEMPTED)
    last_eval = evaluate(step)  # in-loop evaluations never run at the last step
    if cfg.train.export:
        from pipeline.export import export_module

        export_module(objective, accelerator, module, ctx)
    if ctx.is_main and cfg.log.plots:
        from pipeline.engine.plots import training_curves

        training_curves(run_dir)
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # DeepSpeed: tear the engine down before its process group
    accelerator.end_training()
    stop.restore()
    if cfg.train.push_to_hub and ctx.is_main:
        # after the last barrier, so a long upload keeps no other process waiting
        from pipeline.hub import publish

        publish(run_dir / "export", cfg.train.push_to_hub)
    return last_eval


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _clip(accelerator: Any, module: torch.nn.Module, max_norm: float) -> float:
    # DeepSpeed clips inside its step (to gradient_clipping) and reports the norm here
    if max_norm > 0 or accelerator.distributed_type == "DEEPSPEED":
        norm = accelerator.clip_grad_norm_(module.parameters(), max_norm)
    else:
        grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.tensor(0.0)
    return float(norm) if norm is not None else 0.0
