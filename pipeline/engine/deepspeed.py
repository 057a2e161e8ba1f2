"""DeepSpeed ZeRO as a strategy of the one engine (the only module that imports deepspeed).

The DeepSpeed JSON (`engine.deepspeed_config`) says *how* to shard; the run config says *what*
to train. Every `"auto"` value is filled from the run config, and every explicit value that
would disagree with it is an error raised before any data or model is built:

    train_micro_batch_size_per_gpu   train.micro_batch_size
    gradient_accumulation_steps      from train.global_batch_size (1 when unset)
    train_batch_size                 micro x accumulation x processes
    gradient_clipping                optim.max_grad_norm (0 = none)
    bf16.enabled / fp16.enabled      engine.mixed_precision
    optimizer (AdamW) params         optim.lr, optim.betas, optim.eps, optim.weight_decay
    scheduler (WarmupDecayLR...)     optim.schedule, warmup, train.max_steps, optim.lr
    reduce/prefetch bucket sizes     the model's hidden size (as Hugging Face's recipes)

The engine builds the optimizer and the LR scheduler itself under DDP and DeepSpeed alike (one
code path, one state in the checkpoint), so an `optimizer`/`scheduler` section is checked
against the run config and then removed. With `offload_optimizer`, Accelerate swaps our torch
AdamW for DeepSpeedCPUAdam (same AdamW update, same param groups and learning-rate dicts).

`DeepSpeedStrategy` drives the DeepSpeed engine itself (not through `accelerator.backward`,
which would step inside the last backward): `backward` sets the accumulation boundary and runs
the engine's backward, `step` runs `engine.step()`, where DeepSpeed clips to
`gradient_clipping` and refuses the update when the gradients are not finite (its overflow
check: ZeRO 1/2/3, fp32 and bf16 with `check_grad_overflow`, the default). A step the guards
skip (a non-finite loss value on any process, a loss spike) is decided before the last
backward and discarded through that same machinery: the last backward runs on a NaN loss, so
`engine.step()` takes its overflow path, which clears every gradient buffer of every ZeRO stage
and leaves parameters and optimizer moments as they were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from pipeline.engine.launch import SetupError, launched_world_size, mixed_precision
from pipeline.engine.strategy import Strategy
from pipeline.protocols import RunConfig

log = logging.getLogger(__name__)

AUTO = "auto"
# run-config schedule -> the DeepSpeed scheduler that would implement it
SCHEDULERS = {"linear": "WarmupDecayLR", "cosine": "WarmupCosineLR", "constant": "WarmupLR"}
# DeepSpeed's own defaults, used when the model exposes no hidden size
BUCKET_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
}


class DeepSpeedConfigError(SetupError):
    pass


# --------------------------------------------------------------------------- the JSON


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DeepSpeedConfigError(f"engine.deepspeed_config: {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeepSpeedConfigError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    if not isinstance(raw, dict):
        raise DeepSpeedConfigError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def resolve(raw: dict[str, Any], cfg: RunConfig, accumulation: int, world: int) -> dict[str, Any]:
    """Fill the "auto" values of a DeepSpeed config from the run config and check the rest.

    Collects every problem and raises once. Returns a new dict, ready for DeepSpeedPlugin."""
    ds = json.loads(json.dumps(raw))  # deep copy, JSON types only
    problems: list[str] = []
    micro = cfg.train.micro_batch_size
    precision = mixed_precision(cfg.engine.mixed_precision)

    def fill(where: dict, key: str, value: Any, name: str, source: str) -> None:
        if key not in where or where[key] == AUTO:
            where[key] = value
        elif where[key] != value:
            problems.append(f"{name}={where[key]!r} disagrees with {source}={value!r}")

    fill(ds, "train_micro_batch_size_per_gpu", micro, "train_micro_batch_size_per_gpu",
         "train.micro_batch_size")  # fmt: skip
    fill(ds, "gradient_accumulation_steps", accumulation, "gradient_accumulation_steps",
         "the accumulation implied by train.global_batch_size")  # fmt: skip
    fill(ds, "train_batch_size", micro * accumulation * world, "train_batch_size",
         f"micro x accumulation x processes ({micro} x {accumulation} x {world})")  # fmt: skip
    fill(ds, "gradient_clipping", float(cfg.optim.max_grad_norm), "gradient_clipping",
         "optim.max_grad_norm")  # fmt: skip

    for dtype in ("fp16", "bf16"):
        section = ds.setdefault(dtype, {})
        if not isinstance(section, dict):
            problems.append(f'{dtype} must be an object like {{"enabled": "auto"}}')
            continue
        fill(section, "enabled", precision == dtype, f"{dtype}.enabled",
             f"engine.mixed_precision ({cfg.engine.mixed_precision} -> {precision})")  # fmt: skip
    if ds.get("fp16", {}).get("enabled") is True and ds.get("bf16", {}).get("enabled") is True:
        problems.append("fp16 and bf16 cannot both be enabled")
    if precision == "fp16" and not torch.cuda.is_available():
        problems.append("fp16 under DeepSpeed needs a GPU; use engine.mixed_precision=bf16 or no")

    zero = ds.get("zero_optimization")
    if not isinstance(zero, dict):
        problems.append('a "zero_optimization" object with a "stage" is required')
        zero = {}
    stage = zero.get("stage")
    if stage not in (1, 2, 3):
        if stage == 0:
            problems.append("ZeRO stage 0 is plain data parallelism: use engine.strategy=ddp")
        else:
            problems.append(f"zero_optimization.stage must be 1, 2 or 3, got {stage!r}")
    offload_opt = _device(zero.get("offload_optimizer"))
    offload_param = _device(zero.get("offload_param"))
    for what, device in (("offload_optimizer", offload_opt), ("offload_param", offload_param)):
        if device not in ("none", "cpu", "nvme"):
            problems.append(f"zero_optimization.{what}.device must be none, cpu or nvme")
        if device == "nvme" and not (zero.get(what) or {}).get("nvme_path"):
            problems.append(f"zero_optimization.{what}.device=nvme needs an nvme_path")
    if offload_param != "none" and stage != 3:
        problems.append(
            f"zero_optimization.offload_param needs ZeRO stage 3 (parameters are only "
            f"partitioned at stage 3), this config has stage {stage}"
        )
    if isinstance(stage, int) and stage >= 1:
        hidden_keys = ("reduce_bucket_size", "stage3_prefetch_bucket_size",
                       "stage3_param_persistence_threshold")  # fmt: skip
        for key in hidden_keys:
            if key in zero and zero[key] != AUTO and not isinstance(zero[key], (int, float)):
                problems.append(f'zero_optimization.{key} must be a number or "auto"')

    problems += _check_optimizer(ds.pop("optimizer", None), cfg)
    problems += _check_scheduler(ds.pop("scheduler", None), cfg)
    leftover = _autos(ds, skip={"zero_optimization." + k for k in BUCKET_DEFAULTS})
    if leftover:
        problems.append(f'no run-config value fills "auto" at {", ".join(leftover)}')
    if problems:
        source = cfg.engine.deepspeed_config
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DeepSpeedConfigError(
            f"DeepSpeed config {source} does not fit this run ({len(problems)} problem"
            f'{"s" if len(problems) > 1 else ""}); set the value to "auto" or change '
            f"the run config:\n{lines}"
        )
    return ds


def _device(section: Any) -> str:
    if not section:
        return "none"
    return str(section.get("device", "none")) if isinstance(section, dict) else "?"


def _check_optimizer(section: Any, cfg: RunConfig) -> list[str]:
    if section is None:
        return []
    kind = str(section.get("type", "")).lower()
    if kind not in ("adam", "adamw"):
        return [
            f"optimizer.type={section.get('type')!r}: the engine trains with AdamW "
            f"(DeepSpeedCPUAdam when offloading); remove the section or use AdamW"
        ]
    problems: list[str] = []
    params = section.get("params", {})
    wanted = {
        "lr": cfg.optim.lr,
        "betas": list(cfg.optim.betas),
        "eps": cfg.optim.eps,
        "weight_decay": cfg.optim.weight_decay,
    }
    for key, value in params.items():
        if key in wanted and value != AUTO and value != wanted[key]:
            problems.append(f"optimizer.params.{key}={value!r} disagrees with optim.{key}="
                            f"{wanted[key]!r}")  # fmt: skip
    return problems


def _check_scheduler(section: Any, cfg: RunConfig) -> list[str]:
    if section is None:
        return []
    expected = SCHEDULERS.get(cfg.optim.schedule, "none (no DeepSpeed scheduler does it)")
    if section.get("type") != expected:
        return [
            f"scheduler.type={section.get('type')!r} but optim.schedule={cfg.optim.schedule} "
            f"is {expected}; the engine's scheduler runs either way: remove the section"
        ]
    warmup = cfg.optim.warmup_steps or int(cfg.train.max_steps * cfg.optim.warmup_ratio)
    wanted = {
        "warmup_num_steps": warmup,
        "total_num_steps": cfg.train.max_steps,
        "warmup_max_lr": cfg.optim.lr,
        "warmup_min_lr": 0,
        "warmup_type": "linear",
    }
    problems = []
    for key, value in section.get("params", {}).items():
        if key in wanted and value != AUTO and value != wanted[key]:
            problems.append(f"scheduler.params.{key}={value!r} disagrees with the run config "
                            f"({wanted[key]!r})")  # fmt: skip
    return problems


def _autos(node: Any, prefix: str = "", skip: set[str] = frozenset()) -> list[str]:
    if isinstance(node, dict):
        return [a for k, v in node.items() for a in _autos(v, f"{prefix}{k}.", skip)]
    key = prefix.rstrip(".")
    return [key] if node == AUTO and key not in skip else []


def config_path(cfg: RunConfig) -> str:
    """engine.deepspeed_config (a file, or a shipped recipe's name), else the JSON named by an
    accelerate config file."""
    import os

    from pipeline import recipes

    from_accelerate = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    ours = cfg.engine.deepspeed_config
    if ours:  # a shipped name (deepspeed/zero2): its file, also from a pip install
        ours = str(recipes.resolve(ours))
    if (
        ours
        and from_accelerate != "none"
        and Path(ours).resolve() != Path(from_accelerate).resolve()
    ):
        log.info("engine.deepspeed_config=%s replaces the accelerate config's %s", ours,
                 from_accelerate)  # fmt: skip
    if ours:
        return ours
    if from_accelerate != "none":
        return from_accelerate
    raise DeepSpeedConfigError(
        "engine.strategy=deepspeed needs engine.deepspeed_config (e.g. configs/deepspeed/zero2.json)"
    )


# --------------------------------------------------------------------------- around prepare


def fill_model_sizes(zero: dict[str, Any], module: nn.Module) -> None:
    """Replace the "auto" bucket sizes of a zero_optimization section by Hugging Face's
    hidden-size recipe (before prepare)."""
    hidden = next(
        (
            m.config.hidden_size
            for m in module.modules()
            if isinstance(getattr(getattr(m, "config", None), "hidden_size", None), int)
        ),
        None,
    )
    sized = {
        "reduce_bucket_size": hidden * hidden if hidden else None,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else None,
        "stage3_param_persistence_threshold": 10 * hidden if hidden else None,
    }
    for key, value in sized.items():
        if zero.get(key) == AUTO:
            zero[key] = value if value is not None else BUCKET_DEFAULTS[key]


def zero_stage(accelerator: Accelerator) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.deepspeed_config["zero_optimization"]["stage"]


# --------------------------------------------------------------------------- full weights


def full_fp32_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: every process calls it with the prepared engine. The full fp32 master
    weights (gathered from ZeRO partitions; not the bf16 copies the model computes with), on
    CPU, by parameter name (tied parameters appear once)."""
    from deepspeed.utils import safe_get_full_fp32_param

    inner = getattr(module, "module", module)
    state = {}
    for name, param in inner.named_parameters():
        full = safe_get_full_fp32_param(param)  # all processes, same order: it communicates
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    return state


def consolidated_state_dict(checkpoint_folder: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from the ZeRO shards of one of our checkpoints (offline, one process,
    CPU), via DeepSpeed's zero_to_fp32. Tied parameters (BERT's decoder and word embeddings)
    come back as ONE tensor under each name, which `safetensors.save_file` refuses ("Some
    tensors share memory"): save through `save_pretrained` (our export does), which knows
    the ties, or drop the aliases with `without_aliases`.

    The shard files are pickles that DeepSpeed reads with weights_only=False: only load
    checkpoints you wrote (our manifest guards against corruption, not against tampering)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(checkpoint_folder)
    tags = sorted({p.parent.name for p in folder.glob("*/*mp_rank_00_model_states.pt")})
    if not tags:
        raise FileNotFoundError(f"{folder} holds no DeepSpeed checkpoint (no */*_model_states.pt)")
    if len(tags) > 1:
        raise ValueError(f"{folder} holds several DeepSpeed models {tags}; expected one")
    return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tags[0])


def without_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the first name of every tensor (checkpoint order puts word embeddings before the
    tied decoder), so that `safetensors.torch.save_file` accepts the dict."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor
    return out


def is_deepspeed_checkpoint(folder: str | Path) -> bool:
    return any(Path(folder).glob("*/*mp_rank_00_model_states.pt"))


# --------------------------------------------------------------------------- the strategy


class DeepSpeedStrategy(Strategy):
    """ZeRO 1/2/3 (and offload) through Accelerate's DeepSpeed plugin; see the module docstring."""

    name = "deepspeed"
    slurm_template = "deepspeed"

    def __init__(self, cfg: RunConfig, accumulation: int):
        super().__init__(cfg, accumulation)
        import warnings

        # ZeRO calls these torch APIs on every gather/reduce: a warning per call floods logs
        for api in ("all_gather_into_tensor", "reduce_scatter_tensor"):
            warnings.filterwarnings("ignore", message=f".*{api}.*", category=FutureWarning)
        cfg.engine.deepspeed_config = config_path(cfg)
        # checked now, before any data or model is built
        self.ds_config = resolve(
            load_json(cfg.engine.deepspeed_config), cfg, accumulation, launched_world_size()
        )
        self.stage = self.ds_config["zero_optimization"]["stage"]
        self.engine: Any = None

    @property
    def shards_parameters(self) -> bool:  # type: ignore[override]
        return self.stage == 3

    def accelerator_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        from accelerate.utils import DeepSpeedPlugin

        # ZeRO-3: zero.Init through transformers' integration (the plugin's HfDeepSpeedConfig):
        # a model is built already partitioned (`_from_config` and `from_pretrained`), so no
        # process ever holds the full fp32 parameters; the export builds its plain copy with
        # zero.Init switched off (build_unsharded). ZeRO-1/2 replicate parameters anyway.
        # cpu stays False: Accelerator(cpu=True) with DeepSpeed silently falls back to DDP
        plugin = DeepSpeedPlugin(hf_ds_config=self.ds_config, zero3_init_flag=self.stage == 3)
        return {"cpu": False, "deepspeed_plugin": plugin}

    def check_objective(self, objective: Any) -> None:
        if self.stage == 3 and not getattr(objective, "shardable", True):
            raise SetupError(
                f"objective {objective.cfg.name} cannot have its parameters partitioned by "
                f"ZeRO-3 ({objective.unshardable_reason()}); use "
                "engine.deepspeed_config=configs/deepspeed/zero2.json"
            )

    def load_full_state(
        self, module: nn.Module, state: dict[str, torch.Tensor], source: str
    ) -> None:
        if self.stage != 3:
            return super().load_full_state(module, state, source)
        import deepspeed

        from pipeline.engine.checkpoint import check_full_state, parameter_values

        check_full_state(module, state, source)
        # each partitioned parameter gathered in turn, written by rank 0, partitioned again
        for param, value in parameter_values(module, state):
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    param.data.copy_(value)

    def before_prepare(self, accelerator: Accelerator, module: nn.Module) -> None:
        zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
        fill_model_sizes(zero, module)  # "auto" bucket sizes follow the hidden size

    def prepare(
        self, accelerator: Accelerator, module: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, Any]:
        module, optimizer = super().prepare(accelerator, module, optimizer)
        self.engine = module  # the DeepSpeedEngine
        return module, optimizer

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # DeepSpeed scales by 1/accumulation itself and reduces on the boundary
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss)

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> None:
        return None  # DeepSpeed clips to gradient_clipping inside step

    def step(self) -> bool:
        self.engine.step()
        return bool(getattr(self.engine, "_step_applied", True)) and not getattr(
            self.engine.optimizer, "overflow", False
        )

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def skip(self, pending_loss: torch.Tensor | None = None) -> None:
        """Drop the step through DeepSpeed's overflow path (it clears ZeRO's reduced gradient
        partitions, which no public call does): the pending last backward runs on a NaN loss
        and `engine.step()` refuses the update. A dynamic fp16 loss scale would be halved by
        that overflow: it is put back."""
        if pending_loss is None:
            raise RuntimeError("DeepSpeed skips are decided before the last backward")
        scaler = getattr(self.engine.optimizer, "loss_scaler", None)
        saved = dict(vars(scaler)) if scaler is not None else None
        self.backward(pending_loss * float("nan"), last=True)
        applied = self.step()
        if applied:  # DeepSpeed took a NaN update: never silently
            raise RuntimeError(
                "DeepSpeed applied an update with NaN gradients (overflow check off?)"
            )
        if saved is not None:
            vars(scaler).update(saved)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        # ZeRO-3 parameters are shards, and bf16 ones are not the fp32 master: gather the master
        return full_fp32_state_dict(module)

    def build_unsharded(self, build: Callable[[], nn.Module]) -> nn.Module:
        """On the main process alone: zero.Init must be off (it is collective), both in the
        plugin and in transformers' global switch, which outlives the plugin's own toggle."""
        import transformers.integrations.deepspeed as hf_ds

        plugin = self.accelerator.state.deepspeed_plugin
        with plugin.zero3_init_context_manager(enable=False):
            saved = hf_ds._hf_deepspeed_config_weak_ref  # (re)set by the context manager
            hf_ds._hf_deepspeed_config_weak_ref = None
            try:
                return build()
            finally:
                hf_ds._hf_deepspeed_config_weak_ref = saved
