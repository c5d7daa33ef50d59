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
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..algorithms.blot import blot_intensity_scale
from ..algorithms.blotcr import ChipScaling, CosmicRayTest
from ..algorithms.crdetect import parse_pair, summarize_cr_mask
from ..algorithms.grid import pixel_scale
from ..algorithms.resample import pixel_area_ratio
from ..chipwork import check_chips, prepare_median, write_copies_in_workers
from ..datamodels import ResampledModel, dqflags, open_path
from ..datamodels.conversions import bad_pixels, chip_label, data_with_sky, electrons_factor
from ..datamodels.writers import plan_copies, write_chip_arrays, write_copies
from ..exceptions import DrizzlepipeInputError
from ._drizzle_common import exposure_product_root
from .base import DrizStep

__all__ = ["BlotCRStep"]

log = logging.getLogger(__name__)

#: A chip with more of its pixels flagged than this gets a warning: HST exposures of up to an
#: orbit collect about 1-3% (WFC3/UVIS 1.5% in 1000 s); more points at a sky, alignment or noise
#: problem rather than at cosmic rays.
MANY_COSMIC_RAYS = 0.05


class BlotCRStep(DrizStep):
    """Find cosmic rays in every chip by comparison with the blotted median.

    Call as ``BlotCRStep.call(inputs, median=...)`` or ``step.run(library, median_model)``.
    Returns the library with ``crbit`` set in each chip's DQ and the per-chip counts in
    ``meta.cosmic_rays``.
    """

    class_alias = "blot_cr"

    spec = """
    median = string(default=None)  # Median product (FITS/ASDF) when not given as 2nd argument
    interp = option('nearest', 'linear', 'poly3', 'poly5', 'lan3', 'lan5', default=None)  # Blot interpolant (None: the preset's, else poly5)
    sinscl = float(default=1.0)  # Sinc scale (kept for AstroDrizzle compatibility; unused)
    snr = string(default=None)  # Signal-to-noise thresholds of the two passes (None: the preset's, else '3.5 3.0')
    scale = string(default=None)  # Multipliers of the blot derivative of the two passes (None: the preset's, else '1.2 0.7')
    noise = option('auto', 'detector', 'err', default=None)  # Noise: gain/read noise, ERR, or auto (ERR for surface brightness; None: the preset's, else auto)
    grow = integer(default=1, min=1)  # Width of the box grown around each cosmic ray (1 = none)
    ctegrow = integer(default=0, min=0)  # Pixels flagged along the readout direction
    crbit = integer(default=None)  # DQ value of cosmic rays (None: 4096 HST, OUTLIER+DO_NOT_USE JWST)
    stepsize = integer(default=10, min=1)  # WCS evaluation step of the pixel map
    save_blot = boolean(default=False)  # Write <root>_blot.fits (blotted median, chip units)
    save_crmask = boolean(default=False)  # Write <root>_crmask.fits (1 = cosmic ray)
    corr = boolean(default=False)  # Write <root>_crclean.fits (cosmic rays replaced by the blot)
    median_noise = boolean(default=True)  # Count the median's own noise (False: as AstroDrizzle)
    seed_flagged = boolean(default=False)  # Let pixels flagged bad (DQ outside good_bits, static mask) seed cosmic rays in their neighbours, as AstroDrizzle (False: a hot or saturated pixel's excess opens no search around it)
    good_bits = string(default=None)  # DQ bits treated as good: pixels with other bits cannot seed cosmic rays (None: the pipeline's, else '0')
    """  # noqa: E501
    builtin_defaults = {"interp": "poly5", "snr": "3.5 3.0", "scale": "1.2 0.7", "noise": "auto"}

    @classmethod
    def call(cls, *args, median=None, **kwargs):
        """Run the step on new instance, as stpipe's ``Step.call``; ``median`` may be the median
        model itself (a :class:`~drizzlepipe.datamodels.ResampledModel`) as well as the path
        of a median product (the ``median`` parameter)."""
        if median is not None and not isinstance(median, (str, Path)):
            if len(args) != 1:
                raise TypeError("give the median either as the second input or as median=")
            return super().call(args[0], median, **kwargs)
        if median is not None:
            kwargs["median"] = str(median)
        return super().call(*args, **kwargs)

    def process(self, input_data, median_model=None):
        """Flag the cosmic rays of every chip.

        Parameters
        ----------
        input_data : ModelLibrary, str, list
            The chips (anything :class:`~drizzlepipe.datamodels.ModelLibrary` accepts), with
            their sky in ``meta.background``.
        median_model : ResampledModel, optional
            The median (CreateMedian's product); else the file the ``median`` parameter names.

        Returns
        -------
        ModelLibrary
            The chips with ``crbit`` set in their DQ at the cosmic rays (the flags of an earlier
            run of this step cleared first) and ``meta.cosmic_rays`` filled.
        """
        test = CosmicRayTest(
            snr=parse_pair(self.snr, "snr"), scale=parse_pair(self.scale, "scale"),
            grow=self.grow, ctegrow=self.ctegrow, interp=self.interp, sinscl=self.sinscl,
            stepsize=self.stepsize,
        )  # fmt: skip
        median = self._median(median_model)
        median_scale = pixel_scale(median.meta.wcs, median.data.shape)
        # the singles' total weight behind every median pixel, for the median's own noise
        weight = median.wht if self.median_noise else None
        library = self.prepare_library(input_data)
        totals = {"chips": 0, "flagged": 0, "pixels": 0, "unflagged": [], "copies": 0}
        keep_blots = self.save_blot or self.corr
        with self.execution() as executor, library:
            prepared = prepare_median(executor, median.data, median.meta.wcs, weight=weight)
            # results a set of whole files at a time (one exposure each, except STIS files of
            # several imsets), so that a file's _crf copy is written once, complete
            units = library.file_groups
            roots = library.copy_roots() if self.save_results or self.corr else {}
            checked = check_chips(
                executor, library, units, prepared,
                lambda model: (self._scaling(model, median_scale), self._test(model, test),
                               keep_blots, self._no_seed(model)),
                few=library.on_disk or keep_blots,
            )  # fmt: skip
            with closing(checked):  # the chips go back to the library even after a failure
                for group, models, results in checked:
                    for index, model in models.items():
                        self._record(model, results[index], totals)
                    self._save_products(group, models, results, executor, roots, totals)
        if self.save_results:
            folder = Path(self.product_path("x", "crf")).parent
            log.info("%d _crf copies in %s", totals["copies"], folder)
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

    def _test(self, model, test):
        """The detection of one chip: ``noise='auto'`` is ERR for surface brightness, the
        detector model otherwise."""
        label, units = chip_label(model), model.meta.units
        noise = self.noise
        if noise == "auto":
            noise = "err" if units == "surface_brightness" else "detector"
        if units == "surface_brightness" and noise == "detector":
            raise DrizzlepipeInputError(
                label, "surface-brightness data need noise='err' (no gain/read-noise model)"
            )
        if noise == "err" and model.meta.has_err is False:
            raise DrizzlepipeInputError(label, "noise='err' but the chip has no ERR array")
        return replace(test, noise=noise)

    def _no_seed(self, model):
        """Pixels flagged bad before this step (DQ bits outside ``good_bits``, the static
        mask): their excess over the blot is a hot, warm or saturated pixel, not a cosmic ray,
        so it does not open the second pass to their neighbours. None with ``seed_flagged``."""
        if self.seed_flagged:
            return None
        clear_own_flags(model)  # an earlier run's cosmic rays are not "flagged before"
        return bad_pixels(model, self.inherited("good_bits", "0"))

    def _scaling(self, model, median_scale):
        """The median in the chip's units (DN stay DN), with the chip's sky to add back (data
        and blot are compared with the sky in both: it is part of the noise), and the chip's
        units in electrons (Poisson noise needs counts, not rates or DN)."""
        units = model.meta.units
        exptime = float(model.meta.exposure.exptime)
        to_electrons = electrons_factor(model)
        chip_scale = model.meta.detector.pixel_scale or pixel_scale(model.meta.wcs, model.shape)
        area = pixel_area_ratio(median_scale, chip_scale, per_pixel=units != "surface_brightness")
        chip_units = "counts" if units == "counts" else "cps"
        iscale = blot_intensity_scale(exptime=exptime, chip_units=chip_units, pixel_area_ratio=area)
        return ChipScaling(
            blot_iscale=iscale / to_electrons,
            sky=float(model.meta.background.level or 0.0),
            to_counts=to_electrons * (exptime if chip_units == "cps" else 1.0),
            exptime=exptime,
            readnoise=float(model.meta.detector.readnoise or 0.0),
            readout_direction=int(model.meta.detector.readout_direction or 0),
        )

    def _record(self, model, result, totals):
        """Set ``crbit`` in the chip's DQ and record the counts; the flags an earlier run of
        this step set are cleared first, so that running it again (with other parameters)
        gives what one run on fresh inputs gives."""
        label = chip_label(model)
        for message in result.warnings:
            log.warning("%s: %s", label, message)
        clear_own_flags(model)
        totals["chips"] += 1
        totals["pixels"] += int(np.prod(model.shape))
        if result.packed_mask is None:
            totals["unflagged"].append(label)
            return
        cr_mask = result.mask()
        crbit = self.inherited("crbit") or dqflags.default_crbit(model.meta.dq_convention or "hst")
        # counted on pixels the input had not flagged already (a bad column differs from the
        # blot too, and is left out of the products anyway)
        flagged_before = dqflags.any_bits_set(model.dq, ~int(crbit))
        set_own_flags(model, cr_mask, crbit)
        summary = summarize_cr_mask(cr_mask, excluded=flagged_before)
        totals["flagged"] += int(summary.n_flagged)
        model.meta.cosmic_rays.npix = int(summary.n_flagged)
        model.meta.cosmic_rays.fraction = float(summary.fraction)
        self.record_step_status(model)
        log.debug(
            "%s: %d cosmic-ray pixels (%.3f%%)", label, summary.n_flagged, 100 * summary.fraction
        )
        if summary.fraction > MANY_COSMIC_RAYS:
            log.warning(
                "%s: %.1f%% of the pixels flagged as cosmic rays (more than %.0f%%): check the "
                "sky, the alignment of the exposures and the noise (gain, read noise)",
                label, 100 * summary.fraction, 100 * MANY_COSMIC_RAYS,
            )  # fmt: skip

    def _save_products(self, units, models, results, executor, roots, totals):
        """Write the products asked for: per file the ``_crf`` and ``_crclean`` copies, per
        exposure the ``_blot`` and ``_crmask`` files."""
        if self.save_results:
            writes = []
            for unit in units:
                chips = [models[i] for i in unit]
                for positions, path in plan_copies(
                    chips, lambda source: self.product_path(roots[source], "crf")
                ):
                    writes.append(([chips[k] for k in positions], str(path)))
            write_copies_in_workers(executor, writes)
            for _, path in writes:
                log.debug("Wrote %s", path)
            totals["copies"] += len(writes)
        for unit in units:
            exposures = {}
            for index in unit:
                exposures.setdefault(models[index].meta.group_id, []).append(index)
            for members in exposures.values():
                self._save_exposure([models[i] for i in members], [results[i] for i in members])
            if self.corr:
                self._save_cleaned([models[i] for i in unit], [results[i] for i in unit], roots)

    def _save_exposure(self, models, results):
        root = exposure_product_root(models[0].meta.group_id)
        chips = [int(m.meta.chip or 1) for m in models]
        # each chip's sky (its units, included in the blot) as in the _crf copies
        headers = [
            fits.Header(
                [
                    (
                        "MDRIZSKY",
                        float(m.meta.background.level or 0.0),
                        "Sky value computed by drizzlepipe",
                    )
                ]
            )
            for m in models
        ]
        if self.save_blot:
            write_chip_arrays(
                [(chip, result.blotted) for chip, result in zip(chips, results)],
                self.product_path(root, "blot"),
                extname="BLOT",
                headers=headers,
            )
        if self.save_crmask:
            write_chip_arrays(
                [(chip, result.mask()) for chip, result in zip(chips, results)],
                self.product_path(root, "crmask"),
                extname="CRMASK",
                headers=headers,
                dtype=np.uint8,
            )

    def _save_cleaned(self, models, results, roots):
        cleaned = []
        for model, result in zip(models, results):
            replace = result.mask() & np.isfinite(result.blotted)
            # the blot includes the sky: so must the data it replaces
            data = data_with_sky(model)
            cleaned.append(np.where(replace, result.blotted, data).astype(np.float32))
        write_copies(
            models,
            lambda source: self.product_path(roots[source], "crclean"),
            data_override=cleaned,
        )


