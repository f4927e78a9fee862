"""The error every model source raises for a model it cannot provide."""

from __future__ import annotations


class ModelSourceError(ValueError):
    """A missing, truncated or unsupported model: reported at start, before any engine runs."""
