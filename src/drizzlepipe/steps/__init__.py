"""stpipe Steps: thin orchestration over drizzlepipe.algorithms."""

from .base import DrizStep
from .blot_cr import BlotCRStep
from .create_median import CreateMedianStep
from .driz_final import DrizFinalStep
from .driz_separate import DrizSeparateStep

__all__ = ["DrizStep", "DrizSeparateStep", "CreateMedianStep", "BlotCRStep", "DrizFinalStep"]
