"""The Hub during training: every checkpoint committed as it is written (one revision each), and
a fresh run folder resumed from a pushed revision continues exactly where that run was.

On `mock_hub.MockHub` (127.0.0.1): this checks how we drive huggingface_hub (uploads, revision
lookups, downloads), not the real Hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import metrics, run_cli
from tests.faults.conftest import RECIPE, run_main, train_args
from tests.hub.mock_hub import MockHub
from tests.hub.test_publish import hub_env

STEPS = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=1"]


def files_of(folder: Path, prefix: str) -> dict[str, bytes]:
    return {
        f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_push_every_save_then_resume_from_a_pushed_revision(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    with MockHub() as hub:
        env = hub_env(hub.url, tmp_path)
        run_cli(train_args(first, *STEPS, "train.push_to_hub=alice/run",
                           "train.push_checkpoints=every_save"), timeout=300, **env)  # fmt: skip
        pushed = [c for c in hub.state.commits if c.summary.startswith("Training in progress")]
        assert [c.summary for c in pushed] == [
            "Training in progress: checkpoint step 2",
            "Training in progress: checkpoint step 4",
        ]
        assert all(c.repo == "alice/run" and c.revision == "main" for c in pushed)
        assert len({c.oid for c in hub.state.commits}) == len(hub.state.commits)  # revisions
        # the final checkpoint went up whole, byte for byte (the step-2 one was rotated away
        # locally meanwhile: keep_checkpoints=1)
        local = first / "checkpoints" / "step-00000004"
        assert pushed[-1].files == files_of(local, "last-checkpoint")
        assert "last-checkpoint/optimizer.bin" in pushed[0].files
        assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["step-00000004"]
        assert not (first / ".hub-push").exists()
        # the export is still published at the end, beside the checkpoint folder
        assert "model.safetensors" in hub.state.commits[-1].files

        # a fresh folder, resumed from the step-2 revision (a commit id)
        run_cli(train_args(second, *STEPS, "train.export=false",
                           f"train.resume_from=hub:alice/run@{pushed[0].oid}"),
                timeout=300, **env)  # fmt: skip
        assert not hub.state.unexpected, hub.state.unexpected
    # it continued at step 3, exactly as the first run did after its step-2 checkpoint
    ran = metrics(first)
    resumed = metrics(second)
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in ran if r["step"] > 2]
    a = load_file(str(local / "model.safetensors"))
    b = load_file(str(second / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_and_push_checkpoints_are_checked_up_front(capsys, tmp_path):
    from pipeline.config import ConfigError, load_config
    from pipeline.train_config import RunConfig

    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, RECIPE, ["train.push_checkpoints=every_save",
                                        "train.resume_from=alice/run"])  # fmt: skip
    assert "push_checkpoints needs train.push_to_hub" in str(err.value)
    assert "resume_from must be hub:OWNER/NAME[@REVISION], got 'alice/run'" in str(err.value)
    out = tmp_path / "run"  # HF_HUB_OFFLINE=1 in the tests: refused before anything is built
    code, last = run_main(capsys, train_args(out, "train.resume_from=hub:alice/run"))
    assert code == 2
    assert last == "error: resuming from hub:alice/run needs the network but HF_HUB_OFFLINE is set"
    assert not out.exists()
