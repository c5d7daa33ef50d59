"""stpipe Steps: thin orchestration over drizzlepipe.algorithms."""

from .base import DrizStep
from .blot_cr import BlotCRStep
from .create_median import CreateMedianStep
from .driz_final import DrizFinalStep
from .driz_separate import DrizSeparateStep
from .sky_sub import SkySubStep
from .static_mask import StaticMaskStep

__all__ = [
    "DrizStep",
    "StaticMaskStep",
    "SkySubStep",
    "DrizSeparateStep",
    "CreateMedianStep",
    "BlotCRStep",
    "DrizFinalStep",
]
