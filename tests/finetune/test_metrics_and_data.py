"""Fine-tuning pieces in-process: metric reduction, label maps, chunking, eval padding, config."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from pipeline.config import ConfigError, load_config
from pipeline.data.sources import DataError, Source
from pipeline.engine.batches import eval_batches
from pipeline.finetune import metrics as M
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.data import PaddedEval, chunk_texts, label_map

ROOT = Path(__file__).resolve().parents[2]


def test_counts_averaged_over_batches_and_processes_equal_sklearn():
    """The engine averages per-batch metrics over batches, then processes: the counts must
    turn into the exact whole-set accuracy and macro-F1 (sklearn), padding rows ignored."""
    g = torch.Generator().manual_seed(0)
    num_labels, world, batches, micro = 5, 2, 7, 6
    n = world * batches * micro
    labels = torch.randint(0, num_labels - 1, (n,), generator=g)  # class 4 never occurs...
    logits = torch.randn(n, num_labels, generator=g)
    logits[:, 0] += 0.5  # ...but is sometimes predicted; classes are not balanced
    weight = torch.ones(n)
    weight[-5:] = 0  # padding rows
    per_process = []
    for rank in range(world):
        sums = {}
        for b in range(batches):
            i = torch.arange((b * world + rank) * micro, (b * world + rank + 1) * micro)
            losses = torch.nn.functional.cross_entropy(logits[i], labels[i], reduction="none")
            for k, v in M.counts(logits[i], labels[i], losses, weight[i], num_labels).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        per_process.append({k: v / batches for k, v in sums.items()})
    mean = {k: sum(p[k] for p in per_process) / world for k in per_process[0]}
    out = M.from_counts(mean, num_labels)

    keep = weight > 0
    y, pred = labels[keep].tolist(), logits[keep].argmax(-1).tolist()
    assert 4 in pred and 4 not in y
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert out["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    loss = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert out["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert set(out) == {"loss", "accuracy", "macro_f1"}


def test_padded_eval_covers_each_example_once():
    ds = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(61)], "label": [0] * 61})
    padded = PaddedEval(ds, multiple=16)
    assert len(padded) == 64
    seen = []
    for rank in range(2):
        for batch in eval_batches(padded, lambda rows, g: rows, 8, rank, 2, seed=0):
            seen += [ids[0] for ids, w in zip(batch["input_ids"], batch["weight"]) if w == 1.0]
    assert sorted(seen) == list(range(61))


def test_label_maps():
    src = Source("json", {"train": ["x.jsonl"]})
    strings = datasets.Dataset.from_dict({"y": ["b", "a", "c", "a"]})
    lm = label_map(strings, "y", None, src)
    assert lm.names == ["a", "b", "c"] and lm.to_id("c", "row 2") == 2
    lm = label_map(strings, "y", ["c", "b", "a"], src)
    assert lm.to_id("c", "row 2") == 0
    with pytest.raises(DataError, match=r"x.jsonl row 9: label 'd' is not one of data.labels"):
        lm.to_id("d", "x.jsonl row 9")
    ints = datasets.Dataset.from_dict({"y": [0, 2, 1]})
    assert label_map(ints, "y", None, src).names == ["0", "1", "2"]
    assert label_map(ints, "y", ["neg", "mid", "pos"], src).to_id(2, "r") == 2
    with pytest.raises(DataError, match="negative label -1"):
        label_map(datasets.Dataset.from_dict({"y": [0, -1]}), "y", None, src)
    feats = datasets.Features({"y": datasets.ClassLabel(names=["neg", "pos"])})
    classes = datasets.Dataset.from_dict({"y": [1, 0]}, features=feats)
    assert label_map(classes, "y", None, src).names == ["neg", "pos"]
    with pytest.raises(DataError, match=r"class names \(strings\) or class ids .*got float"):
        label_map(datasets.Dataset.from_dict({"y": [0.5, 1.0]}), "y", None, src)


def test_chunk_texts():
    words = " ".join(f"w{i}" for i in range(10))
    assert chunk_texts([words, "a b"], 4) == [
        (0, "w0 w1 w2 w3"),
        (0, "w4 w5 w6 w7"),
        (0, "w8 w9"),  # half a piece is kept
        (1, "a b"),
    ]
    assert [p for _, p in chunk_texts([words], 6)] == ["w0 w1 w2 w3 w4 w5", "w6 w7 w8 w9"]
    assert [p for _, p in chunk_texts([words], 8)] == ["w0 w1 w2 w3 w4 w5 w6 w7"]  # 2 < 8/2


def _is_suite(
    path: Path,
) -> bool:  # python -m pipeline finetune-suite (tests/finetune/test_glue.py)
    import yaml

    return "tasks" in yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "recipe", sorted(p for p in (ROOT / "configs/finetune").glob("*.yaml") if not _is_suite(p))
)
def test_shipped_recipes_parse(recipe):
    cfg = load_config(FinetuneConfig, recipe, ["model.from_pretrained=runs/tiny/export"])
    assert cfg.objective.name in ("seqcls", "tokcls")
    assert cfg.data.label_column and cfg.data.text_column


def test_config_errors_are_collected():
    with pytest.raises(ConfigError) as err:
        load_config(
            FinetuneConfig,
            ROOT / "configs/finetune/bible-sections.yaml",
            [
                "data.chunk_words=-1",
                "model.init=half",
                "objective.label_smoothing=2",
                "model.dropout=1.5",
            ],
        )
    text = str(err.value)
    assert "3 config errors" in text, text
    assert "data.chunk_words must be >= 0" in text
    assert "objective.label_smoothing must be in [0, 1)" in text
    assert "model.init must be one of 'pretrained', 'random'" in text
    with pytest.raises(ConfigError, match="from_pretrained is required"):
        load_config(FinetuneConfig, ROOT / "configs/finetune/bible-sections.yaml")
    with pytest.raises(ConfigError, match=r"model.dropout must be in \[0, 1\), got 1.5"):
        load_config(
            FinetuneConfig,
            ROOT / "configs/finetune/bible-sections.yaml",
            ["model.from_pretrained=runs/tiny/export", "model.dropout=1.5"],
        )


def test_finetune_command_refuses_a_folder_that_is_not_an_export(tmp_path):
    from pipeline.commands.finetune import finetune_command

    recipe = str(ROOT / "configs/finetune/bible-sections.yaml")
    with pytest.raises(DataError, match=r"EXPORT_DIR '.*run' is not a Hugging Face folder"):
        finetune_command([str(tmp_path / "run"), recipe, "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_finetune_config_has_every_data_key_the_engine_reads():
    """The engine is shared: a `cfg.data.X` it starts reading must exist for fine-tuning too."""
    import re

    from pipeline.finetune.config import FinetuneDataConfig

    engine = "\n".join(p.read_text() for p in (ROOT / "pipeline/engine").glob("*.py"))
    read = set(re.findall(r"cfg\.data\.([a-z_]+)", engine))
    assert read, "the engine reads no data keys?"
    assert [k for k in sorted(read) if not hasattr(FinetuneDataConfig(), k)] == []
