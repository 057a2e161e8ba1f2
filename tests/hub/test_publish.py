"""`python -m pipeline publish`: what is uploaded, what is refused, and that the token stays secret.

Uploads go to `mock_hub.MockHub`, a local HTTP server on 127.0.0.1 that implements the endpoints
huggingface_hub calls. These tests check our use of the client and what goes over the wire;
they are not tests of the real Hugging Face Hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import run_cli
from tests.hub.mock_hub import COMMIT_OID, MockHub

SENTINEL = "hf_SENTINELtokenDoNotLeak0123456789"
CARD = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n\n# tiny\n"


@pytest.fixture
def export_dir(tmp_path) -> Path:
    folder = tmp_path / "run" / "export"
    folder.mkdir(parents=True)
    save_file(
        {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, folder / "model.safetensors"
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 4}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    (folder / "README.md").write_text(CARD)
    return folder


def hub_env(hub_url: str, tmp_path: Path, token: str | None = SENTINEL) -> dict[str, str]:
    env = {
        "HF_ENDPOINT": hub_url,
        "HF_HUB_OFFLINE": "0",  # publishing is the one online action; the "Hub" is 127.0.0.1
        "HF_HOME": str(tmp_path / "hf-home"),  # no stored login from the machine running tests
        "HF_HUB_DISABLE_XET": "1",  # the mock speaks the LFS "basic" transfer, not Xet
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token or "",  # empty = unset for huggingface_hub
    }
    return env


def publish(args: list[str], env: dict[str, str], check: bool = True):
    return run_cli(["publish", *args], check=check, timeout=120, **env)


def test_dry_run_lists_exactly_what_and_where(export_dir, tmp_path):
    with MockHub() as hub:
        out = publish(
            [str(export_dir), "--repo", "alice/tiny-bert", "--revision", "v1", "--private",
             "--dry-run"],
            hub_env(hub.url, tmp_path),
        )  # fmt: skip
        assert hub.state.requests == []  # a dry run sends nothing
    sizes = {p.name: p.stat().st_size for p in export_dir.iterdir()}
    total = sum(sizes.values())
    expected = "\n".join(
        [
            f"dry run: would upload 5 files ({total} bytes) from {export_dir}",
            f"to {hub.url}/alice/tiny-bert (model repo, revision v1, private; created if missing):",
            *[
                f"  {sizes[name]:>12}  {name}"
                for name in (
                    "README.md",
                    "config.json",
                    "model.safetensors",
                    "tokenizer_config.json",
                    "vocab.txt",
                )
            ],  # fmt: skip
            "token: from HF_TOKEN",
        ]
    )
    assert out.stdout == expected + "\n"
    assert SENTINEL not in out.stdout + out.stderr


@pytest.mark.parametrize(
    "bad", ["pytorch_model.bin", "optimizer.pt", "state.pkl", "training_args.bin", "sub/rng.pth"]
)
def test_disallowed_files_are_refused_before_any_request(export_dir, tmp_path, bad):
    (export_dir / bad).parent.mkdir(exist_ok=True)
    (export_dir / bad).write_bytes(b"\x80\x04pickle")
    with MockHub() as hub:
        for extra in (["--dry-run"], []):
            out = publish(
                [str(export_dir), "--repo", "alice/tiny-bert", *extra],
                hub_env(hub.url, tmp_path),
                check=False,
            )
            assert out.returncode == 2, out.stderr
            assert f"refusing to publish {export_dir}: {bad} " in out.stderr
            assert "Traceback" not in out.stderr
        assert hub.state.requests == []


def test_symlinks_are_refused(export_dir, tmp_path):
    secret = tmp_path / "token"
    secret.write_text(SENTINEL)
    (export_dir / "notes.txt").symlink_to(secret)
    with MockHub() as hub:
        out = publish(
            [str(export_dir), "--repo", "alice/x"], hub_env(hub.url, tmp_path), check=False
        )
        assert hub.state.requests == []
    assert out.returncode == 2
    assert "notes.txt (a symlink)" in out.stderr
    assert SENTINEL not in out.stdout + out.stderr


def test_upload_to_local_mock_server(export_dir, tmp_path):
    with MockHub() as hub:
        out = publish(
            [str(export_dir), "--repo", "alice/tiny-bert", "--revision", "exp-1", "--private"],
            hub_env(hub.url, tmp_path),
        )
        state = hub.state
    assert out.stdout.strip() == f"{hub.url}/alice/tiny-bert/commit/{COMMIT_OID}"
    assert state.unexpected == []
    assert state.repos["alice/tiny-bert"]["visibility"] == "private"
    assert state.branches == [("alice/tiny-bert", "exp-1")]
    assert len(state.commits) == 1
    commit = state.commits[0]
    assert (commit.repo, commit.revision) == ("alice/tiny-bert", "exp-1")
    # every file arrived byte for byte; the weights went through the LFS upload
    assert commit.files == {p.name: p.read_bytes() for p in export_dir.iterdir()}
    assert list(state.lfs.values()) == [(export_dir / "model.safetensors").read_bytes()]
    # the token was sent (as a bearer header) on the API calls, and nowhere in our output
    api_calls = [r for r in state.requests if r[1].startswith("/api/")]
    assert api_calls and all(auth == f"Bearer {SENTINEL}" for _, _, auth in api_calls)
    assert SENTINEL not in out.stdout + out.stderr


def test_server_error_is_reported_without_the_token(export_dir, tmp_path):
    with MockHub() as hub:
        hub.state.fail_with = (403, "forbidden for {auth}")  # a server that echoes the header
        out = publish(
            [str(export_dir), "--repo", "alice/tiny-bert"], hub_env(hub.url, tmp_path), check=False
        )
    assert out.returncode == 2
    assert "error: publishing" in out.stderr and "failed" in out.stderr
    assert "<redacted>" in out.stderr
    assert SENTINEL not in out.stdout + out.stderr


def test_no_token_and_offline_fail_before_any_request(export_dir, tmp_path):
    with MockHub() as hub:
        out = publish(
            [str(export_dir), "--repo", "alice/x"], hub_env(hub.url, tmp_path, token=None),
            check=False,
        )  # fmt: skip
        assert out.returncode == 2
        assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in out.stderr
        env = hub_env(hub.url, tmp_path) | {"HF_HUB_OFFLINE": "1"}
        out = publish([str(export_dir), "--repo", "alice/x"], env, check=False)
        assert out.returncode == 2
        assert "HF_HUB_OFFLINE" in out.stderr
        out = publish([str(export_dir), "--repo", "not a repo"], env, check=False)
        assert "is not of the form OWNER/NAME" in out.stderr
        assert hub.state.requests == []


def test_only_rank_zero_uploads(export_dir, tmp_path):
    with MockHub() as hub:
        out = publish(
            [str(export_dir), "--repo", "alice/x"], hub_env(hub.url, tmp_path) | {"RANK": "1"}
        )
        assert hub.state.requests == []
    assert out.stdout == ""
