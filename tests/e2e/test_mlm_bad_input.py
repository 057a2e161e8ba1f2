"""Bad input gets one line naming the problem, exit status 2, before any training work."""

import json
from pathlib import Path

import pytest

from pipeline.__main__ import main
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs/mlm/tiny.yaml")


def run(capsys, tmp_path, *overrides):
    out = tmp_path / "run"
    code = main(["train", RECIPE, *TINY, *overrides, "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else "", out


def assert_nothing_started(out: Path):
    assert not (out / "metrics.jsonl").exists()
    assert not (out / "checkpoints").exists()


def test_missing_column_lists_columns(capsys, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"body": "some text here"}) + "\n")
    code, line, out = run(capsys, tmp_path, f"data.path={data}")
    assert code == 2
    assert "data.text_column='text' is not a column of" in line and "columns: body" in line
    assert_nothing_started(out)


def test_empty_file(capsys, tmp_path):
    data = tmp_path / "empty.txt"
    data.write_text("")
    code, line, out = run(capsys, tmp_path, f"data.path={data}")
    assert code == 2 and f"data file '{data}' is empty" in line
    assert_nothing_started(out)


def test_missing_file(capsys, tmp_path):
    code, line, out = run(capsys, tmp_path, f"data.path={tmp_path / 'nope.txt'}")
    assert code == 2 and "nope.txt' does not exist" in line


def test_unknown_key_message(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["train", RECIPE, "train.max_stepz=3", "optim.lr=fast", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown key train.max_stepz; valid keys here:" in err
    assert "optim.lr must be a number, got 'fast'" in err
    assert not out.exists()


@pytest.mark.parametrize("world,global_batch", [(1, 10), (2, 12)])
def test_global_batch_not_divisible(capsys, tmp_path, monkeypatch, world, global_batch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    code, line, out = run(
        capsys, tmp_path, "train.micro_batch_size=4", f"train.global_batch_size={global_batch}"
    )
    assert code == 2
    assert f"train.global_batch_size={global_batch} is not divisible by" in line
    assert f"4 x {world} = {4 * world}" in line
    assert not out.exists()


def test_tokenizer_larger_than_model(capsys, tmp_path):
    code, line, out = run(
        capsys,
        tmp_path,
        "model.overrides={hidden_size: 64, num_attention_heads: 2, intermediate_size: 128, num_hidden_layers: 1, vocab_size: 500}",
    )
    assert code == 2
    assert "the tokenizer has 1000 tokens but the model's vocabulary has 500" in line
    assert_nothing_started(out)


def test_non_utf8_text(capsys, tmp_path):
    data = tmp_path / "latin1.txt"
    data.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    code, line, out = run(capsys, tmp_path, f"data.path={data}")
    assert code == 2 and "is not UTF-8 text (byte 0xe9 at offset 3)" in line
