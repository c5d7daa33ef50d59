"""DrizSeparateStep: drizzle every exposure (all its chips) onto the common grid, one ``single``
product per exposure, as AstroDrizzle's driz_separate; the singles feed CreateMedian."""

from __future__ import annotations

import logging

import numpy as np

from ..algorithms.resample import DrizzleAccumulator, NoOverlapError, ResampleInputError
from ..datamodels import ResampledModel
from ._drizzle_common import (
    DRIZZLE_KERNELS,
    GRID_SPEC,
    OutputGridMaker,
    drizzled_bunit,
    electrons_factor,
    parse_fillval,
    prepare_chip,
)
from .base import DrizStep, exposure_root

__all__ = ["DrizSeparateStep"]

log = logging.getLogger(__name__)


class DrizSeparateStep(DrizStep):
    """Drizzle each exposure separately onto the common output grid (``_single`` products).

    Weights are the exposure time on good pixels (DQ with ``good_bits`` and the static mask);
    the sky is subtracted on the fly and data are converted to a rate per output pixel.
    Returns a list of :class:`ResampledModel`, one per exposure, in library group order.
    """

    class_alias = "driz_separate"

    spec = (
        f"""
    kernel = {DRIZZLE_KERNELS}, default='turbo')  # Drizzle kernel
    pixfrac = float(default=1.0, min=0.001)  # Drop size as a fraction of the input pixel
    fillval = string(default=None)  # Value where no input contributes: None/INDEF (0), NaN, number
    good_bits = string(default='0')  # DQ bits treated as good ('4+8', '~4', None = ignore DQ)
    """
        + GRID_SPEC
    )

    def process(self, input_data):
        library = self.prepare_library(input_data)
        grid = OutputGridMaker.from_step(self).make(library)
        fillval = parse_fillval(self.fillval)
        log.info(
            "Output grid %d x %d at %.5f arcsec/pixel, kernel %s, pixfrac %g",
            grid.shape[1], grid.shape[0], grid.pixel_scale, self.kernel, self.pixfrac,
        )  # fmt: skip
        singles = []
        groups = library.group_indices
        for number, (group_id, indices) in enumerate(groups.items(), start=1):
            single = self._drizzle_exposure(library, indices, grid, fillval)
            if single is None:
                log.warning("Exposure %s does not overlap the output grid: no single", group_id)
                continue
            log.info("Single %d/%d: %s", number, len(groups), single.meta.filename)
            if self.save_results:
                single.save(self.product_path(exposure_root(single.meta.filename), "single"))
            singles.append(single)
        if not singles:
            raise ResampleInputError(None, "no exposure overlaps the output grid")
        return singles

    def _drizzle_exposure(self, library, indices, grid, fillval):
        accumulator = DrizzleAccumulator(
            grid.shape, kernel=self.kernel, fillval=fillval, enable_context=False, enable_err=False
        )
        inputs, first, readnoise2, skies = [], None, [], []
        with library:
            for index in indices:
                model = library.borrow(index)
                try:
                    chip = prepare_chip(
                        model, grid, good_bits=self.good_bits, stepsize=self.stepsize
                    )
                    accumulator.add_chip(
                        chip.data,
                        chip.pixmap,
                        exptime=chip.exptime,
                        bad_mask=chip.bad_mask,
                        in_units=chip.in_units,
                        iscale=chip.iscale,
                        pixel_scale_ratio=chip.pixel_scale_ratio,
                        pixfrac=self.pixfrac,
                        label=chip.label,
                    )
                    inputs.append(chip.label)
                    factor = electrons_factor(model)
                    readnoise2.append(float(model.meta.detector.readnoise or 0.0) ** 2)
                    # per output pixel: the sky of an input pixel times the area ratio
                    skies.append(float(model.meta.background.level or 0.0) * factor * chip.iscale)
                    if first is None:
                        first = _single_metadata(model)
                except NoOverlapError as error:
                    log.warning("%s: skipped", error)
                except ResampleInputError as error:
                    log.warning("%s: skipped", error)
                finally:
                    library.shelve(model, index, modify=False)
        if first is None:
            return None
        product = accumulator.finalize()
        single = ResampledModel(data=product.data, wht=product.wht)
        single.meta.wcs = grid.wcs
        single.meta.product_type = "single"
        single.meta.filename = f"{exposure_root(first['filename'])}_single.fits"
        single.meta.group_id = first["group_id"]
        single.meta.exposure.exptime = first["exptime"]
        single.meta.bunit = first["bunit"]
        single.meta.units = "countrate" if first["per_pixel"] else "surface_brightness"
        for key in ("telescope",):
            if first[key]:
                setattr(single.meta, key, first[key])
        single.meta.resample.kernel = self.kernel
        single.meta.resample.pixfrac = self.pixfrac
        single.meta.resample.weight_type = "exptime"
        single.meta.resample.pixel_scale = grid.pixel_scale
        single.meta.resample.ndrizim = len(inputs)
        single.meta.resample.inputs = inputs
        single.meta.resample.texptime = first["exptime"]
        # minmed's noise model needs these per exposure: rms read noise over the chips
        # (electrons, as AstroDrizzle) and the minimum sky over the chips in electrons per
        # *output* pixel (AstroDrizzle uses the sky per input pixel, a units quirk).
        single.meta.resample.readnoise = float(np.sqrt(np.mean(readnoise2)))
        single.meta.resample.sky = float(min(skies))
        self.record_step_status(single)
        return single


def _single_metadata(model):
    return {
        "filename": model.meta.filename,
        "group_id": model.meta.group_id,
        "exptime": float(model.meta.exposure.exptime),
        "bunit": drizzled_bunit(model),
        "per_pixel": model.meta.units != "surface_brightness",
        "telescope": model.meta.telescope,
    }
