"""The RunContext (pipeline/protocols.py) the engine hands to objectives: config, run folder,
process layout and tokenizer, on top of the run's Accelerator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator


@dataclass
class EngineContext:
    cfg: Any  # the run config (protocols.RunConfig); objectives read their own sections
    run_dir: Path
    accelerator: Accelerator
    tokenizer: Any = None

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process does the work (and fills the caches) while the others wait; then the
        main process of every other node does it where its cache lacks it (nodes with their own
        disks), while the rest of its node waits; then everyone reads. On a shared filesystem
        the second round finds the caches filled (atomic writes: the first one wins)."""
        with self.accelerator.main_process_first(), self.accelerator.local_main_process_first():
            yield

    @property
    def plots_dir(self) -> Path:
        path = self.run_dir / "plots"
        path.mkdir(parents=True, exist_ok=True)
        return path
