"""The model section of a config: `model: {name: bert, preset: tiny, ...}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.config import Choice


@dataclass
class ModelConfig(Choice):
    kind: ClassVar[str] = "model"
    name: str = "bert"
