"""GLUE-style fine-tuning: sentence pairs (data.text_pair_column), regression (objective seqreg),
named eval sets (MNLI's matched/mismatched shape) and `python -m pipeline finetune-suite`,
offline on small pair and score data made here.

The pair task: label 1 when the first sentence is about the sea or the second about the sky
(MRPC's shape: a binary decision about two texts, scored by F1 of class 1 and accuracy). The
score task: a float, the number of "sea" words of the first sentence plus the "sky" words of the
second (STS-B's shape: regression over a pair, scored by Pearson and Spearman). Both need both
segments (and which segment a word is in), and a one-layer random-weight model learns them in
a few dozen steps.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

from pipeline.config import ConfigError, load_config
from pipeline.data.sources import DataError
from pipeline.finetune.config import FinetuneConfig
from tests.conftest import ROOT, metrics, run_cli
from tests.finetune.conftest import FILLER, TOPICS, write_jsonl

SEEDS = [1, 2]
STEPS = 60


def sentence(rng: random.Random, topic: str, k: int) -> str:
    words = rng.choices(TOPICS[topic], k=k) + rng.choices(FILLER, k=8 - k)
    rng.shuffle(words)
    return " ".join(words)


def pair_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(sorted(TOPICS)), rng.choice(sorted(TOPICS))
        label = int(a == "sea" or b == "sky")
        rows.append({"s1": sentence(rng, a, 3), "s2": sentence(rng, b, 3), "label": label})
    return rows


def score_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k1, k2 = rng.randint(0, 4), rng.randint(0, 4)
        s1 = sentence(rng, "sea", k1) if k1 else sentence(rng, "land", 2)
        s2 = sentence(rng, "sky", k2) if k2 else sentence(rng, "land", 2)
        rows.append({"s1": s1, "s2": s2, "score": float(k1 + k2)})
    return rows


@pytest.fixture(scope="module")
def glue_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("glue")
    return {
        "pair_train": write_jsonl(root / "pair_train.jsonl", pair_rows(400, seed=1)),
        "pair_matched": write_jsonl(root / "pair_matched.jsonl", pair_rows(61, seed=2)),
        "pair_mismatched": write_jsonl(root / "pair_mismatched.jsonl", pair_rows(40, seed=3)),
        "score_train": write_jsonl(root / "score_train.jsonl", score_rows(400, seed=4)),
        "score_eval": write_jsonl(root / "score_eval.jsonl", score_rows(61, seed=5)),
    }


def _cfg(export: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [f"model.from_pretrained={export}", *overrides])


def test_pairs_are_encoded_as_two_segments(tiny_export, glue_data):
    from transformers import AutoTokenizer

    from pipeline.finetune.data import load_labelled

    cfg = _cfg(tiny_export, f"data.path={glue_data['pair_train']}", "data.text_column=s1",
               "data.text_pair_column=s2", "data.eval_fraction=0", "data.max_length=64")  # fmt: skip
    ctx = types.SimpleNamespace(cfg=cfg, main_first=contextlib.nullcontext)
    tok = AutoTokenizer.from_pretrained(tiny_export)
    data = load_labelled(ctx, tok)
    rows = pair_rows(400, seed=1)
    ex = data.train[0]
    want = tok(rows[0]["s1"], rows[0]["s2"])
    assert ex["input_ids"] == want["input_ids"]
    assert ex["token_type_ids"] == want["token_type_ids"]
    assert 0 in ex["token_type_ids"] and 1 in ex["token_type_ids"]  # both segments present
    assert data.labels == ["0", "1"] and ex["label"] == rows[0]["label"]


def test_regression_labels_are_floats_and_non_numbers_are_refused(tiny_export, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.finetune.data import load_labelled

    rows = score_rows(8, seed=0)
    path = write_jsonl(tmp_path / "scores.jsonl", rows)
    cfg = _cfg(tiny_export, f"data.path={path}", "data.text_column=s1",
               "data.text_pair_column=s2", "data.label_column=score", "data.eval_fraction=0",
               "objective.name=seqreg")  # fmt: skip
    ctx = types.SimpleNamespace(cfg=cfg, main_first=contextlib.nullcontext)
    tok = AutoTokenizer.from_pretrained(tiny_export)
    data = load_labelled(ctx, tok, regression=True)
    assert data.train["label"] == [r["score"] for r in rows]
    assert data.labels == ["score"]
    rows[3]["score"] = "high"
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"row 3: label 'high' is not a number \(regression\)"):
        load_labelled(ctx, tok, regression=True)


def test_pair_and_eval_set_config_problems_are_reported():
    with pytest.raises(ConfigError) as err:
        load_config(FinetuneConfig, None, ["model.from_pretrained=x", "data.text_pair_column=text",
                                           "data.chunk_words=10", "data.eval_sets={a: []}"])  # fmt: skip
    text = str(err.value)
    assert "text_pair_column must differ from text_column and label_column" in text
    assert "eval_sets: 'a' needs a name and file(s) or split:NAME" in text


def test_pearson_from_reduced_sums_equals_scipy():
    import torch

    from pipeline.finetune.regression import SUMS, pearson_from_sums

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, generator=g), torch.randn(60, generator=g)
    y = y + 0.7 * x
    parts = [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 60)]  # 4 batches, averaged
    sums = {k: 0.0 for k in ("n", *SUMS)}
    for p in parts:
        xs, ys = x[p], y[p]
        for k, v in zip(("n", *SUMS), (len(xs), xs.sum(), ys.sum(), (xs * xs).sum(),
                                       (ys * ys).sum(), (xs * ys).sum())):  # fmt: skip
            sums[k] += float(v) / len(parts)
    assert pearson_from_sums(sums) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-5)


@pytest.fixture(scope="module")
def suite(tiny_export, glue_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    common = {"text_column": "s1", "text_pair_column": "s2", "max_length": 40}
    spec = {
        "export": str(tiny_export),
        "output_dir": str(root / "out"),
        "seeds": SEEDS,
        "overrides": [
            f"train.max_steps={STEPS}",
            "train.micro_batch_size=16",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            "train.log_every=20",
            "train.eval_every=0",
            "train.checkpoint_every=1000",
            "log.progress_bar=false",
            "log.plots=false",
            "log.trackers=[]",
        ],  # fmt: skip
        "tasks": {
            "pairs": {  # MNLI's shape: two named eval sets
                "config": {
                    "data": {
                        **common,
                        "path": [str(glue_data["pair_train"])],
                        "eval_sets": {
                            "matched": str(glue_data["pair_matched"]),
                            "mismatched": str(glue_data["pair_mismatched"]),
                        },
                    }
                },
                "metrics": ["f1", "accuracy"],
            },  # fmt: skip
            "scores": {
                "config": {
                    "data": {
                        **common,
                        "path": [str(glue_data["score_train"])],
                        "label_column": "score",
                        "eval_path": [str(glue_data["score_eval"])],
                    },
                    "objective": {"name": "seqreg"},
                },
                "metrics": ["pearson", "spearman"],
            },  # fmt: skip
        },
    }
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(spec))
    (root / "matched.jsonl").write_text(glue_data["pair_matched"].read_text())
    run_cli(["finetune-suite", str(path)], timeout=900)
    return root / "out"


def test_suite_writes_one_table_of_mean_and_std_over_seeds(suite):
    results = json.loads((suite / "results.json").read_text())
    assert results["seeds"] == SEEDS
    assert set(results["tasks"]) == {"pairs", "scores"}
    assert set(results["tasks"]["pairs"]) == {"matched", "mismatched"}
    assert set(results["tasks"]["scores"]) == {"eval"}
    table = (suite / "results.md").read_text()
    for task, sets in results["tasks"].items():
        for eval_set, row in sets.items():
            for metric, r in row.items():
                per_seed = [
                    json.loads((suite / task / f"seed-{s}/export/eval_results.json").read_text())
                    for s in SEEDS
                ]
                values = [p[eval_set][metric] for p in per_seed]
                assert r["values"] == values
                assert r["mean"] == pytest.approx(statistics.fmean(values))
                assert r["std"] == pytest.approx(statistics.stdev(values))
                assert f"| {task} | {eval_set} | {metric} | {r['mean']:.4f} ± {r['std']:.4f} |" in (
                    table
                )
    # different seeds are different runs (init of the head, data order)
    assert len(set(results["tasks"]["scores"]["eval"]["pearson"]["values"])) == 2
    # learned, not chance (a constant answer: the majority rate, F1 at most 0.71; r = 0);
    # seeds differ by up to 0.15 at this size, hence the margins
    rows = [json.loads(x) for x in (suite.parent / "matched.jsonl").read_text().splitlines()]
    majority = max(statistics.fmean(r["label"] for r in rows), 1 - statistics.fmean(
        r["label"] for r in rows))  # fmt: skip
    assert results["tasks"]["pairs"]["matched"]["accuracy"]["mean"] > majority + 0.1, table
    assert results["tasks"]["scores"]["eval"]["pearson"]["mean"] > 0.6, table
    assert results["tasks"]["scores"]["eval"]["spearman"]["mean"] > 0.6, table


def _predict(export: Path, rows: list[dict]):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    batch = tok([r["s1"] for r in rows], [r["s2"] for r in rows], padding=True,
                return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        return model(**batch).logits


def test_pair_scores_equal_the_stock_model_on_each_named_set(suite, glue_data):
    export = suite / "pairs" / "seed-1" / "export"
    scores = json.loads((export / "eval_results.json").read_text())
    for name in ("matched", "mismatched"):
        rows = [json.loads(x) for x in glue_data[f"pair_{name}"].read_text().splitlines()]
        pred = _predict(export, rows).argmax(-1).tolist()
        y = [r["label"] for r in rows]
        assert scores[name]["n"] == len(rows)
        assert scores[name]["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
        assert scores[name]["f1"] == pytest.approx(f1_score(y, pred), abs=1e-9)
    run = suite / "pairs" / "seed-1"
    # the in-training eval set is the first named one: its last accuracy is the final score
    assert metrics(run, "eval")[-1]["accuracy"] == pytest.approx(
        scores["matched"]["accuracy"], abs=1e-6
    )


def test_regression_scores_equal_scipy_on_the_stock_model(suite, glue_data):
    export = suite / "scores" / "seed-2" / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    rows = [json.loads(x) for x in glue_data["score_eval"].read_text().splitlines()]
    pred = _predict(export, rows).squeeze(-1).numpy()
    y = np.array([r["score"] for r in rows])
    scores = json.loads((export / "eval_results.json").read_text())["eval"]
    assert scores["pearson"] == pytest.approx(stats.pearsonr(pred, y)[0], abs=1e-5)
    assert scores["spearman"] == pytest.approx(stats.spearmanr(pred, y)[0], abs=1e-5)
    assert scores["mse"] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-4)
    logged = metrics(suite / "scores" / "seed-2", "eval")[-1]  # reduced sums, same weights
    assert logged["pearson"] == pytest.approx(scores["pearson"], abs=1e-4)
    assert logged["mse"] == pytest.approx(scores["mse"], rel=1e-4)
    card = (export / "README.md").read_text()
    assert "Text regression" in card and "spearman" in card
    assert "fine-tuned for text regression" in card


def test_suite_does_not_rerun_finished_runs(suite, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in suite.rglob("eval_results.json")}
    spec = yaml.safe_load((suite.parent / "suite.yaml").read_text())
    spec["seeds"] = SEEDS[:1]
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli(["finetune-suite", str(path), f"output_dir={suite}"])
    assert {p: p.stat().st_mtime_ns for p in suite.rglob("eval_results.json")} == before
    assert "| pairs | matched | f1 |" in proc.stdout
    assert json.loads((suite / "results.json").read_text())["seeds"] == SEEDS[:1]


def test_glue_suite_builds_every_task_config():
    from pipeline.commands.finetune_suite import SuiteConfig, parse_tasks, task_config

    path = ROOT / "configs/finetune/glue.yaml"
    suite = load_config(SuiteConfig, path)
    tasks = parse_tasks(suite, path.parent)
    assert set(tasks) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"}
    mnli = task_config(suite, "mnli", tasks["mnli"], seed=2)
    assert mnli.data.eval_set_paths() == {
        "matched": ["split:validation_matched"], "mismatched": ["split:validation_mismatched"]
    }  # fmt: skip
    assert mnli.data.text_pair_column == "hypothesis" and mnli.train.seed == 2
    assert mnli.output_dir == "runs/glue/mnli/seed-2"
    assert task_config(suite, "stsb", tasks["stsb"], 1).objective.name == "seqreg"


def test_in_training_pearson_keeps_predictions_near_the_mean():
    """Early in training predictions sit close to the mean label: raw float32 sums cancel
    (here r would come out above 1); sums about the training-label mean keep scipy's r."""
    import torch

    from pipeline.finetune.regression import SequenceRegression, SequenceRegressor

    class Near(torch.nn.Module):  # predictions 4 + 1e-4 * id: tiny spread around the mean
        def forward(self, input_ids, attention_mask):
            return types.SimpleNamespace(logits=4.0 + 1e-4 * input_ids[:, :1].float())

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (64, 1), generator=g)
    y = ids[:, 0].float() * 0.05 + torch.randn(64, generator=g) + 4
    want = stats.pearsonr(ids[:, 0].numpy(), y.numpy())[0]
    _, sums = SequenceRegressor(Near(), center=4.0)(ids, torch.ones_like(ids), y, torch.ones(64))
    out = SequenceRegression(SequenceRegression.Config()).summarize(
        {k: float(v) for k, v in sums.items()}
    )
    assert out["pearson"] == pytest.approx(want, abs=1e-4)
