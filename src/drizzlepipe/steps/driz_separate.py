"""DrizSeparateStep: drizzle every exposure (all its chips) onto the common grid, one ``single``
product per exposure, as AstroDrizzle's driz_separate; the singles feed CreateMedian."""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

import numpy as np

from ..algorithms.resample import ResampleInputError
from ..chipwork import DrizzleSettings, drizzle_exposures
from ..datamodels import ResampledModel
from ..datamodels.conversions import chip_iscale, chip_label
from ._drizzle_common import (
    OutputGridMaker,
    apply_carried,
    carried_metadata,
    drizzled_bunit,
    exposure_product_root,
    input_member,
    mask_description,
    parse_fillval,
)
from .base import DrizStep

__all__ = ["DrizSeparateStep"]

log = logging.getLogger(__name__)


class DrizSeparateStep(DrizStep):
    """Drizzle each exposure separately onto the common output grid (``_single`` products).

    Weights are the exposure time on good pixels (DQ with ``good_bits`` and the static mask);
    the sky is subtracted on the fly and data are converted to a rate per output pixel.
    Returns one single per exposure, in library group order: a :class:`ResampledModel`, or the
    path of its file when it was saved (``save_results``) or the library lives on disk.
    """

    class_alias = "driz_separate"

    spec = """
    kernel = option('square', 'point', 'turbo', 'gaussian', 'lanczos2', 'lanczos3', default=None)  # Drizzle kernel (None: the preset's, else turbo)
    pixfrac = float(default=1.0, min=0.001)  # Drop size as a fraction of the input pixel
    fillval = string(default=None)  # Value where no input contributes: None/INDEF (0), NaN, number
    good_bits = string(default=None)  # DQ bits treated as good ('4+8', '~4'; 'None': ignore DQ; None: the pipeline's good_bits, else '0')
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
    builtin_defaults = {"kernel": "turbo"}

    def process(self, input_data):
        """Drizzle every exposure onto the common grid.

        Parameters
        ----------
        input_data : ModelLibrary, str, list
            The chips, with their sky in ``meta.background`` (subtracted on the fly).

        Returns
        -------
        list of ResampledModel or str
            One single per exposure that reached the grid, in library order: the model, or
            the path of its file when it was saved (``save_results``, or an on-disk library).
            Data are a rate per output pixel (e-/s; MJy/sr for surface brightness), weights
            the exposure time on good pixels.
        """
        library = self.prepare_library(input_data)
        grid = OutputGridMaker.from_step(self).make(library)
        log.info(
            "Output grid %d x %d at %.5f arcsec/pixel, kernel %s, pixfrac %g",
            grid.shape[1], grid.shape[0], grid.pixel_scale, self.kernel, self.pixfrac,
        )  # fmt: skip
        settings = DrizzleSettings(
            kernel=self.kernel, pixfrac=self.pixfrac, fillval=parse_fillval(self.fillval),
            stepsize=self.stepsize, good_bits=self.inherited("good_bits", "0"),
        )  # fmt: skip
        groups = list(library.group_indices.values())
        # On disk (in_memory=False) the singles go to files that CreateMedian reads by row
        # sections, so memory holds only the exposures being drizzled, not all the singles.
        # Inside the pipeline they go to its scratch directory; a step run alone saves them.
        save, spill = self._saves(library)
        singles = []
        with self.execution() as executor, library:
            exposures = [self._exposure(library, indices, grid) for indices in groups]
            drizzled = drizzle_exposures(
                executor, library, groups, grid, settings, keep=not (library.on_disk or save)
            )
            with closing(drizzled):  # the chips go back to the library even after a failure
                for number, (exposure, result) in enumerate(zip(exposures, drizzled), start=1):
                    single = self._finish(result, exposure, grid, number, len(groups))
                    if single is None:
                        continue
                    root = exposure_product_root(single.meta.group_id)
                    if save:
                        single = self.save_product(single, root, "single")
                    elif spill is not None:
                        single = single.save(str(spill / f"{root}_single.fits"))
                    singles.append(single)
        if not singles:
            raise ResampleInputError(None, "no exposure overlaps the output grid")
        log.info("%d single images of %d exposures", len(singles), len(groups))
        return singles

    def _saves(self, library):
        """(save, spill): singles are saved as products, or spilled to the pipeline's scratch
        directory (an on-disk run that does not save them)."""
        scratch = getattr(self.parent, "scratch_dir", None) if self.parent is not None else None
        spill = Path(scratch) if library.on_disk and scratch and not self.save_results else None
        return self.save_results or (library.on_disk and spill is None), spill

    def _finish(self, result, exposure, grid, number, total):
        """The single of one drizzled exposure, or None (with a warning) when it has no data."""
        for reason in result.skipped:
            log.warning("%s: skipped", reason)
        if result.product is None:
            why = "none of its chips could be drizzled" if result.skipped else "no overlap"
            log.warning("Exposure %s: %s, no single", exposure["group_id"], why)
            return None
        single = self._single(result, exposure, grid)
        log.debug("Single %d/%d: %s", number, total, single.meta.filename)
        return single

    def _exposure(self, library, indices, grid):
        """What the single of one exposure carries: its first chip's metadata, the input
        table, and minmed's noise model (rms read noise over the chips in electrons, as
        AstroDrizzle, and the minimum sky over the chips in electrons per *output* pixel;
        AstroDrizzle uses the sky per input pixel, a units quirk)."""
        infos = [library.chip_info(index) for index in indices]
        mask = mask_description(self.inherited("good_bits", "0"))
        skies = []
        for info in infos:
            # electrons per output pixel: an input pixel's sky times the area ratio
            sky = float(info.sky or 0.0) * info.to_electrons * chip_iscale(info, grid.pixel_scale)
            if info.units == "countrate":
                sky *= float(info.exptime)
            skies.append(sky)
        first = library.borrow(indices[0])
        try:
            exposure = _single_metadata(first, grid.pixel_scale)
        finally:
            library.shelve(first, indices[0], modify=False)
        exposure["detectors"] = {info.detector for info in infos}
        exposure["members"] = [(chip_label(info), input_member(info, mask)) for info in infos]
        exposure["readnoise"] = float(np.sqrt(np.mean([info.readnoise**2 for info in infos])))
        exposure["sky"] = float(min(skies))
        return exposure

    def _single(self, result, exposure, grid):
        product = result.product
        single = ResampledModel(data=product.data, wht=product.wht)
        apply_carried(single.meta, exposure["carried"], exposure["detectors"])
        single.meta.wcs = grid.wcs
        single.meta.product_type = "single"
        single.meta.rootname = exposure_product_root(exposure["group_id"])
        single.meta.filename = f"{single.meta.rootname}_single.fits"
        single.meta.group_id = exposure["group_id"]
        single.meta.exposure.exptime = exposure["exptime"]
        single.meta.bunit = exposure["bunit"]
        single.meta.units = "countrate" if exposure["per_pixel"] else "surface_brightness"
        if exposure["telescope"]:
            single.meta.telescope = exposure["telescope"]
        resample = single.meta.resample
        resample.kernel = self.kernel
        resample.pixfrac = self.pixfrac
        resample.weight_type = "exptime"
        resample.pixel_scale = grid.pixel_scale
        resample.ndrizim = len(result.added)
        resample.inputs = list(result.added)
        added = set(result.added)
        resample.members = [member for label, member in exposure["members"] if label in added]
        resample.texptime = exposure["exptime"]
        resample.readnoise = exposure["readnoise"]
        resample.sky = exposure["sky"]
        self.record_step_status(single)
        return single


def _single_metadata(model, output_scale):
    return {
        # taken now: the chip is shelved (on disk: closed) when the single is made
        "carried": carried_metadata(model, output_scale),
        "filename": model.meta.filename,
        "group_id": model.meta.group_id,
        "exptime": float(model.meta.exposure.exptime),
        "bunit": drizzled_bunit(model),
        "per_pixel": model.meta.units != "surface_brightness",
        "telescope": model.meta.telescope,
    }
