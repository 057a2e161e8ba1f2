"""Publish an export to the Hugging Face Hub. The only module of the project that talks to the
network.

- The token comes only from `HF_TOKEN` or the huggingface_hub login (`hf auth login`); it is
  never passed around, printed, logged or written: huggingface_hub reads it itself when it
  builds each request, and error messages are scrubbed of it just in case.
- Only weights and text go up: safetensors, JSON, tokenizer and text files (`ALLOWED`);
  anything else (pickles: .bin .pt .pkl .ckpt, symlinks, unknown files) is refused up front,
  naming the file, before any request is made.
- `dry_run` describes exactly what would be uploaded and where, and sends nothing.
- In a distributed run only the main process (RANK 0) uploads.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("pipeline")

# safetensors weights, JSON configs, tokenizer vocabularies (vocab.txt, merges.txt, *.model
# sentencepiece files) and text (the model card)
ALLOWED = (".safetensors", ".json", ".txt", ".md", ".model")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
DEFAULT_ENDPOINT = "https://huggingface.co"


class HubError(RuntimeError):
    """A publish that cannot or must not happen (bad file, no token, bad repo, server error)."""


@dataclass
class UploadPlan:
    folder: Path
    repo: str
    revision: str
    private: bool
    files: list[tuple[str, int]]  # (path in the repo, bytes), sorted

    @property
    def url(self) -> str:
        return f"{endpoint()}/{self.repo}"

    def describe(self) -> str:
        """The dry-run report: every file with its size, the repo, revision and visibility."""
        total = sum(size for _, size in self.files)
        visibility = "private" if self.private else "public"
        lines = [
            f"dry run: would upload {len(self.files)} files ({total} bytes) from {self.folder}",
            f"to {self.url} (model repo, revision {self.revision}, {visibility}; "
            f"created if missing):",
            *[f"  {size:>12}  {path}" for path, size in self.files],
            f"token: {token_source()}",
        ]
        return "\n".join(lines)


def endpoint() -> str:
    # read at call time (huggingface_hub's constant is frozen at import)
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token_source() -> str:
    """Where the token would come from; never the token itself."""
    if os.environ.get("HF_TOKEN"):
        return "from HF_TOKEN"
    from huggingface_hub import get_token

    if get_token():
        return "from the huggingface_hub login"
    return "none found (set HF_TOKEN or run `hf auth login`)"


def is_main_process() -> bool:
    """RANK (torchrun, accelerate) or SLURM_PROCID (srun) is 0 or unset."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var) is not None:
            return int(os.environ[var]) == 0
    return True


def check_repo(repo: str) -> None:
    if not REPO_ID.match(repo or "") or ".." in repo or repo.endswith((".git", ".")):
        raise HubError(f"repo {repo!r} is not of the form OWNER/NAME (letters, digits, - _ .)")


def plan(
    folder: str | Path, repo: str, revision: str = "main", private: bool = False
) -> UploadPlan:
    """Every file of `folder` that would be uploaded; refuses the folder if any file is not
    allowed (all offending files are named)."""
    check_repo(repo)
    if not revision or revision.startswith("-") or ".." in revision:
        raise HubError(f"revision {revision!r} is not a valid branch name")
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"export folder {str(folder)!r} does not exist")
    files, refused = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            refused.append(f"{rel} (a symlink)")  # could point anywhere, e.g. at a token file
        elif path.is_dir():
            continue
        elif not path.name.lower().endswith(ALLOWED):
            refused.append(rel)
        else:
            files.append((rel, path.stat().st_size))
    if refused:
        raise HubError(
            f"refusing to publish {folder}: {', '.join(refused)} "
            f"(only {' '.join(ALLOWED)} files are uploaded; pickles are never published)"
        )
    if not any(rel == "config.json" for rel, _ in files):
        raise HubError(f"{folder} has no config.json: not a Hugging Face export")
    return UploadPlan(folder, repo, revision, private, files)


def check_can_publish(repo: str, export: bool = True) -> None:
    """Cheap checks before a long run that publishes at its end: repo name, token, online."""
    check_repo(repo)
    if not export:
        raise HubError("train.push_to_hub publishes the export: it needs train.export=true")
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise HubError("publishing needs the network but HF_HUB_OFFLINE is set")
    if token_source().startswith("none"):
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")


