"""BlotCRStep: blot the median back onto every chip, find cosmic rays, flag them in DQ.

For each chip: the median (a rate per output pixel) is interpolated at the chip's pixel
centres, converted to the chip's units (exposure time, pixel-area ratio, gain) with its sky
added back, and compared with the chip's data by the two-pass test of
:func:`drizzlepipe.algorithms.crdetect.detect_cosmic_rays`. Cosmic rays get ``crbit`` in the
chip's DQ in the library, never in the input file; ``save_results`` writes ``<root>_crf.fits``
copies of the exposures in their own layout.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..algorithms.blot import blot, blot_intensity_scale, fill_holes
from ..algorithms.crdetect import (
    CTEGrowthSkippedWarning,
    detect_cosmic_rays,
    parse_pair,
    summarize_cr_mask,
)
from ..algorithms.grid import pixel_scale
from ..algorithms.pixmap import compute_pixmap
from ..algorithms.resample import pixel_area_ratio
from ..datamodels import ResampledModel, dqflags, open_path
from ..datamodels.writers import write_chip_arrays, write_exposure_copy
from ..exceptions import DrizzlepipeInputError
from ._drizzle_common import chip_label, electrons_factor
from .base import DrizStep, exposure_root

__all__ = ["BlotCRStep"]

log = logging.getLogger(__name__)


class BlotCRStep(DrizStep):
    """Find cosmic rays in every chip by comparison with the blotted median.

    Call as ``BlotCRStep.call(inputs, median=...)`` or ``step.run(library, median_model)``.
    Returns the library with ``crbit`` set in each chip's DQ and the per-chip counts in
    ``meta.cosmic_rays``.
    """

    class_alias = "blot_cr"

    spec = """
    median = string(default=None)  # Median product (FITS/ASDF) when not given as 2nd argument
    interp = option('nearest', 'linear', 'poly3', 'poly5', 'lan3', 'lan5', default='poly5')  # Blot interpolant
    sinscl = float(default=1.0)  # Sinc scale (kept for AstroDrizzle compatibility; unused)
    snr = string(default='3.5 3.0')  # Signal-to-noise thresholds of the two passes
    scale = string(default='1.2 0.7')  # Multipliers of the blot derivative of the two passes
    noise = option('detector', 'err', default='detector')  # Noise model: gain/read noise, or ERR
    grow = integer(default=1, min=1)  # Width of the box grown around each cosmic ray (1 = none)
    ctegrow = integer(default=0, min=0)  # Pixels flagged along the readout direction
    crbit = integer(default=None)  # DQ value of cosmic rays (None: 4096 HST, OUTLIER+DO_NOT_USE JWST)
    stepsize = integer(default=10, min=1)  # WCS evaluation step of the pixel map
    save_blot = boolean(default=False)  # Write <root>_blot.fits (blotted median, chip units)
    save_crmask = boolean(default=False)  # Write <root>_crmask.fits (1 = cosmic ray)
    corr = boolean(default=False)  # Write <root>_crclean.fits (cosmic rays replaced by the blot)
    """  # noqa: E501

    def process(self, input_data, median_model=None):
        snr = parse_pair(self.snr, "snr")
        scale = parse_pair(self.scale, "scale")
        median = self._median(median_model)
        median_scale = pixel_scale(median.meta.wcs, median.data.shape)
        filled, holes = fill_holes(median.data)
        library = self.prepare_library(input_data)
        totals = {"chips": 0, "flagged": 0, "pixels": 0, "unflagged": []}
        with library:
            for indices in library.group_indices.values():
                models = [library.borrow(index) for index in indices]
                try:
                    side = [
                        self._flag_chip(m, median, filled, holes, median_scale, snr, scale)
                        for m in models
                    ]
                    for model, (npix, _, _) in zip(models, side):
                        totals["chips"] += 1
                        totals["flagged"] += npix
                        totals["pixels"] += model.data.size
                        if npix < 0:
                            totals["unflagged"].append(chip_label(model))
                    self._save_exposure(models, side)
                finally:
                    for model, index in zip(models, indices):
                        library.shelve(model, index, modify=True)
        fraction = totals["flagged"] / max(totals["pixels"], 1)
        log.info(
            "Cosmic rays: %d pixels (%.3f%%) in %d chips",
            totals["flagged"], 100 * fraction, totals["chips"],
        )  # fmt: skip
        if totals["unflagged"]:
            log.warning(
                "Not checked for cosmic rays (no overlap with the median): %s",
                ", ".join(totals["unflagged"]),
            )
        return library

    def _median(self, median_model):
        if median_model is None:
            if not self.median:
                raise DrizzlepipeInputError(
                    None, "blot_cr needs the median product (second argument or median=)"
                )
            median_model = open_path(self.median)
        if not isinstance(median_model, ResampledModel) or median_model.data is None:
            raise DrizzlepipeInputError(
                getattr(median_model.meta, "filename", self.median), "not a median product"
            )
        if not median_model.meta.hasattr("wcs") or median_model.meta.wcs is None:
            raise DrizzlepipeInputError(median_model.meta.filename, "median product has no WCS")
        return median_model

    def _flag_chip(self, model, median, filled, holes, median_scale, snr, scale):
        """Detect cosmic rays in one chip; returns (npix, blot in chip units, mask)."""
        label = chip_label(model)
        units = model.meta.units
        if units == "surface_brightness" and self.noise == "detector":
            raise DrizzlepipeInputError(
                label, "surface-brightness data need noise='err' (no gain/read-noise model)"
            )
        if self.noise == "err" and model.meta.has_err is False:
            raise DrizzlepipeInputError(label, "noise='err' but the chip has no ERR array")
        exptime = float(model.meta.exposure.exptime)
        to_electrons = electrons_factor(model)
        chip_scale = model.meta.detector.pixel_scale or pixel_scale(
            model.meta.wcs, model.data.shape
        )
        area = pixel_area_ratio(median_scale, chip_scale, per_pixel=units != "surface_brightness")
        chip_units = "counts" if units == "counts" else "cps"
        pixmap = compute_pixmap(
            model.meta.wcs, model.data.shape, median.meta.wcs, stepsize=self.stepsize
        )
        # The blot in the chip's own units (DN stay DN), with the sky added back.
        iscale = blot_intensity_scale(exptime=exptime, chip_units=chip_units, pixel_area_ratio=area)
        blotted = blot(
            filled,
            pixmap,
            interp=self.interp,
            sinscl=self.sinscl,
            iscale=iscale / to_electrons,
            fill_value=np.nan,
        )
        if holes is not None:
            # Chip pixels whose nearest median pixel had no data are not checked.
            no_data = blot(holes, pixmap, interp="nearest", fill_value=1.0) > 0.5
            blotted[no_data] = np.nan
        del pixmap
        sky = float(model.meta.background.level or 0.0)
        data = model.data
        if model.meta.background.subtracted:
            data = data + np.float32(sky)  # compare with the sky in both: it is signal noise
        blotted += np.float32(sky)
        if not np.isfinite(blotted).any():
            return -1, blotted, np.zeros(data.shape, bool)

        # Detection in electrons (counts): Poisson noise needs counts, not rates or DN.
        to_counts = to_electrons * (exptime if chip_units == "cps" else 1.0)
        err = None
        if self.noise == "err":
            err = model.err * np.float32(to_counts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CTEGrowthSkippedWarning)
            cr_mask = detect_cosmic_rays(
                data * np.float32(to_counts),
                blotted * np.float32(to_counts),
                noise=self.noise,
                gain=1.0,
                readnoise=float(model.meta.detector.readnoise or 0.0),
                err=err,
                snr=snr,
                scale=scale,
                grow=self.grow,
                ctegrow=self.ctegrow,
                readout_direction=int(model.meta.detector.readout_direction or 0),
            )
        for warning in caught:
            log.warning("%s: %s", label, warning.message)

        crbit = self.crbit or dqflags.default_crbit(model.meta.dq_convention or "hst")
        model.dq[cr_mask] |= np.uint32(crbit)
        summary = summarize_cr_mask(cr_mask)
        model.meta.cosmic_rays.npix = int(summary.n_flagged)
        model.meta.cosmic_rays.fraction = float(summary.fraction)
        self.record_step_status(model)
        log.info(
            "%s: %d cosmic-ray pixels (%.3f%%)", label, summary.n_flagged, 100 * summary.fraction
        )
        return int(summary.n_flagged), blotted, cr_mask

    def _save_exposure(self, models, side):
        root = exposure_root(models[0].meta.filename)
        chips = [int(m.meta.chip or 1) for m in models]
        if self.save_results:
            write_exposure_copy(models, self.product_path(root, "crf"))
        if self.save_blot:
            write_chip_arrays(
                [(c, blotted) for c, (_, blotted, _) in zip(chips, side)],
                self.product_path(root, "blot"),
                extname="BLOT",
            )
        if self.save_crmask:
            write_chip_arrays(
                [(c, mask) for c, (_, _, mask) in zip(chips, side)],
                self.product_path(root, "crmask"),
                extname="CRMASK",
                dtype=np.uint8,
            )
        if self.corr:
            cleaned = [
                np.where(mask & np.isfinite(blotted), blotted, model.data).astype(np.float32)
                for model, (_, blotted, mask) in zip(models, side)
            ]
            write_exposure_copy(models, self.product_path(root, "crclean"), data_override=cleaned)
