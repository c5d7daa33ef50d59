"""stpipe Steps: thin orchestration over drizzlepipe.algorithms."""

from .base import DrizStep

__all__ = ["DrizStep"]
