"""The Hub during training: push checkpoints as they are written, resume from a pushed one.

- `train.push_checkpoints=every_save` (transformers' `hub_strategy="checkpoint"`): every
  complete checkpoint is committed to the `train.push_to_hub` repo's `last-checkpoint/` folder,
  one commit (so one revision) per checkpoint, by a hook (`PushCheckpoints.on_checkpoint`) on
  the main process; the previous checkpoint's files that the new one lacks are deleted in that
  commit. `all_checkpoints` (transformers' `hub_strategy="all_checkpoints"`): each checkpoint
  goes into its own `checkpoint-STEP/` folder instead, and the repo keeps them all. The checkpoint is hard-linked aside first (rotation may delete the original)
  and uploaded by a background thread, so training goes on during the upload; the next push,
  and the end of training (`finish`), wait for the previous one and raise its error.
- `train.resume_from=hub:OWNER/NAME[@REVISION]`: a run folder without a valid checkpoint of its
  own starts from that repo's newest checkpoint at that branch or commit id (the highest
  `checkpoint-STEP/`, or `last-checkpoint/` if it is newer, `hub.latest_checkpoint`): the main process
  downloads it, checks its manifest and puts it in RUN_DIR/checkpoints/step-N, where the
  engine's resume finds it (the others wait for it: the run folder is shared). A folder that has
  its own checkpoint (a requeued job) resumes from that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import hub
from pipeline.engine import checkpoint
from pipeline.engine.hooks import Hook

log = logging.getLogger("pipeline")

DOWNLOAD_DIR = ".hub-download"
PUSH_DIR = ".hub-push"


class PushCheckpoints(Hook):
    """Commits each complete checkpoint to `repo` (main process only)."""

    def __init__(self, run_dir: Path, repo: str, enabled: bool = True, every: bool = False) -> None:
        self.run_dir, self.repo, self.enabled = Path(run_dir), repo, enabled
        self.every = every  # all_checkpoints: checkpoint-STEP/ each, else last-checkpoint/
        self.pushed: list[tuple[int, str]] = []  # (step, commit id), in order
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_checkpoint(self, phase: str, step: int) -> None:
        if phase != "complete" or not self.enabled:
            return
        self.wait()  # one upload at a time, in checkpoint order
        folder = checkpoint.checkpoints_dir(self.run_dir) / f"step-{step:08d}"
        staged = self.run_dir / PUSH_DIR / folder.name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(folder, staged, copy_function=_link_or_copy)
        self._thread = threading.Thread(target=self._push, args=(staged, step), daemon=True)
        self._thread.start()

    def _push(self, staged: Path, step: int) -> None:
        try:
            into = hub.checkpoint_folder(step, self.every)
            self.pushed.append(
                (step, hub.push_checkpoint(staged, self.repo, step, path_in_repo=into))
            )
        except BaseException as err:  # raised on the training thread by wait()
            self._error = err
        finally:
            shutil.rmtree(staged, ignore_errors=True)
            try:
                staged.parent.rmdir()  # RUN_DIR/.hub-push, once empty
            except OSError:
                pass

    def wait(self) -> None:
        """Block until the upload in flight is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def attach(trainer: Any, cfg: Any) -> PushCheckpoints | None:
    """Install the push hook on a built Trainer when the config asks for it."""
    mode = getattr(cfg.train, "push_checkpoints", "never")
    if mode == "never":
        return None
    hook = PushCheckpoints(trainer.run_dir, cfg.train.push_to_hub, enabled=trainer.ctx.is_main,
                           every=mode == "all_checkpoints")  # fmt: skip
    trainer.hooks.add(hook)
    return hook


def fetch_for_resume(cfg: Any, timeout_s: float = 1800.0) -> Path | None:
    """train.resume_from=hub:...: put the Hub checkpoint into RUN_DIR/checkpoints unless the
    folder holds a valid checkpoint already. Returns the folder placed there, else None."""
    source = getattr(cfg.train, "resume_from", None)
    if not source:
        return None
    run_dir = Path(cfg.output_dir)
    own = checkpoint.latest_valid(run_dir)
    if own is not None:
        log.info("%s holds checkpoint %s: resuming from it, not from %s", run_dir, own.name, source)
        return None
    if not hub.is_main_process():  # the main process downloads; the run folder is shared
        deadline = time.monotonic() + timeout_s
        while (found := checkpoint.latest_valid(run_dir)) is None:
            if time.monotonic() > deadline:
                raise hub.HubError(f"waited {timeout_s:.0f} s for the main process to fetch "
                                   f"{source} into {run_dir}/checkpoints")  # fmt: skip
            time.sleep(1.0)
        return found
    tmp = run_dir / DOWNLOAD_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    folder = hub.download_checkpoint(source, tmp)
    problem = checkpoint.verify(folder)
    if problem is not None:
        raise hub.HubError(f"the checkpoint of {source} is not intact: {problem}")
    step = int(json.loads((folder / checkpoint.TRAINER_STATE).read_text())["step"])
    root = checkpoint.checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    shutil.rmtree(final, ignore_errors=True)  # an invalid one (latest_valid skipped it)
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    folder.rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched checkpoint step %d from %s into %s", step, source, final)
    return final
