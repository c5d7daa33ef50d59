"""The stpipe base class of drizzlepipe's pipelines."""

from __future__ import annotations

from stpipe import Pipeline

from ..steps.base import DrizStep

__all__ = ["DrizPipeline"]


class DrizPipeline(Pipeline, DrizStep):
    """Base class of drizzlepipe pipelines: stpipe ``Pipeline`` with :class:`DrizStep`'s
    opener, CRDS-free parameter lookup, loggers and suffix handling."""

    spec = """
    output_ext = string(default='.fits')  # File type of saved products (.fits or .asdf)
    """
