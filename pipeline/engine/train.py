"""The training loop: one loop for every objective, under DDP or DeepSpeed; read top to bottom.

    trainer = Trainer(cfg)                # checks, run folder, data, model, optimizer, resume
    metrics = trainer.fit()               # steps until a limit, final checkpoint and evaluation
    module = trainer.unsharded_module()   # collective: the full weights (for an export)
    trainer.close()

`train(cfg)` is the first, second and last. Exporting, plotting and publishing are the caller's
(pipeline/workflow.py): the engine imports nothing above it. The loop's parts are components
with small interfaces: the strategy (engine/strategy.py: DDP or DeepSpeed), the guards
(engine/guards.py), the hooks (engine/hooks.py: fault injection in tests), the data position
(engine/batches.py), the checkpoint (engine/checkpoint.py) and the metric lines (engine/metrics.py).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline import config as config_lib
from pipeline import registry
from pipeline.engine import checkpoint, elastic, faults, setup
from pipeline.engine.batches import StepBatches, StreamBatches, eval_batches, micro_batches
from pipeline.engine.context import EngineContext
from pipeline.engine.guards import LossVerdict, NonFiniteStop, StepGuards
from pipeline.engine.hooks import Hooks
from pipeline.engine.launch import SetupError, accumulation_steps, launched_world_size
from pipeline.engine.metrics import (
    Averager,
    MetricsLog,
    TrainLog,
    peak_flops,
    record_parameters,
    record_run_facts,
    write_run_info,
)
from pipeline.engine.schedule import build_schedule
from pipeline.engine.signals import PREEMPTED, StopFlag
from pipeline.engine.state import TrainState
from pipeline.engine.strategy import make_strategy
from pipeline.protocols import Objective, RunConfig

log = logging.getLogger("pipeline")
phase = torch.profiler.record_function


@dataclass
class StepResult:
    applied: bool
    stop: str | None = None  # "nonfinite": too many bad steps in a row
    verdict: LossVerdict | None = None
    grad_norm: float | None = None
    metrics: list[dict[str, torch.Tensor]] = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.run_dir = cfg, Path(cfg.output_dir)
        resolved = config_lib.redact(config_lib.to_dict(cfg))

        # ---- cheap checks first: nothing is tokenized or built before they pass
        setup.honour_launcher(cfg)
        self.accum = accumulation_steps(cfg.train, launched_world_size())
        self.strategy = make_strategy(cfg, self.accum)
        if cfg.train.batch_warmup_steps and self.accum == 1:
            raise SetupError(
                "train.batch_warmup_steps grows the batch in micro batches: it needs "
                "train.global_batch_size above micro_batch_size x processes "
                f"({cfg.train.micro_batch_size} x {launched_world_size()})"
            )
        if cfg.train.batch_warmup_steps and not self.strategy.fewer_micro_batches:
            raise SetupError(f"train.batch_warmup_steps is not available with "
                             f"engine.strategy={self.strategy.name} (its accumulation is fixed)")  # fmt: skip
        setup.prepare_run_dir(self.run_dir)
        resume_from = self._resume_point(resolved)
        self.accelerator = setup.make_accelerator(cfg, self.run_dir, self.accum, self.strategy)
        self.ctx = EngineContext(cfg=cfg, run_dir=self.run_dir, accelerator=self.accelerator)
        if self.ctx.is_main:
            config_lib.dump_yaml(cfg, self.run_dir / "config.yaml")
            setup.init_trackers(self.accelerator, cfg, self.run_dir, config_lib.flatten(resolved))
            write_run_info(self.run_dir, self.accelerator, self.accum)
        self.stop = StopFlag(cfg.train.stop_grace_s).install()
        self.hooks = Hooks([faults.install()])  # empty outside fault-injection tests

        # ---- data, model, optimizer (seeded identically on every process)
        torch.manual_seed(cfg.train.seed)
        self.objective: Objective = registry.get("objective", cfg.objective.name)(cfg.objective)
        self.strategy.check_objective(self.objective)
        self.data = self.objective.build_data(self.ctx)
        torch.manual_seed(cfg.train.seed)
        module = self.objective.build_module(self.ctx)
        record_parameters(self.run_dir, module, self.accelerator)  # held per process (ZeRO-3)
        if elastic.needs_weights_only(resume_from, self.ctx.world_size):
            # another process count: full weights now, before sharding; fresh optimizer (elastic.py)
            elastic.load_weights(module, resume_from, self.ctx.world_size,
                                 bool(cfg.train.global_batch_size),
                                 load=self.strategy.load_full_state)  # fmt: skip
        if cfg.optim.lr is None:  # the objective's default for this model's size
            cfg.optim.lr = self.objective.default_lr(module)
            if self.ctx.is_main:
                log.info("optim.lr unset: %.3g for this model's size", cfg.optim.lr)
        record_run_facts(self.run_dir, self.accelerator, lr=cfg.optim.lr)
        self.strategy.before_prepare(self.accelerator, module)
        # counted before prepare: ZeRO-3 leaves empty parameter shards behind
        flops_per_example = self.objective.flops_per_example(module)
        optimizer = setup.build_optimizer(module, cfg.optim, self.accelerator.device)
        self.state = TrainState()
        self.clock_s = 0.0  # the agreed clock of the last step (LossVerdict.elapsed_s)
        examples_per_step = cfg.train.micro_batch_size * self.accum * self.ctx.world_size
        self.tokens_per_step = examples_per_step * self.data.tokens_per_example
        # over the budget that ends the run (steps, tokens or time); stepped by us once per
        # applied update (Accelerate's wrapper would step it once per process)
        self.scheduler = build_schedule(optimizer, cfg.optim, cfg.train, self.tokens_per_step,
                                        step=lambda: self.state.step, elapsed=lambda: self.clock_s)  # fmt: skip
        self.module, self.optimizer = self.strategy.prepare(self.accelerator, module, optimizer)
        if cfg.engine.compile:
            self.module = setup.compile_module(self.module, cfg.engine)

        # ---- resume: counters, scheduler, guards, RNGs, objective and stream state
        self.guards = StepGuards(cfg.train, self.ctx.is_main)
        stream_state = self._restore(resume_from) if resume_from is not None else None
        self.clock_s = self.state.elapsed_s
        self.batch_iter = self._batches(stream_state)

        self.metrics_log = MetricsLog(self.run_dir, self.accelerator, enabled=self.ctx.is_main)
        self.train_log = TrainLog(
            self.metrics_log, self.accelerator, self.objective.summarize, self.tokens_per_step,
            flops_per_example * examples_per_step,
            peak_flops(self.accelerator.device, cfg.engine.peak_flops),
        )  # fmt: skip
        self.last_eval: dict[str, float] = {}
        self._next_mark: float | None = None  # train.checkpoint_every_s
        self._saved_at = -1  # a stop right after a checkpoint must not write (and replace) it again
        self._closed = False

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, float]:
        """Train until the first limit: steps, tokens, time, a stop signal or too many bad steps.
        Ends with a checkpoint and an evaluation; returns the final eval (or train) metrics."""
        cfg, s = self.cfg.train, self.state
        self.module.train()
        bar = self._progress_bar()
        self.t_start = self.train_log.t_last = time.time()
        reason = None
        while s.step < cfg.max_steps:
            result = self.train_step()
            if result.stop:
                reason = result.stop
                break
            if not result.applied:
                continue  # a skipped step consumed its batch; the counters stay
            self.guards.good(result.verdict.mean_loss)
            self.train_log.add(result.metrics)
            s.step += 1
            s.tokens += self.tokens_per_step
            self.scheduler.step()  # the lr of the next step
            self.hooks.after_update(s.step)
            bar.update(round(self.elapsed()) - bar.n if cfg.max_time_s else 1)
            if s.step % cfg.log_every == 0 or s.step == cfg.max_steps:
                lr = self.scheduler.get_last_lr()[0]
                m = self.train_log.write(s.step, lr, result.grad_norm, s.tokens)
                bar.set_postfix(loss=f"{m.get('loss', float('nan')):.3f}",
                                tok_s=f"{m['tokens_per_s']:.0f}")  # fmt: skip
            self.hooks.on_step_end(s.step, lambda: self.stop.requested)
            # the last step's evaluation and checkpoint come after the loop, once
            if cfg.eval_every and s.step % cfg.eval_every == 0 and s.step < cfg.max_steps:
                self.evaluate()
            if (s.step % cfg.checkpoint_every == 0 or self._checkpoint_time(s.step)) and (
                s.step < cfg.max_steps
            ):
                self.save_checkpoint()
            reason = self._limit_reached(result.verdict)
            if reason:
                break
        bar.close()
        return self._finish(reason)

    def _progress_bar(self) -> tqdm:
        """Steps of train.max_steps, or seconds of train.max_time_s: the ETA is the budget's."""
        cfg, on = self.cfg.train, self.ctx.is_main and self.cfg.log.progress_bar
        if cfg.max_time_s:
            return tqdm(total=round(cfg.max_time_s), initial=round(self.state.elapsed_s),
                        unit="s", desc="train", dynamic_ncols=True, disable=not on, file=sys.stderr)  # fmt: skip
        return tqdm(total=cfg.max_steps, initial=self.state.step, unit="step", desc="train",
                    dynamic_ncols=True, disable=not on, file=sys.stderr)  # fmt: skip

    def train_step(self) -> StepResult:
        """One optimizer step: forward and backward over this step's micro batches, then take or
        skip it. Every decision is taken on numbers that are the same on every process, before
        the strategy applies anything (guards.py)."""
        losses, metrics = [], []
        used = self._micro_batches_used()
        for j in range(used):
            last = j == used - 1
            with phase("data"):  # phases: names for torch.profiler (scripts/profile_step.py)
                if j == 0:
                    self.hooks.on_data(self.state.step + 1)
                batch = _to(next(self.batch_iter), self.accelerator.device)
                for _ in range(self.accum - used if last else 0):  # batch-size warmup: the
                    next(self.batch_iter)  # rest of the global batch is passed over
            with self.strategy.accumulating(self.module, last), self.accelerator.autocast():
                with phase("forward"):
                    loss, m = self.module(**batch)
                loss = self.hooks.on_loss(loss, self.state.step + 1)
                losses.append(loss.item())
                metrics.append(m)
                if last:
                    self.state.batches += 1  # consumed, whatever the verdict
                    verdict = self.guards.judge_losses(
                        losses, self.stop.requested, self._reduce_sum, self.accelerator.device,
                        self.ctx.world_size, self.elapsed(),
                    )  # fmt: skip
                    self.clock_s = verdict.elapsed_s
                    if verdict.skip:
                        self.strategy.skip(pending_loss=loss)
                        why = (
                            "non-finite loss"
                            if verdict.nonfinite
                            else f"loss spike {verdict.mean_loss:.4g}"
                        )
                        return self._skipped(why, verdict.nonfinite)
                with phase("backward"):
                    if used < self.accum:  # the strategy divides by all the micro batches
                        loss = loss * (self.accum / used)
                    self.strategy.backward(loss, last)
        with phase("clip"):
            norm = self.strategy.clip_grad_norm(self.module, self.cfg.optim.max_grad_norm)
        if norm is not None and not math.isfinite(norm):  # the global norm: same everywhere
            self.strategy.skip()
            return self._skipped("non-finite gradient", nonfinite=True)
        with phase("optimizer"):
            applied = self.strategy.step()
        if not applied:  # the strategy's own check refused it (DeepSpeed overflow)
            return self._skipped("non-finite gradient (DeepSpeed overflow)", nonfinite=True)
        norm = norm if norm is not None else self.strategy.grad_norm()
        return StepResult(True, verdict=verdict, grad_norm=norm, metrics=metrics)

    def _micro_batches_used(self) -> int:
        """Micro batches the next step trains on: all of them, or during train.batch_warmup_steps
        a count rising linearly from 1 (a function of the step, so a resume is exact)."""
        warm = self.cfg.train.batch_warmup_steps
        if not warm or self.state.step >= warm:
            return self.accum
        return max(1, math.ceil(self.accum * (self.state.step + 1) / warm))

    def _skipped(self, why: str, nonfinite: bool) -> StepResult:
        stop = self.guards.bad(self.state.step + 1, why, nonfinite)
        return StepResult(False, stop="nonfinite" if stop else None)

    def _checkpoint_time(self, step: int) -> bool:
        """train.checkpoint_every_s: the agreed clock passed the next multiple of it."""
        every = self.cfg.train.checkpoint_every_s
        if not every:
            return False
        if self._next_mark is None:  # the first mark after where this run (or resume) starts
            self._next_mark = (self.state.elapsed_s // every + 1) * every
        if self.clock_s < self._next_mark:
            return False
        self._next_mark = (self.clock_s // every + 1) * every
        return True

    def _limit_reached(self, verdict: LossVerdict) -> str | None:
        cfg = self.cfg.train
        if verdict.stop_requested:
            self.stop.acknowledge()  # every process agreed to stop: the checkpoint comes next
            return "signal"
        if cfg.max_tokens and self.state.tokens >= cfg.max_tokens:
            return "max_tokens"
        if cfg.max_time_s and verdict.elapsed_s >= cfg.max_time_s:
            return "max_time"
        return None

    def _finish(self, reason: str | None) -> dict[str, float]:
        self.save_checkpoint()
        if self.cfg.engine.compile:  # what torch.compile really did (a silent fallback shows)
            from torch._dynamo.utils import counters

            record_run_facts(self.run_dir, self.accelerator,
                             compiled_graphs=int(counters["stats"]["unique_graphs"]))  # fmt: skip
        if reason == "nonfinite":
            raise NonFiniteStop(self.guards.stop_message(self.state.step, self.run_dir))
        if reason == "signal":
            if self.ctx.is_main:
                log.warning("stopped by %s at step %d; checkpoint saved, exit %d asks for a requeue",
                            self.stop.signal_name or "another process", self.state.step,
                            PREEMPTED)  # fmt: skip
            self.close()
            raise SystemExit(PREEMPTED)
        return self.evaluate()  # in-loop evaluations never run at the last step

    # ------------------------------------------------------------------ components

    def evaluate(self) -> dict[str, float]:
        if self.data.eval is None:
            return {}
        cfg = self.cfg.train
        self.module.eval()
        avg = Averager()
        with torch.no_grad():
            for batch in eval_batches(self.data.eval, self.objective.collate,
                                      cfg.micro_batch_size, self.ctx.rank, self.ctx.world_size,
                                      cfg.seed):  # fmt: skip
                with self.accelerator.autocast():
                    _, m = self.module(**_to(batch, self.accelerator.device))
                avg.add(m)
        self.module.train()
        result = self.objective.summarize(avg.reduce(self.accelerator))
        self.objective.plots(self.accelerator.unwrap_model(self.module), self.ctx, self.state.step)
        self.metrics_log.write(self.state.step, "eval", result)
        self.last_eval = result
        return result

    def save_checkpoint(self) -> None:
        """Collective. Checkpoint the current step (once)."""
        s = self.state
        if self._saved_at == s.step:
            return
        self._saved_at = s.step
        trainer_state = {
            **s.state_dict(), "elapsed_s": self.elapsed(), "world_size": self.ctx.world_size,
            "scheduler": self.scheduler.state_dict(), "loss_spike": self.guards.state_dict(),
        }  # fmt: skip
        rank_state = {"objective": self.objective.state_dict()}
        if isinstance(self.batch_iter, StreamBatches):
            rank_state["stream"] = self.batch_iter.state_dict()
        checkpoint.save(self.accelerator, self.run_dir, s.step, trainer_state, rank_state,
                        self.cfg.train.keep_checkpoints, on_phase=self.hooks.on_checkpoint)  # fmt: skip

    def elapsed(self) -> float:
        """Training seconds of this run folder so far (earlier runs included)."""
        since = getattr(self, "t_start", None)
        return self.state.elapsed_s + (time.time() - since if since else 0.0)

    def unsharded_module(self) -> nn.Module | None:
        """Collective. On the main process a module holding the full fp32 weights, built as the
        objective builds it (what its `export` expects); None elsewhere."""
        state = self.strategy.full_state_dict(self.module)
        if not self.ctx.is_main:
            return None
        if state is None:  # every process holds the full weights (DDP)
            return self.accelerator.unwrap_model(self.module)
        copy = self.strategy.build_unsharded(lambda: self.objective.build_module(self.ctx))
        checkpoint.load_full_state(copy, state, source=f"the {self.strategy.name} engine")
        return copy

    def close(self) -> None:
        """Collective. Tear down (DeepSpeed's engine before its process group) and put the
        signal handlers back."""
        if self._closed:
            return
        self._closed = True
        self.accelerator.wait_for_everyone()
        self.strategy.teardown()
        self.accelerator.end_training()
        self.stop.restore()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        if kind is None:
            self.close()
        else:  # another process may never reach a barrier: only put the handlers back
            self.stop.restore()

    # ------------------------------------------------------------------ setup helpers

    def _resume_point(self, resolved: dict) -> Path | None:
        policy = self.cfg.train.resume
        if policy == "never":
            return None
        setup.check_resume_compatible(self.run_dir, resolved)
        found = checkpoint.latest_valid(self.run_dir)
        if policy == "required" and found is None:
            raise SetupError(
                f"train.resume=required but {self.run_dir}/checkpoints has no valid checkpoint"
            )
        return found

    def _restore(self, folder: Path) -> Any:
        """Load a checkpoint into the prepared objects; return this process's stream position."""
        saved, rank_state = checkpoint.load(self.accelerator, folder)
        self.state.load_state_dict(saved)
        self.guards.load_state_dict(saved.get("loss_spike"))
        self.scheduler.load_state_dict(saved["scheduler"])
        self.objective.load_state_dict(rank_state.get("objective", {}))
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", folder, self.state.step)
        return rank_state.get("stream")

    def _batches(self, stream_state: Any) -> Any:
        cfg, micro = self.cfg, self.cfg.train.micro_batch_size
        pin = cfg.data.pin_memory and self.accelerator.device.type == "cuda"
        if cfg.data.streaming:
            batches = StreamBatches(
                self.data.train, self.objective.collate, seed=cfg.train.seed, micro_batch=micro,
                rank=self.ctx.rank, num_workers=cfg.data.num_workers, pin_memory=pin,
                snapshot_every=cfg.train.checkpoint_every * self.accum,
            )  # fmt: skip
            if stream_state is not None:
                batches.load_state_dict(stream_state)
            return batches
        batches = StepBatches(
            self.data.train, self.objective.collate, seed=cfg.train.seed, micro_batch=micro,
            accumulation=self.accum, rank=self.ctx.rank, world=self.ctx.world_size,
        )  # fmt: skip
        return micro_batches(batches, self.state.batches, cfg.data.num_workers, pin_memory=pin)

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum")


def train(cfg: RunConfig) -> dict[str, float]:
    """Train `cfg` to its end (no export); return the final eval (or train) metrics."""
    with Trainer(cfg) as trainer:
        return trainer.fit()


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }
