"""Objectives; importing this package registers every objective."""

from pipeline.objectives import cd, infonce, mlm, nce  # noqa: F401
