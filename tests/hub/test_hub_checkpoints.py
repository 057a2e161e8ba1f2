"""The Hub during training: every checkpoint committed as it is written (one revision each) into
last-checkpoint/ (stale files deleted) or each into its own checkpoint-STEP/, and a fresh run
folder resumed from a pushed revision continues exactly where that run was.

On `mock_hub.MockHub` (127.0.0.1): this checks how we drive huggingface_hub (uploads, revision
lookups, downloads), not the real Hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, env, metrics, run_cli
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


def test_all_checkpoints_keeps_each_and_resume_takes_the_newest(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    steps = ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=3"]
    with MockHub() as hub:
        hub_vars = hub_env(hub.url, tmp_path)
        run_cli(train_args(first, *steps, "train.push_to_hub=alice/run",
                           "train.push_checkpoints=all_checkpoints"), timeout=300, **hub_vars)  # fmt: skip
        pushed = [c for c in hub.state.commits if c.summary.startswith("Training in progress")]
        assert [c.summary[-6:] for c in pushed] == ["step 2", "step 4", "step 6"]
        # main holds every checkpoint, each in its own folder, byte for byte as written locally
        _, tree = hub.state.tree("alice/run", "main")
        for step in (2, 4, 6):
            local = first / "checkpoints" / f"step-{step:08d}"
            held = {k: v for k, v in tree.items() if k.startswith(f"checkpoint-{step}/")}
            assert held == files_of(local, f"checkpoint-{step}")
        assert not any(k.startswith("last-checkpoint/") for k in tree)

        # the step-4 revision holds checkpoint-2/ and checkpoint-4/: the newest is taken
        run_cli(train_args(second, *steps, "train.export=false",
                           f"train.resume_from=hub:alice/run@{pushed[1].oid}"),
                timeout=300, **hub_vars)  # fmt: skip
        assert not hub.state.unexpected, hub.state.unexpected
    resumed = metrics(second)
    assert [r["step"] for r in resumed] == [5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in metrics(first) if r["step"] > 4]
    a = load_file(str(first / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(second / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
def test_two_processes_resume_from_the_hub_download_once(tmp_path):
    """2 processes (torchrun, gloo): the main one downloads the checkpoint into the shared run
    folder, the other waits for it; the resumed steps are bitwise the uninterrupted ones."""
    first, second = tmp_path / "first", tmp_path / "second"
    two = {"launcher": "torchrun", "nproc": 2, "timeout": 400}
    with MockHub() as hub:
        hub_vars = hub_env(hub.url, tmp_path)
        run_cli(train_args(first, *STEPS, "train.push_to_hub=alice/run",
                           "train.push_checkpoints=all_checkpoints"), **two, **hub_vars)  # fmt: skip
        pushed = [c for c in hub.state.commits if c.summary.startswith("Training in progress")]
        assert [c.summary[-6:] for c in pushed] == ["step 2", "step 4"]
        assert {"checkpoint-2/rank-0.pt", "checkpoint-2/rank-1.pt"} <= set(pushed[0].files)
        before = len(hub.state.requests)
        resumed = run_cli(train_args(second, *STEPS, "train.export=false",
                                     f"train.resume_from=hub:alice/run@{pushed[0].oid}"),
                          **two, **hub_vars)  # fmt: skip
        asked = hub.state.requests[before:]
        assert not hub.state.unexpected, hub.state.unexpected
    # one process asked the Hub, once: one revision lookup, each file fetched once
    assert sum("/revision/" in path for _, path, _ in asked) == 1, asked
    got = [path.rsplit("/", 1)[-1] for method, path, _ in asked
           if method == "GET" and "/resolve/" in path]  # fmt: skip
    assert sorted(got) == sorted(k.rsplit("/", 1)[-1] for k in pushed[0].files), asked
    assert resumed.stderr.count("fetched checkpoint step 2 from") == 1
    ran = metrics(first)
    assert [r["step"] for r in metrics(second)] == [3, 4]
    assert [r["loss"] for r in metrics(second)] == [r["loss"] for r in ran if r["step"] > 2]
    a = load_file(str(first / "checkpoints" / "step-00000004" / "model.safetensors"))
    b = load_file(str(second / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for rank in ("rank-0.pt", "rank-1.pt"):  # each process's RNG state went on as before
        ours = second / "checkpoints" / "step-00000004" / rank
        assert ours.read_bytes() == (first / "checkpoints" / "step-00000004" / rank).read_bytes()


# pushes fake checkpoints straight through pipeline.hub (in a subprocess: this process has
# huggingface_hub imported offline); prints what latest_checkpoint picks after each push
PUSHES = """
import json, sys
from pathlib import Path
from pipeline import hub
root = Path(sys.argv[1])
def push(name, step, into, **extra):
    folder = root / name
    folder.mkdir()
    files = {"manifest.json": "{}", "trainer_state.json": json.dumps({"step": step}), **extra}
    for rel, text in files.items():
        (folder / rel).write_text(text)
    hub.push_checkpoint(folder, "alice/run", step, path_in_repo=into)
    print(json.dumps(hub.latest_checkpoint("hub:alice/run")[1]))
push("a", 2, "last-checkpoint", **{"only-in-a.json": "1", "model.safetensors": "a"})
push("b", 4, "last-checkpoint", **{"model.safetensors": "b"})
push("c", 3, "checkpoint-3")
push("d", 6, "checkpoint-6")
push("e", 5, "checkpoint-5")
"""


def test_a_push_deletes_the_previous_checkpoints_stale_files_and_the_newest_is_found(tmp_path):
    with MockHub() as hub:
        proc = subprocess.run(
            [sys.executable, "-c", PUSHES, str(tmp_path)], cwd=ROOT, capture_output=True,
            text=True, timeout=120, env=env(**hub_env(hub.url, tmp_path)),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not hub.state.unexpected, hub.state.unexpected
        a, b = hub.state.commits[:2]
        _, tree = hub.state.tree("alice/run", b.oid)
    assert "last-checkpoint/only-in-a.json" in a.files
    assert b.deleted == ["last-checkpoint/only-in-a.json"]  # in the same commit as b's files
    assert sorted(tree) == ["last-checkpoint/manifest.json", "last-checkpoint/model.safetensors",
                            "last-checkpoint/trainer_state.json"]  # fmt: skip
    assert tree["last-checkpoint/model.safetensors"] == b"b"
    # newest: last-checkpoint (4) beats checkpoint-3; checkpoint-6 beats it; 6 stays above 5
    picked = [json.loads(line) for line in proc.stdout.split()]
    assert picked == ["last-checkpoint", "last-checkpoint", "last-checkpoint", "checkpoint-6",
                      "checkpoint-6"]  # fmt: skip


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
