"""DrizFinalStep: drizzle all chips of all exposures into the final product (``_drz``), with
weights, error propagation and context, as AstroDrizzle's final drizzle."""

from __future__ import annotations

import logging

import numpy as np

from ..algorithms.resample import ResampleInputError
from ..chipwork import DrizzleSettings, drizzle_all
from ..datamodels import ResampledModel
from ..datamodels.conversions import chip_label
from ._drizzle_common import (
    OutputGridMaker,
    apply_carried,
    carried_metadata,
    drizzled_bunit,
    input_member,
    mask_description,
    parse_fillval,
)
from .base import DrizStep

__all__ = ["DrizFinalStep"]

log = logging.getLogger(__name__)


class DrizFinalStep(DrizStep):
    """Drizzle every chip onto the output grid: science, weight, error and context.

    ``weight_type``: ``exptime`` (exposure time on good pixels), ``err`` (inverse variance
    from ERR, AstroDrizzle's ERR) or ``ivm`` (inverse variance without the sources' Poisson
    noise: VAR_RNOISE when present, as JWST, else sky + read noise, AstroDrizzle's IVM).
    Bad pixels: DQ bits outside ``good_bits``, the static mask, and cosmic rays (``crbit``).
    The error image is the standard error of the weighted mean (drizzle's squared-weight sums).
    """

    class_alias = "driz_final"

    spec = """
    weight_type = option('exptime', 'err', 'ivm', default=None)  # Input weighting (None: the preset's, else exptime)
    kernel = option('square', 'point', 'turbo', 'gaussian', 'lanczos2', 'lanczos3', default='square')  # Drizzle kernel
    pixfrac = float(default=1.0, min=0.001)  # Drop size as a fraction of the input pixel
    fillval = string(default='NaN')  # Value where no input contributes: NaN, a number, INDEF (0)
    good_bits = string(default=None)  # DQ bits treated as good ('4+8', '~4'; 'None': ignore DQ; None: the pipeline's good_bits, else '0')
    units = option('cps', 'counts', default='cps')  # Output per second or per total exposure
    crbit = integer(default=None)  # DQ value of CRs (None: 4096 for HST, OUTLIER+DO_NOT_USE JWST)
    context = boolean(default=True)  # Write the context image (one bit per input chip)
    compute_err = boolean(default=True)  # Propagate errors into an ERR image
    runs = integer(default=2, min=1)  # Runs of chips by position (partial accumulations), in parallel with processes
    rotation = float(default=None)  # Position angle of output +Y [deg], 0 = north up; None: first chip's
    pixel_scale = float(default=None)  # Output pixel scale [arcsec]; None: first chip's undistorted scale x ratio
    pixel_scale_ratio = float(default=1.0)  # Output/input pixel-scale ratio (ignored with pixel_scale)
    output_shape = int_list(min=2, max=2, default=None)  # Output shape [nx, ny]; None: covers every chip
    crval = float_list(min=2, max=2, default=None)  # RA, Dec [deg] of the reference pixel
    crpix = float_list(min=2, max=2, default=None)  # Reference pixel [x, y] (FITS, 1-based)
    refimage = string(default=None)  # Image (FITS/ASDF) whose WCS and shape define the grid
    stepsize = integer(default=10, min=1)  # Evaluate the WCS every stepsize pixels and interpolate
    max_pixels = integer(default=536870912, min=1)  # Largest output grid accepted [pixels] (2**29: 4 GiB for SCI+WHT)
    """  # noqa: E501
    builtin_defaults = {"weight_type": "exptime"}

    def process(self, input_data):
        """Drizzle every chip of every exposure into the final product.

        Parameters
        ----------
        input_data : ModelLibrary, str, list
            The chips, with their sky in ``meta.background`` and cosmic rays in DQ.

        Returns
        -------
        ResampledModel
            The ``_drz`` product: ``data`` (e-/s, or e- with ``units='counts'``; MJy/sr for
            surface brightness), ``wht``, ``err`` (standard error of the weighted mean) and
            ``con`` (context), with the inputs' header cards and per-input provenance.
        """
        library = self.prepare_library(input_data)
        grid = OutputGridMaker.from_step(self).make(library)
        log.info(
            "Final grid %d x %d at %.5f arcsec/pixel, kernel %s, pixfrac %g, weights %s",
            grid.shape[1], grid.shape[0], grid.pixel_scale, self.kernel, self.pixfrac,
            self.weight_type,
        )  # fmt: skip
        good_bits, crbit = self.inherited("good_bits", "0"), self.inherited("crbit") or "auto"
        settings = DrizzleSettings(
            kernel=self.kernel, pixfrac=self.pixfrac, fillval=parse_fillval(self.fillval),
            stepsize=self.stepsize, good_bits=good_bits, weight_type=self.weight_type,
            crbit=crbit, context=self.context, compute_err=self.compute_err,
        )  # fmt: skip
        with self.execution() as executor, library:
            drizzled = drizzle_all(executor, library, grid, settings, runs=self.runs)
            reference = library.borrow(0)
            library.shelve(reference, 0, modify=False)
            infos = [library.chip_info(index) for index in range(len(library))]
        for reason in drizzled.skipped:
            log.warning("%s: skipped", reason)
        if drizzled.product is None:
            raise ResampleInputError(None, "no chip could be drizzled onto the output grid")
        product, added = drizzled.product, drizzled.added
        labels = [label for label, _, _ in drizzled.chips]
        exposures = {}
        for _, group, times in drizzled.chips:
            exposures.setdefault(group, times)
        contributing = {group for label, group, _ in drizzled.chips if label in added}
        exposures = {g: times for g, times in exposures.items() if g in contributing}
        # context-bit order: bit i is chip i of the library
        mask = mask_description(good_bits, crbit=crbit)
        used = [info for info in infos if chip_label(info) in added]
        members = [input_member(info, mask) for info in used]
        detectors = {info.detector for info in used}
        return self._product(
            product, grid, labels, members, exposures, reference, library, detectors
        )

    def _product(self, product, grid, inputs, members, exposures, reference, library,
                 detectors):  # fmt: skip
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
            model.con = context  # 2-D up to 32 chips, as AstroDrizzle writes it
        meta = model.meta
        if reference.meta.instrument.detector:
            meta.instrument.detector = reference.meta.instrument.detector
        apply_carried(meta, carried_metadata(reference, grid.pixel_scale), detectors)
        meta.wcs = grid.wcs
        meta.product_type = "drz"
        meta.rootname = self.product_name(library)
        meta.filename = f"{meta.rootname}_drz.fits"
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
        resample.ndrizim = len(members)
        resample.inputs = inputs
        resample.members = members
        self.record_step_status(model)
        covered = np.isfinite(model.data) & (model.wht > 0)
        log.info(
            "Final product %s: %d x %d, %d chips of %d exposures, %.1f s, %.1f%% of pixels covered",
            meta.filename, grid.shape[1], grid.shape[0], len(members), len(exposures), texptime,
            100.0 * covered.mean(),
        )  # fmt: skip
        if self.save_results:
            self.save_product(model, self.product_name(library), "drz")
        return model
