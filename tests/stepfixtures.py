"""A minimal concrete step used to exercise the DrizStep base class in tests."""

from __future__ import annotations

import logging

from drizzlepipe.steps.base import DrizStep

log = logging.getLogger("drizzlepipe.tests")


class ChipMeanStep(DrizStep):
    """Record each chip's mean data value in ``meta.background.level`` (a test-only step)."""

    class_alias = "chip_mean"

    spec = """
    scale = float(default=1.0)  # multiply the mean by this
    """

    def process(self, init):
        library = self.prepare_library(init)
        with library:
            for index, model in enumerate(library):
                model.meta.background.level = float(model.data.mean()) * self.scale
                log.info("chip %d mean %.3f", index, model.meta.background.level)
                library.shelve(model, index)
        return library
