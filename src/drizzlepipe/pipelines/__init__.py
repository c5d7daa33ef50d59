"""stpipe Pipelines composing the drizzlepipe steps."""

from .base import DrizPipeline
from .drizzle_pipeline import DrizzlePipeline

__all__ = ["DrizPipeline", "DrizzlePipeline"]
