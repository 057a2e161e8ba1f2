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

import json
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
# transformers' Trainer keeps the newest checkpoint in last-checkpoint/ (hub_strategy=
# "checkpoint") or each one in a folder named as in its output_dir (hub_strategy=
# "all_checkpoints"); these are the same names
LAST_CHECKPOINT = "last-checkpoint"
NUMBERED = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_MANIFEST = "manifest.json"  # pipeline.engine.checkpoint.MANIFEST
CHECKPOINT_STATE = "trainer_state.json"  # pipeline.engine.checkpoint.TRAINER_STATE


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint())


def _scrubbed(err: Exception) -> str:
    from huggingface_hub import get_token

    message, token = str(err), get_token()
    return message.replace(token, "<redacted>") if token else message


def checkpoint_folder(step: int, every: bool) -> str:
    """The repo folder a checkpoint is pushed into: checkpoint-STEP (all_checkpoints, one folder
    per checkpoint) or last-checkpoint (every_save, the newest only)."""
    return f"checkpoint-{step}" if every else LAST_CHECKPOINT


def push_checkpoint(
    folder: str | Path,
    repo: str,
    step: int,
    private: bool = False,
    path_in_repo: str = LAST_CHECKPOINT,
) -> str:
    """Commit every file of the engine checkpoint `folder` (model, optimizer, RNG and trainer
    state, its manifest) into `repo`'s `path_in_repo`/ on main: one commit, so one revision,
    per checkpoint. Files already in `path_in_repo`/ that this checkpoint does not have (the
    previous checkpoint's) are deleted in the same commit, so the folder is exactly this
    checkpoint. Unlike `publish`, the optimizer and RNG files (tensor-only pickles, read back
    with weights_only=True) go up too: a resume needs them. Returns the commit id."""
    # One create_commit, not upload_folder(delete_patterns=...): with hf_xet installed,
    # upload_folder may split a folder over several commits, and a revision holding half a
    # checkpoint is one a resume could pick.
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    check_repo(repo)
    folder = Path(folder)
    links = [p.name for p in folder.rglob("*") if p.is_symlink()]
    if links:
        raise HubError(f"refusing to push checkpoint {folder}: symlinks {', '.join(links)}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    added = {f"{path_in_repo}/{p.relative_to(folder).as_posix()}": p for p in files}
    operations: list = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        for name, path in added.items()
    ]
    api = _api()
    try:
        api.create_repo(repo, private=private, repo_type="model", exist_ok=True)
        there = api.list_repo_files(repo, repo_type="model", revision="main")
        stale = sorted(f for f in there if f.startswith(f"{path_in_repo}/") and f not in added)
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        info = api.create_commit(
            repo, operations, commit_message=f"Training in progress: checkpoint step {step}",
            repo_type="model", revision="main",
        )  # fmt: skip
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubError(f"pushing checkpoint {folder} to {endpoint()}/{repo} failed: "
                       f"{_scrubbed(err)}") from None  # fmt: skip
    log.info("pushed checkpoint step %d to %s/%s (%s; %d stale files deleted)",
             step, repo, path_in_repo, info.oid, len(stale))  # fmt: skip
    return str(info.oid)


def parse_source(source: str) -> tuple[str, str]:
    """hub:OWNER/NAME[@REVISION] -> (repo, revision); revision: a branch, tag or commit id."""
    if not source.startswith("hub:"):
        raise HubError(f"{source!r}: a Hub source is hub:OWNER/NAME[@REVISION]")
    repo, _, revision = source[len("hub:") :].partition("@")
    check_repo(repo)
    return repo, revision or "main"


def latest_checkpoint(source: str) -> tuple[str, str]:
    """(commit id, folder) of the newest checkpoint of the Hub source at its revision: the
    checkpoint-STEP/ with the highest STEP, or last-checkpoint/, whichever has the higher step
    (its trainer_state.json says) when the repo has both. Only folders with a manifest count."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    repo, revision = parse_source(source)
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise HubError(f"resuming from {source} needs the network but HF_HUB_OFFLINE is set")
    try:
        info = _api().model_info(repo, revision=revision, files_metadata=False)
        commit = str(info.sha)  # later requests pin this commit: a push meanwhile changes nothing
        names = [s.rfilename for s in info.siblings or []]
        folders = {n.split("/")[0] for n in names if n.count("/") == 1
                   and n.endswith(f"/{CHECKPOINT_MANIFEST}")}  # fmt: skip
        numbered = sorted((int(m.group(1)), f) for f in folders if (m := NUMBERED.match(f)))
        if not numbered and LAST_CHECKPOINT not in folders:
            raise HubError(f"{source} holds no checkpoint (a {LAST_CHECKPOINT}/ or checkpoint-STEP/ "
                           "folder with a manifest, pushed by train.push_checkpoints)")  # fmt: skip
        if not numbered:
            return commit, LAST_CHECKPOINT
        if LAST_CHECKPOINT not in folders:
            return commit, numbered[-1][1]
        state = hf_hub_download(repo, f"{LAST_CHECKPOINT}/{CHECKPOINT_STATE}", revision=commit,
                                endpoint=endpoint())  # fmt: skip
        last = int(json.loads(Path(state).read_text())["step"])
    except (HfHubHTTPError, OSError, ValueError, KeyError) as err:
        raise HubError(f"looking up the checkpoints of {source} failed: {_scrubbed(err)}") from None
    return commit, LAST_CHECKPOINT if last >= numbered[-1][0] else numbered[-1][1]


def download_checkpoint(source: str, dest: str | Path) -> Path:
    """Download the newest checkpoint of the Hub source (hub:OWNER/NAME[@REVISION], see
    `latest_checkpoint`) into `dest` (made fresh); returns the folder holding its files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    repo, _ = parse_source(source)
    commit, name = latest_checkpoint(source)
    dest = Path(dest)
    try:
        snapshot_download(
            repo, revision=commit, repo_type="model", local_dir=str(dest),
            allow_patterns=[f"{name}/*", f"{name}/**"], endpoint=endpoint(),
        )  # fmt: skip
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubError(f"downloading {source} failed: {_scrubbed(err)}") from None
    folder = dest / name
    if not (folder / CHECKPOINT_MANIFEST).is_file():
        raise HubError(f"{source} at {commit}: {name}/ has no {CHECKPOINT_MANIFEST}")
    log.info("downloaded %s/ of %s at commit %s", name, source, commit)
    return folder
