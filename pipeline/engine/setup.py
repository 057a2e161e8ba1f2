"""Everything before the first step: run folder, process layout, Accelerator, optimizer.

Checks that cost nothing (batch divisibility, writable folder, compatible resume) run here,
before any data is tokenized or any model is built.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from datetime import timedelta
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration
from torch import nn

from pipeline import config as config_lib
from pipeline.engine.launch import (  # noqa: F401  (SetupError & co. are imported from here too)
    SetupError,
    accumulation_steps,
    launched_world_size,
    mixed_precision,
)
from pipeline.engine.strategy import Strategy
from pipeline.protocols import RunConfig
from pipeline.train_config import EngineConfig, OptimConfig

log = logging.getLogger("pipeline")


def prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SetupError(
            f"output folder {str(run_dir)!r} is not writable: {err.strerror}"
        ) from None


# sections whose change makes an existing run folder's checkpoints meaningless
RESUME_CRITICAL = ("model", "objective", "data.block_size", "tokenizer")


def check_resume_compatible(run_dir: Path, resolved: dict) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file() or not (run_dir / "checkpoints").is_dir():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    flat_saved, flat_now = config_lib.flatten(saved), config_lib.flatten(resolved)
    changed = sorted(
        k
        for k in set(flat_saved) | set(flat_now)
        if any(k == c or k.startswith(c + ".") for c in RESUME_CRITICAL)
        and flat_saved.get(k) != flat_now.get(k)
    )
    if changed:
        shown = ", ".join(f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}" for k in changed[:4])
        raise SetupError(
            f"{run_dir} holds checkpoints of an incompatible config ({shown}); "
            f"use another --output-dir or train.resume=never in a fresh folder"
        )


# Accelerate's tracker name -> (module it imports, package that provides it)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
}


def check_trackers(names: list[str]) -> list[str]:
    """The trackers of log.trackers, each checked to be importable before anything is built: a
    tracker whose package is missing is a SetupError naming the package (Accelerate would
    silently drop it, and the run would train for hours logging nowhere)."""
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise SetupError(
                f"log.trackers: unknown tracker {name!r}; known: {', '.join(TRACKER_PACKAGES)}"
            )
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise SetupError(
                f"log.trackers asks for {name} but the package {package!r} is not installed: "
                f"pip install {package} (or remove {name} from log.trackers)"
            )
    return list(names)


def init_trackers(accelerator: Accelerator, cfg: RunConfig, run_dir: Path, config: dict) -> None:
    """Main process: start the trackers under project log.project (W&B project, MLflow
    experiment, TensorBoard subfolder of RUN_DIR/logs), run name log.run_name (default: the
    run folder's name); W&B writes its files into RUN_DIR/wandb (offline runs included)."""
    if accelerator.trackers is None or not cfg.log.trackers:
        return
    name = getattr(cfg.log, "run_name", None) or run_dir.resolve().name
    init_kwargs = {
        "wandb": {"dir": str(run_dir), "name": name},
        "mlflow": {"run_name": name},
    }
    wanted = {k: v for k, v in init_kwargs.items() if k in cfg.log.trackers}
    project = getattr(cfg.log, "project", None) or "pipeline"
    accelerator.init_trackers(project, config=config, init_kwargs=wanted)


def honour_launcher(cfg: RunConfig) -> None:
    """What an accelerate config (or `accelerate launch` flags) asks, taken or refused in one
    line before anything is built: FSDP is refused (not a strategy here: ZeRO-3 shards the same
    way); a mixed precision is taken when the recipe says auto and must agree otherwise
    (`accelerate launch` writes "no" when it was not asked, so "no" never conflicts); a dynamo
    backend turns engine.compile on, and the engine compiles once (Accelerate never does)."""
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise SetupError(
            "launched with an accelerate FSDP config (ACCELERATE_USE_FSDP=true), which this "
            "engine does not run; shard with engine.strategy=deepspeed "
            "engine.deepspeed_config=configs/deepspeed/zero3.json"
        )
    theirs = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    ours = cfg.engine.mixed_precision
    if theirs != "no":
        if ours == "auto":
            log.info("mixed precision %s from the accelerate config", theirs)
            cfg.engine.mixed_precision = theirs
        elif ours != theirs:
            raise SetupError(
                f"the accelerate config asks mixed_precision={theirs} but the recipe has "
                f"engine.mixed_precision={ours}; make them agree, or set "
                "engine.mixed_precision=auto to take the launcher's"
            )
    dynamo = env.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
    if dynamo not in ("no", "") and not cfg.engine.compile:
        log.info("the accelerate config asks for torch dynamo (%s): engine.compile=true", dynamo)
        cfg.engine.compile = True


def make_accelerator(
    cfg: RunConfig, run_dir: Path, accumulation: int, strategy: Strategy
) -> Accelerator:
    on_cpu = not torch.cuda.is_available()
    if cfg.engine.cuda_graphs and on_cpu:
        raise SetupError(
            "engine.cuda_graphs=true needs a CUDA device and this machine has none; "
            "set engine.cuda_graphs=false"
        )
    handlers = []
    if on_cpu and launched_world_size() > 1:
        # DeepSpeed on CPU needs gloo named explicitly (else a batch-size mismatch error)
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.engine.mixed_precision),
        gradient_accumulation_steps=accumulation,
        log_with=check_trackers(cfg.log.trackers) or None,
        project_config=ProjectConfiguration(str(run_dir), logging_dir=str(run_dir / "logs")),
        kwargs_handlers=handlers,
        dynamo_backend="no",  # engine.compile compiles, once (honour_launcher)
        **strategy.accelerator_kwargs(on_cpu),
    )
    if accelerator.num_processes != launched_world_size():
        raise SetupError(
            f"launched with WORLD_SIZE={launched_world_size()} but Accelerate runs "
            f"{accelerator.num_processes} process(es) ({accelerator.distributed_type})"
        )
    return accelerator