def clear_own_flags(model):
    """Clear the DQ bits a previous BlotCR run set in ``model`` (the pixels in ``cr_flags``,
    the value in ``meta.cosmic_rays.crbit``); bits the input had already are left alone."""
    if model.cr_flags is None or not model.meta.cosmic_rays.crbit:
        return
    pixels = np.unravel_index(model.cr_flags, model.dq.shape)
    model.dq[pixels] &= np.uint32(~int(model.meta.cosmic_rays.crbit) & 0xFFFFFFFF)
    del model.cr_flags
    for name in ("crbit", "npix", "fraction"):
        if model.meta.cosmic_rays.hasattr(name):
            delattr(model.meta.cosmic_rays, name)


def set_own_flags(model, cr_mask, crbit):
    """OR ``crbit`` into the DQ at ``cr_mask`` and remember the pixels that did not have it
    (:func:`clear_own_flags` undoes exactly this)."""
    crbit = np.uint32(crbit)
    flagged = np.flatnonzero(cr_mask)
    pixels = np.unravel_index(flagged, model.dq.shape)
    model.cr_flags = flagged[(model.dq[pixels] & crbit) != crbit].astype(np.int64)
    model.dq[pixels] |= crbit
    model.meta.cosmic_rays.crbit = int(crbit)
