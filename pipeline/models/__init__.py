"""Model builders; importing this package registers every model."""

from pipeline.models import bert, energy  # noqa: F401