def build_optimizer(
    module: nn.Module, optim_cfg: OptimConfig, device: torch.device
) -> torch.optim.AdamW:
    if optim_cfg.lr is None:  # the Trainer fills it from Objective.default_lr first
        raise ValueError("build_optimizer needs optim.lr: set it, or let the Trainer resolve it")
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        # biases and LayerNorm weights are not decayed (as BERT and every recipe since); a
        # ZeRO-3 partition is a flat shard: its shape is the full parameter's (ds_shape)
        ndim = len(getattr(p, "ds_shape", p.shape))
        (no_decay if ndim < 2 or "LayerNorm" in name or "norm" in name else decay).append(p)
    # fused kernels exist for CUDA and CPU; on CPU one fused step is 3-5x faster than the
    # default per-parameter loop (BERT tiny/mini, scripts/bench_mlm.py)
    fused = optim_cfg.fused == "on" or (
        optim_cfg.fused == "auto" and device.type in ("cuda", "cpu")
    )
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        fused=fused or None,
    )


def compile_module(module: nn.Module, engine_cfg: EngineConfig) -> nn.Module:
    """torch.compile of the training module (model and loss); with engine.cuda_graphs, mode
    "reduce-overhead" replays the step as CUDA graphs (shapes are static: collate pads the
    masked positions to a fixed count). A graph's outputs live in memory the next replay
    overwrites, so each call starts a new graph step and the metrics it returns are copied."""
    if not engine_cfg.cuda_graphs:
        return torch.compile(module)
    compiled = torch.compile(module, mode="reduce-overhead")
    compiled.register_forward_pre_hook(lambda mod, args: torch.compiler.cudagraph_mark_step_begin())
    compiled.register_forward_hook(
        lambda mod, args, out: (out[0], {k: v.clone() for k, v in out[1].items()})
    )
    return compiled
