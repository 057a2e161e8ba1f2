"""How an optimizer step is distributed: DDP (Accelerate) or DeepSpeed ZeRO, behind one interface.

The loop makes the same calls under every strategy, per optimizer step:

    for each micro batch j:
        with strategy.accumulating(module, last=j == accum - 1):  # no all-reduce before the last
            loss = module(**batch); strategy.backward(loss, last)
    norm = strategy.clip_grad_norm(max_norm)     # None where the strategy clips inside step
    ... the guards decide on all-reduced numbers: take or skip the step ...
    applied = strategy.step()  or  strategy.skip()

Nothing before `step()` changes a parameter, an optimizer moment or a loss scale, so a skipped
step leaves the model and optimizer exactly as they were. `step()` may still refuse an update
the strategy itself finds bad (DeepSpeed's overflow check): it then returns False and the loop
counts a skipped step.

`engine.strategy` is read in one place: `make_strategy` below. Every other difference between
strategies (Accelerator arguments, bucket sizes, clipping, export of sharded weights, the SLURM
template) is a method or attribute here.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from torch import nn

from pipeline.engine.launch import SetupError
from pipeline.protocols import RunConfig

# engine.strategy -> "module:Class" (DeepSpeed is imported only when a run asks for it)
STRATEGIES = {
    "ddp": "pipeline.engine.strategy:DDPStrategy",
    "deepspeed": "pipeline.engine.deepspeed:DeepSpeedStrategy",
}


class Strategy:
    name: ClassVar[str]
    slurm_template: ClassVar[str | None] = None
    """The sbatch template in slurm/ this strategy needs (None: chosen by nodes and GPUs)."""
    shards_parameters: ClassVar[bool] = False
    """True when no process holds the full fp32 weights as plain parameters (ZeRO)."""
    fewer_micro_batches: ClassVar[bool] = False
    """True when a step may train on fewer micro batches than the accumulation it was set up
    with (train.batch_warmup_steps); DeepSpeed's engine counts a fixed number."""

    def __init__(self, cfg: RunConfig, accumulation: int):
        self.cfg, self.accumulation = cfg, accumulation
        self.accelerator: Accelerator | None = None
        self.optimizer: Any = None

    # ---- before the Accelerator exists
    def accelerator_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        """Extra arguments of `Accelerator(...)`."""
        return {}

    # ---- before and around prepare
    def check_objective(self, objective: Any) -> None:
        """Refuse (SetupError) an objective this strategy cannot run, before any work."""

    def load_full_state(
        self, module: nn.Module, state: dict[str, torch.Tensor], source: str
    ) -> None:
        """Full weights into the module as built (before prepare), e.g. at another process count."""
        from pipeline.engine.checkpoint import load_full_state

        load_full_state(module, state, source)

    def before_prepare(self, accelerator: Accelerator, module: nn.Module) -> None:
        """Sizes that depend on the model (DeepSpeed's buckets), before `prepare`."""

    def prepare(
        self, accelerator: Accelerator, module: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, Any]:
        self.accelerator = accelerator
        module, self.optimizer = accelerator.prepare(module, optimizer)
        return module, self.optimizer

    # ---- one optimizer step
    def accumulating(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro batch's forward and backward."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        raise NotImplementedError

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float | None:
        """The global gradient norm (clipped to max_norm when > 0), or None when the strategy
        clips inside `step` (then `grad_norm()` reads it afterwards)."""
        raise NotImplementedError

    def step(self) -> bool:
        """Apply the update and clear the gradients; False when the strategy refused it."""
        raise NotImplementedError

    def skip(self, pending_loss: torch.Tensor | None = None) -> None:
        """Drop this step: parameters, optimizer state and loss scale stay as they are.
        `pending_loss`: the last micro batch's loss when the skip was decided before its
        backward (on the losses); None when decided after it (on the gradient norm)."""
        raise NotImplementedError

    def grad_norm(self) -> float | None:
        """The norm of the last step, for strategies that clip inside `step`."""
        return None

    # ---- weights for export (collective)
    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        """Collective. The full fp32 weights by parameter name on every process, or None when
        the unwrapped module already holds them (DDP)."""
        return None

    def build_unsharded(self, build: Callable[[], nn.Module]) -> nn.Module:
        """Call `build()` to make a plain, unsharded copy of the module (for the export)."""
        return build()

    def teardown(self) -> None:
        """Free what the strategy holds before the process group goes away."""
        if self.accelerator is not None:
            self.accelerator.free_memory()


class DDPStrategy(Strategy):
    """Accelerate's data parallelism (one process = CPU or one device; DDP when launched with
    several): every process holds the full model, gradients are all-reduced on the last micro
    batch of a step."""

    name = "ddp"
    fewer_micro_batches = True  # backward scales each step's loss itself

    def accelerator_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            # else Accelerate would build its own DeepSpeed setup from the environment
            raise SetupError(
                "launched with an accelerate DeepSpeed config but engine.strategy=ddp; add "
                "engine.strategy=deepspeed (the DeepSpeed JSON then comes from the accelerate "
                "config)"
            )
        # on CPU, Accelerate runs ONE process unless told cpu=True
        return {"cpu": on_cpu}

    def accumulating(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        # gradients are all-reduced only on the last micro batch of a step
        return contextlib.nullcontext() if last else self.accelerator.no_sync(module)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.accelerator.backward(loss)  # divides by the accumulation steps

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float:
        if max_norm > 0:
            norm = self.accelerator.clip_grad_norm_(module.parameters(), max_norm)
        else:
            grads = [
                p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None
            ]
            norm = torch.stack(grads).norm() if grads else torch.tensor(0.0)
        return float(norm)

    def step(self) -> bool:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def skip(self, pending_loss: torch.Tensor | None = None) -> None:
        if pending_loss is not None:
            # every process skips together; the pending backward still runs, so DDP's reducer
            # finishes the step it prepared for in the forward, then the gradients are dropped
            self.accelerator.backward(pending_loss)
        self.optimizer.zero_grad(set_to_none=True)


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise SetupError(f"engine.strategy={name!r} unknown; choices: {', '.join(STRATEGIES)}")
    module, _, cls = STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_strategy(cfg: RunConfig, accumulation: int) -> Strategy:
    """The strategy named by engine.strategy, its settings checked before anything is built."""
    return strategy_class(cfg.engine.strategy)(cfg, accumulation)