def publish(
    folder: str | Path,
    repo: str,
    *,
    private: bool = False,
    revision: str = "main",
    dry_run: bool = False,
    commit_message: str | None = None,
) -> str:
    """Create `repo` if missing and commit the allowed files of `folder` to `revision`.

    Returns the dry-run report, or the commit URL; "" on processes other than the main one."""
    if not is_main_process():
        return ""
    upload = plan(folder, repo, revision, private)
    if dry_run:
        return upload.describe()
    check_can_publish(repo)
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint())
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(upload.folder / rel))
        for rel, _ in upload.files
    ]
    try:
        api.create_repo(repo, private=private, repo_type="model", exist_ok=True)
        if revision != "main":
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        info = api.create_commit(
            repo,
            operations,
            commit_message=commit_message or f"Upload {upload.folder.name} with pipeline",
            repo_type="model",
            revision=revision,
        )
    except (HfHubHTTPError, OSError, ValueError) as err:
        message = str(err)
        token = get_token()
        if token:
            message = message.replace(token, "<redacted>")
        raise HubError(f"publishing {upload.folder} to {upload.url} failed: {message}") from None
    log.info("published %d files to %s (%s)", len(upload.files), upload.url, info.commit_url)
    return str(info.commit_url)


# ---------------------------------------------------------------- checkpoints during training
# transformers' Trainer (hub_strategy="checkpoint") keeps the newest checkpoint in this folder
LAST_CHECKPOINT = "last-checkpoint"


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint())


def _scrubbed(err: Exception) -> str:
    from huggingface_hub import get_token

    message, token = str(err), get_token()
    return message.replace(token, "<redacted>") if token else message


def push_checkpoint(folder: str | Path, repo: str, step: int, private: bool = False) -> str:
    """Commit every file of the engine checkpoint `folder` (model, optimizer, RNG and trainer
    state, its manifest) into `repo`'s last-checkpoint/ on main: one commit, so one revision,
    per checkpoint. Unlike `publish`, the optimizer and RNG files (tensor-only pickles, read
    back with weights_only=True) go up too: a resume needs them. Returns the commit id."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    check_repo(repo)
    folder = Path(folder)
    links = [p.name for p in folder.rglob("*") if p.is_symlink()]
    if links:
        raise HubError(f"refusing to push checkpoint {folder}: symlinks {', '.join(links)}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    operations = [
        CommitOperationAdd(
            path_in_repo=f"{LAST_CHECKPOINT}/{p.relative_to(folder).as_posix()}",
            path_or_fileobj=str(p),
        )
        for p in files
    ]
    api = _api()
    try:
        api.create_repo(repo, private=private, repo_type="model", exist_ok=True)
        info = api.create_commit(
            repo, operations, commit_message=f"Training in progress: checkpoint step {step}",
            repo_type="model", revision="main",
        )  # fmt: skip
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubError(f"pushing checkpoint {folder} to {endpoint()}/{repo} failed: "
                       f"{_scrubbed(err)}") from None  # fmt: skip
    log.info("pushed checkpoint step %d to %s (%s)", step, repo, info.oid)
    return str(info.oid)


def parse_source(source: str) -> tuple[str, str]:
    """hub:OWNER/NAME[@REVISION] -> (repo, revision); revision: a branch or commit id."""
    if not source.startswith("hub:"):
        raise HubError(f"{source!r}: a Hub source is hub:OWNER/NAME[@REVISION]")
    repo, _, revision = source[len("hub:") :].partition("@")
    check_repo(repo)
    return repo, revision or "main"


def download_checkpoint(source: str, dest: str | Path) -> Path:
    """Download last-checkpoint/ of the Hub source (hub:OWNER/NAME[@REVISION]) into `dest`
    (made fresh); returns the folder holding the checkpoint's files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    repo, revision = parse_source(source)
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise HubError(f"resuming from {source} needs the network but HF_HUB_OFFLINE is set")
    dest = Path(dest)
    try:
        snapshot_download(
            repo, revision=revision, repo_type="model", local_dir=str(dest),
            allow_patterns=[f"{LAST_CHECKPOINT}/*", f"{LAST_CHECKPOINT}/**"],
            endpoint=endpoint(),
        )  # fmt: skip
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubError(f"downloading {source} failed: {_scrubbed(err)}") from None
    folder = dest / LAST_CHECKPOINT
    if not (folder / "manifest.json").is_file():
        raise HubError(f"{source} holds no {LAST_CHECKPOINT}/ checkpoint (pushed by "
                       "train.push_checkpoints=every_save)")  # fmt: skip
    return folder
