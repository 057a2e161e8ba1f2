"""Objectives; importing this package registers every objective."""

from pipeline.objectives import mlm  # noqa: F401
