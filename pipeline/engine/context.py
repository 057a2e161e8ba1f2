"""What an objective may see of the run: config, run folder, process layout, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator


@dataclass
class RunContext:
    cfg: Any
    run_dir: Path
    accelerator: Accelerator
    tokenizer: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

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
    def device(self):
        return self.accelerator.device

    def main_first(self):
        """Main process does the work (and fills caches) while the others wait, then reuse it."""
        return self.accelerator.main_process_first()

    @property
    def plots_dir(self) -> Path:
        path = self.run_dir / "plots"
        path.mkdir(parents=True, exist_ok=True)
        return path
