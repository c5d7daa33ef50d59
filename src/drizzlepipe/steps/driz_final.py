"""DrizFinalStep: drizzle all chips of all exposures into the final product (``_drz``), with
weights, error propagation and context, as AstroDrizzle's final drizzle."""

from __future__ import annotations

import logging

import numpy as np

from ..algorithms.resample import (
    DrizzleAccumulator,
    ResampleInputError,
    build_weight,
)
from ..datamodels import ResampledModel, dqflags
from ._drizzle_common import (
    DRIZZLE_KERNELS,
    GRID_SPEC,
    OutputGridMaker,
    drizzled_bunit,
    parse_fillval,
    prepare_chip,
)
from .base import DrizStep

__all__ = ["DrizFinalStep"]

log = logging.getLogger(__name__)


class DrizFinalStep(DrizStep):
    """Drizzle every chip onto the output grid: science, weight, error and context.

    ``weight_type``: ``exptime`` (exposure time on good pixels), ``err`` (inverse variance
    from ERR) or ``ivm`` (inverse variance from VAR_POISSON + VAR_RNOISE when present, else ERR).
    Bad pixels: DQ bits outside ``good_bits``, the static mask, and cosmic rays (``crbit``).
    The error image is the standard error of the weighted mean (drizzle's squared-weight sums).
    """

    class_alias = "driz_final"

    spec = (
        f"""
    weight_type = option('exptime', 'err', 'ivm', default='exptime')  # Input weighting
    kernel = {DRIZZLE_KERNELS}, default='square')  # Drizzle kernel
    pixfrac = float(default=1.0, min=0.001)  # Drop size as a fraction of the input pixel
    fillval = string(default='NaN')  # Value where no input contributes: NaN, a number, INDEF (0)
    good_bits = string(default='0')  # DQ bits treated as good ('4+8', '~4', None = ignore DQ)
    units = option('cps', 'counts', default='cps')  # Output per second or per total exposure
    crbit = integer(default=None)  # DQ value of CRs (None: 4096 for HST, OUTLIER+DO_NOT_USE JWST)
    context = boolean(default=True)  # Write the context image (one bit per input chip)
    compute_err = boolean(default=True)  # Propagate errors into an ERR image
    """
        + GRID_SPEC
    )

    def process(self, input_data):
        library = self.prepare_library(input_data)
        grid = OutputGridMaker.from_step(self).make(library)
        accumulator = DrizzleAccumulator(
            grid.shape,
            kernel=self.kernel,
            fillval=parse_fillval(self.fillval),
            enable_context=self.context,
            enable_err=self.compute_err,
            n_inputs=len(library),
        )
        log.info(
            "Final grid %d x %d at %.5f arcsec/pixel, kernel %s, pixfrac %g, weights %s",
            grid.shape[1], grid.shape[0], grid.pixel_scale, self.kernel, self.pixfrac,
            self.weight_type,
        )  # fmt: skip
        inputs, exposures, reference = [], {}, None
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                try:
                    label = self._add(accumulator, model, grid, index)
                except ResampleInputError as error:
                    log.warning("%s: skipped", error)
                    label = None
                finally:
                    library.shelve(model, index, modify=False)
                if label is None:
                    continue
                inputs.append(label)
                exposures.setdefault(model.meta.group_id, _exposure_times(model))
                reference = reference or model
                log.info("Drizzled chip %d/%d: %s", index + 1, len(library), label)
        if not inputs:
            raise ResampleInputError(None, "no chip could be drizzled onto the output grid")
        return self._product(accumulator.finalize(), grid, inputs, exposures, reference, library)

    def _add(self, accumulator, model, grid, index):
        crbit = self.crbit or dqflags.default_crbit(model.meta.dq_convention or "hst")
        chip = prepare_chip(
            model,
            grid,
            good_bits=self.good_bits,
            stepsize=self.stepsize,
            crbit=crbit,
            with_variance=self.compute_err or self.weight_type != "exptime",
        )
        weight = None
        if self.weight_type == "err":
            weight = build_weight(
                "err", exptime=chip.exptime, bad_mask=chip.bad_mask, data=chip.data,
                err=np.sqrt(chip.variance), in_units=chip.in_units, iscale=chip.iscale,
            )  # fmt: skip
        elif self.weight_type == "ivm":
            with np.errstate(divide="ignore"):
                ivm = np.where(chip.variance > 0, 1.0 / chip.variance, 0.0)
            weight = build_weight(
                "ivm", exptime=chip.exptime, bad_mask=chip.bad_mask, data=chip.data,
                ivm=ivm, in_units=chip.in_units, iscale=chip.iscale,
            )  # fmt: skip
        accumulator.add_chip(
            chip.data,
            chip.pixmap,
            exptime=chip.exptime,
            weight=weight,
            bad_mask=chip.bad_mask,
            variance=chip.variance if self.compute_err else None,
            in_units=chip.in_units,
            iscale=chip.iscale,
            pixel_scale_ratio=chip.pixel_scale_ratio,
            pixfrac=self.pixfrac,
            context_id=index,
            label=chip.label,
        )
        return chip.label

    def _product(self, product, grid, inputs, exposures, reference, library):
        texptime = float(sum(e["exptime"] for e in exposures.values()))
        data, err = product.data, product.err
        if self.units == "counts" and reference.meta.units != "surface_brightness":
            data *= np.float32(texptime)
            if err is not None:
                err *= np.float32(texptime)
        model = ResampledModel(data=data, wht=product.wht)
        if err is not None:
            model.err = err
        if product.context is not None:
            context = product.context
            model.con = context if context.ndim == 3 else context[np.newaxis]
        meta = model.meta
        meta.wcs = grid.wcs
        meta.product_type = "drz"
        meta.filename = f"{self.product_name(library)}_drz.fits"
        meta.bunit = drizzled_bunit(reference, self.units)
        meta.units = (
            "surface_brightness"
            if reference.meta.units == "surface_brightness"
            else ("countrate" if self.units == "cps" else "counts")
        )
        if reference.meta.telescope:
            meta.telescope = reference.meta.telescope
        if reference.meta.instrument.name:
            meta.instrument.name = reference.meta.instrument.name
        if reference.meta.instrument.filter:
            meta.instrument.filter = reference.meta.instrument.filter
        meta.exposure.exptime = texptime
        starts = [e["start"] for e in exposures.values() if e["start"] is not None]
        ends = [e["end"] for e in exposures.values() if e["end"] is not None]
        if starts:
            meta.exposure.start = min(starts)
        if ends:
            meta.exposure.end = max(ends)
        resample = meta.resample
        resample.kernel = self.kernel
        resample.pixfrac = self.pixfrac
        resample.weight_type = self.weight_type
        resample.fillval = str(self.fillval)
        resample.pixel_scale = grid.pixel_scale
        resample.texptime = texptime
        resample.ndrizim = len(inputs)
        resample.inputs = inputs
        self.record_step_status(model)
        covered = np.isfinite(model.data) & (model.wht > 0)
        log.info(
            "Final product %s: %d x %d, %d chips of %d exposures, %.1f s, %.1f%% of pixels covered",
            meta.filename, grid.shape[1], grid.shape[0], len(inputs), len(exposures), texptime,
            100.0 * covered.mean(),
        )  # fmt: skip
        if self.save_results:
            model.save(self.product_path(self.product_name(library), "drz"))
        return model


def _exposure_times(model):
    exposure = model.meta.exposure
    return {
        "exptime": float(exposure.exptime),
        "start": exposure.start if exposure.hasattr("start") else None,
        "end": exposure.end if exposure.hasattr("end") else None,
    }
