"""The schema of a fine-tuning run: `python -m pipeline finetune EXPORT_DIR CONFIG key=value ...`.

Same shape as a training run (optim, train, engine and log sections are the training ones, with
the same defaults: set fine-tuning values such as a small lr in the recipe), so the one engine
runs it; only data and model differ. Field docstrings are the `--help` text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import check_minimums
from pipeline.train_config import (
    CardConfig,
    EngineConfig,
    LogConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    source_problems,
)


@dataclass
class FinetuneDataConfig:
    path: list[str] = field(default_factory=lambda: ["embedded:bible"])
    """Hub dataset name, local file(s) (.json .jsonl .csv .parquet), a folder, or
    `embedded:bible` (one row per Bible chapter with book, section and testament columns)."""
    name: str | None = None
    """Hub dataset configuration, as `datasets.load_dataset(path, name)`."""
    split: str = "train"
    """Split to fine-tune on."""
    eval_path: list[str] | None = None
    """Held-out file(s), or `split:NAME` for another split of data.path (e.g. split:test);
    default: the embedded corpus's validation chapters, else data.eval_fraction of train."""
    eval_fraction: float = 0.1
    """Fraction of training rows held out when there is no data.eval_path (and no embedded
    validation split)."""
    text_column: str = "text"
    """Column holding the text to classify; for objective tokcls a list of words per row (or a
    text, split on whitespace)."""
    text_pair_column: str | None = None
    """Second text of a sentence pair (MRPC, STS-B, MNLI: e.g. sentence2 or hypothesis): the
    two are encoded as one input, `[CLS] text [SEP] pair [SEP]`. seqcls and seqreg only."""
    eval_sets: dict = field(default_factory=dict)
    """Named held-out sets scored after training (RUN_DIR/export/eval_results.json and the
    model card), each given as data.eval_path is: file(s), or `split:NAME` of data.path; e.g.
    MNLI's {matched: split:validation_matched, mismatched: split:validation_mismatched}. When
    data.eval_path is unset the first also is the in-training eval set. seqcls and seqreg."""
    label_column: str = "label"
    """Column holding the class: integers (class ids) or strings (class names); for objective
    tokcls a list of tags per row, one per word (e.g. a Sequence(ClassLabel) such as ner_tags)."""
    labels: list[str] | None = None
    """Class (tokcls: tag) names in class-id order. Default: the dataset's ClassLabel names, else
    for string labels their sorted distinct values, else the integers 0..max."""
    chunk_words: int = 0
    """Cut each text into consecutive pieces of this many words, each keeping its row's label
    (a trailing piece under half this length is dropped); 0 = whole texts. seqcls only."""
    max_length: int = 128
    """Tokens per example after truncation, [CLS] and [SEP] included (tokcls: the tags of words
    cut off are neither trained on nor scored)."""
    max_train_examples: int | None = None
    """Fine-tune on at most this many (shuffled, seeded) training examples."""
    max_eval_examples: int = 4096
    """Evaluate on at most this many (shuffled, seeded) held-out examples."""
    num_workers: int = 0
    """DataLoader worker processes (0 = in the training process)."""
    pin_memory: bool = True
    """Page-locked host batches for asynchronous copies to the GPU (CUDA only)."""

    @property
    def streaming(self) -> bool:
        """The engine asks; labelled data is always map-style (it is small and needs a label map)."""
        return False

    def validate(self) -> list[str]:
        problems = source_problems(self) + check_minimums(
            self,
            {"chunk_words": 0, "max_length": 4, "max_train_examples": 1, "max_eval_examples": 1},
        )
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            problems.append(f"labels must be distinct, got {self.labels}")
        if self.labels is not None and len(self.labels) < 2:
            problems.append(f"labels must name at least 2 classes, got {self.labels}")
        if self.text_column == self.label_column:
            problems.append("text_column and label_column must differ")
        if self.text_pair_column in (self.text_column, self.label_column):
            problems.append("text_pair_column must differ from text_column and label_column")
        if self.text_pair_column and self.chunk_words:
            problems.append(
                "chunk_words cuts single texts; it cannot be used with text_pair_column"
            )
        for name, paths in self.eval_sets.items():
            if not isinstance(name, str) or not paths:
                problems.append(f"eval_sets: {name!r} needs a name and file(s) or split:NAME")
            elif not isinstance(paths, (str, list)):
                problems.append(f"eval_sets.{name} must be a path, a list of paths or split:NAME")
        return problems

    def eval_set_paths(self) -> dict[str, list[str]]:
        """data.eval_sets with each entry as a list of paths."""
        return {n: [p] if isinstance(p, str) else list(p) for n, p in self.eval_sets.items()}


@dataclass
class FinetuneModelConfig:
    from_pretrained: str = ""
    """The pretrained export to start from (a Hugging Face folder or Hub name); the EXPORT_DIR
    argument of `python -m pipeline finetune` sets it."""
    init: Literal["pretrained", "random"] = "pretrained"
    """pretrained: load the export's encoder weights; random: the same architecture with fresh
    weights (the baseline that shows what pretraining is worth)."""
    dropout: float | None = None
    """Hidden and attention dropout while fine-tuning (default: the export's). Pretraining
    recipes often switch dropout off; a small labelled set needs it back (BERT used 0.1)."""
    classifier_dropout: float | None = None
    """Dropout before the classification layer (default: the model's hidden dropout)."""

    def validate(self) -> list[str]:
        problems = []
        if not self.from_pretrained:
            problems.append("from_pretrained is required (the EXPORT_DIR argument sets it)")
        for key in ("dropout", "classifier_dropout"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                problems.append(f"{key} must be in [0, 1), got {value}")
        return problems


def _seqcls_default() -> ObjectiveConfig:
    from pipeline import registry

    return registry.config_class("objective", "seqcls")()


@dataclass
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/, plots/, export/."""
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    objective: ObjectiveConfig = field(default_factory=_seqcls_default)
    """Fine-tuning objective by name, with its own fields: seqcls (a class per text) or tokcls
    (a tag per word: NER, POS)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    log: LogConfig = field(default_factory=LogConfig)
    card: CardConfig = field(default_factory=CardConfig)
    """Model card facts: license and language."""
