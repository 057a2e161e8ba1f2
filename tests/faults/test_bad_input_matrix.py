"""The bad-input matrix: one line `error: ...` naming the problem, exit 2, raised before any
training work, and nothing already saved is lost. With tests/e2e/test_mlm_bad_input.py (8 cases)
this makes the table in docs/FAULTS.md; every case runs in this process (fast)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine import checkpoint
from tests.faults.conftest import ROOT, run_main, train_args


def nothing_started(out: Path) -> bool:
    return not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of the run's checkpoints with its hash: must not change on a bad input."""
    root = run_dir / "checkpoints"
    return {str(p.relative_to(root)): checkpoint.sha256(p) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ config (before anything)


def test_malformed_yaml(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  max_steps: 3\n   seed: 1\n")
    code, line = run_main(capsys, ["train", str(cfg), "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert line.startswith(f"error: config error in {cfg}: malformed YAML at line 3, column")
    assert not (tmp_path / "run").exists()


def test_config_not_utf8(capsys, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    code, line = run_main(capsys, ["train", str(cfg)])
    assert code == 2 and "not UTF-8 text (invalid continuation byte at byte 15)" in line


def test_config_file_missing(capsys, tmp_path):
    code, line = run_main(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert (
        code == 2
        and line == f"error: config error: config file '{tmp_path}/nope.yaml' does not exist"
    )


def test_config_top_level_not_a_mapping(capsys, tmp_path):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- a\n- b\n")
    code, line = run_main(capsys, ["train", str(cfg)])
    assert code == 2 and "top level must be a mapping, got list" in line


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_steps=ten", "train.max_steps must be an integer, got 'ten'"),
        ("optim.lr=-1e-3", "optim.lr must be positive, got -0.001"),
        ("train.resume=sometimes", "train.resume must be one of 'auto', 'required', 'never'"),
        ("objective.name=nope", "objective.name: "),
        ("objective.mask_prob=1.5", "objective.mask_prob must be in (0, 1), got 1.5"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite must be one of 'skip', 'stop'"),
        ("train.max_bad_steps=0", "train.max_bad_steps must be >= 1, got 0"),
        ("data.block_size=4", "data.block_size must be at least 8, got 4"),
    ],
)
def test_invalid_value(capsys, tmp_path, override, message):
    out = tmp_path / "run"
    code, line = run_main(capsys, train_args(out, override))
    assert code == 2 and message in line and line.startswith("error: config error")
    assert not out.exists()


# ------------------------------------------------------------------ setup (before any data)


def test_invalid_deepspeed_json(capsys, tmp_path):
    ds = tmp_path / "zero.json"
    ds.write_text('{"train_batch_size": 8,\n')
    out = tmp_path / "run"
    code, line = run_main(
        capsys, train_args(out, "engine.strategy=deepspeed", f"engine.deepspeed_config={ds}")
    )
    assert code == 2
    assert line.startswith(f"error: {ds} is not valid JSON: Expecting property name") and (
        "line 2, column 1" in line
    )
    assert nothing_started(out)


def test_output_folder_not_writable(capsys, tmp_path):
    # as root permissions never refuse, so the run folder is put under a regular file instead
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, line = run_main(capsys, train_args(blocker / "run"))
    assert code == 2
    assert line == f"error: output folder '{blocker}/run' is not writable: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (tests run as root)")
def test_output_folder_read_only(capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o500)
    code, line = run_main(capsys, train_args(parent / "run"))
    assert code == 2 and "is not writable: Permission denied" in line


def test_resume_with_incompatible_config(capsys, run_copy):
    before = snapshot(run_copy)
    code, line = run_main(capsys, train_args(run_copy, "data.block_size=16"))
    assert code == 2
    assert f"error: {run_copy} holds checkpoints of an incompatible config" in line
    assert "data.block_size: 32 -> 16" in line
    assert snapshot(run_copy) == before  # nothing saved is lost


def test_resume_required_in_empty_folder(capsys, tmp_path):
    out = tmp_path / "run"
    code, line = run_main(capsys, train_args(out, "train.resume=required"))
    assert code == 2
    assert line == f"error: train.resume=required but {out}/checkpoints has no valid checkpoint"
    assert nothing_started(out)


# ------------------------------------------------------------------ data (before tokenizing)


def test_only_empty_lines(capsys, tmp_path):
    data = tmp_path / "blank.txt"
    data.write_text("\n\n   \n\n")
    code, line = run_main(capsys, train_args(tmp_path / "run", f"data.path={data}"))
    assert code == 2 and line == f"error: dataset '{data}' has no text: every 'text' is empty"
    assert nothing_started(tmp_path / "run")


def test_data_shorter_than_one_block(capsys, tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("in the beginning\n")
    code, line = run_main(capsys, train_args(tmp_path / "run", f"data.path={data}"))
    assert code == 2
    assert line == (
        f"error: data '{data}' is shorter than one block of 32 tokens; "
        "add text or lower data.block_size"
    )
    assert nothing_started(tmp_path / "run")


def test_unreadable_file_simulated(capsys, tmp_path, monkeypatch):
    # chmod 000 does not stop root: the open() of the file is made to fail as it would
    data = tmp_path / "secret.txt"
    data.write_text("text\n")
    real_open = open

    def deny(path, *args, **kwargs):
        if Path(path) == data:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("pipeline.data.sources.open", deny, raising=False)
    code, line = run_main(capsys, train_args(tmp_path / "run", f"data.path={data}"))
    assert code == 2 and line == f"error: data file '{data}' is not readable (permission denied)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (tests run as root)")
def test_unreadable_file_chmod(capsys, tmp_path):
    data = tmp_path / "secret.txt"
    data.write_text("text\n")
    data.chmod(0)
    code, line = run_main(capsys, train_args(tmp_path / "run", f"data.path={data}"))
    assert code == 2 and "is not readable (permission denied)" in line


def test_unsupported_extension(capsys, tmp_path):
    data = tmp_path / "corpus.docx"
    data.write_text("x")
    code, line = run_main(capsys, train_args(tmp_path / "run", f"data.path={data}"))
    assert code == 2 and f"data file '{data}' has an unsupported extension; use " in line


def test_mixed_formats(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("some text\n")
    (tmp_path / "b.jsonl").write_text('{"text": "more"}\n')
    paths = f"data.path=[{tmp_path / 'a.txt'}, {tmp_path / 'b.jsonl'}]"
    code, line = run_main(capsys, train_args(tmp_path / "run", paths))
    assert code == 2 and line == "error: data files mix formats (json, text); use one format"


def test_folder_without_data_files(capsys, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "notes.md").write_text("x")
    code, line = run_main(capsys, train_args(tmp_path / "run", f"data.path={folder}"))
    assert code == 2 and line.startswith(f"error: data folder '{folder}' holds no data files")


def test_missing_eval_file(capsys, tmp_path):
    code, line = run_main(
        capsys, train_args(tmp_path / "run", f"data.eval_path={tmp_path / 'heldout.txt'}")
    )
    assert code == 2 and line == f"error: data file '{tmp_path / 'heldout.txt'}' does not exist"


def test_bad_data_on_an_existing_run_loses_nothing(capsys, run_copy):
    before = snapshot(run_copy)
    code, line = run_main(capsys, train_args(run_copy, f"data.path={run_copy / 'gone.txt'}"))
    assert code == 2 and "gone.txt' does not exist" in line
    assert snapshot(run_copy) == before
    assert checkpoint.latest_valid(run_copy).name == "step-00000004"


def test_nan_in_array_data(capsys, tmp_path):
    x = np.ones((10, 3))
    x[4, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    argv = ["stage", str(ROOT / "configs/stages/kmeans.yaml"), f"data.path={tmp_path / 'x.npy'}"]
    code, line = run_main(capsys, [*argv, "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert (
        line
        == f"error: {tmp_path / 'x.npy'}: 1 non-finite values (NaN or inf), first at row 4, column 1"
    )


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_folder_missing(capsys, tmp_path):
    tok = tmp_path / "no-tokenizer"
    code, line = run_main(capsys, train_args(tmp_path / "run", f"tokenizer.name_or_path={tok}"))
    assert code == 2 and line == f"error: tokenizer.name_or_path='{tok}' does not exist"


def test_tokenizer_without_mask_token(capsys, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        **{w: i + 4 for i, w in enumerate("abc")},
    }
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    tok.save_pretrained(tmp_path / "tok")
    code, line = run_main(
        capsys, train_args(tmp_path / "run", f"tokenizer.name_or_path={tmp_path / 'tok'}")
    )
    assert code == 2
    assert line == f"error: tokenizer {tmp_path / 'tok'} has no mask_token; masked-LM needs them"
    assert nothing_started(tmp_path / "run")


# ------------------------------------------------------------------ while saving


def test_disk_full_while_saving(capsys, tmp_path, monkeypatch):
    """ENOSPC in the middle of checkpoint 4: a one-line error, checkpoint 2 intact, no debris."""
    out = tmp_path / "run"
    monkeypatch.setenv("PIPELINE_FAULT", "disk_full@4")
    args = ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=1"]
    code, line = run_main(capsys, train_args(out, *args, "train.export=false"))
    assert code == 2
    assert line == (
        f"error: saving checkpoint {out}/checkpoints/step-00000004 failed: No space left on "
        f"device (injected: disk_full); the previous checkpoints in {out}/checkpoints are intact"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert checkpoint.verify(out / "checkpoints/step-00000002") is None
    state = json.loads((out / "checkpoints/step-00000002/trainer_state.json").read_text())
    assert state["step"] == 2
