"""stpipe Pipelines composing the drizzlepipe steps."""

from .base import DrizPipeline

__all__ = ["DrizPipeline"]
