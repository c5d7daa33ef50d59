"""CreateMedianStep: combine the single drizzled images into the median product (``_med``),
the clean model of the sky against which BlotCR finds cosmic rays."""

from __future__ import annotations

import glob
import logging
import re
from contextlib import ExitStack

import numpy as np
from astropy.io import fits

from ..algorithms.combine import StackCombiner
from ..algorithms.sections import ImageStack
from ..chipwork import combine_in_bands
from ..datamodels import ResampledModel, open_path
from ..exceptions import DrizzlepipeInputError
from ._drizzle_common import apply_carried, carried_metadata
from .base import DrizStep

__all__ = ["CreateMedianStep"]

log = logging.getLogger(__name__)

#: Fraction of the mean weight used when ``newmasks`` is off: only pixels without weight are bad.
_NO_WEIGHT_MASKPT = 1e-6


class CreateMedianStep(DrizStep):
    """Combine single drizzled images (list of models or ``_single`` files) into a median.

    Pixels whose single weight is below ``maskpt`` x the image's mean weight are masked
    (``newmasks``). Pixels without any good value are NaN in the median, so BlotCR leaves the
    chip pixels that map onto them unflagged.
    """

    class_alias = "create_median"

    spec = """
    combine_type = option('minmed', 'iminmed', 'median', 'imedian', 'mean', 'imean', 'sum', 'sigclip', default=None)  # Combination (None: the preset's, else minmed)
    maskpt = float(default=0.7, min=0.0)  # Mask pixels with weight below maskpt x mean weight
    nsigma = string(default='4 3')  # minmed significances of the two passes
    nlow = integer(default=0, min=0)  # Lowest good values rejected per pixel (not minmed)
    nhigh = integer(default=None, min=0)  # Highest good values rejected per pixel (not minmed; None: the preset's, else 0)
    lthresh = float(default=None)  # Values below this are bad (count rate)
    hthresh = float(default=None)  # Values at or above this are bad (count rate)
    grow = integer(default=1, min=0)  # minmed: radius of the second-pass box
    bufsize = float(default=1.0)  # MiB per input read at a time (results do not depend on it)
    newmasks = boolean(default=True)  # Mask low-weight pixels (else only pixels without weight)
    sigma_low = float(default=3.0)  # sigclip: lower clipping limit [sigma]
    sigma_high = float(default=3.0)  # sigclip: upper clipping limit [sigma]
    maxiters = integer(default=5, min=1)  # sigclip: clipping iterations
    """  # noqa: E501
    builtin_defaults = {"combine_type": "minmed", "nhigh": 0}

    def process(self, singles):
        """Combine the single images into the median.

        Parameters
        ----------
        singles : list of ResampledModel or str, or a glob
            DrizSeparate's products (models or ``_single`` files), on one grid.

        Returns
        -------
        ResampledModel
            The median (``combine_type``) in the singles' units; NaN where no single has a good
            value; ``wht`` the sum of the singles' weights.
        """
        if self.bufsize is not None and self.bufsize < 0:
            raise ValueError(f"bufsize must be >= 0 MiB, got {self.bufsize}")
        if self.combine_type in ("minmed", "iminmed") and self.nlow + self.nhigh > 0:
            log.info("nlow/nhigh are not used by %s", self.combine_type)
        with ExitStack() as stack:
            items = [_open_single(item, stack) for item in _expand(singles)]
            if len(items) < 2:
                raise DrizzlepipeInputError(
                    None, f"create_median needs at least two single images, got {len(items)}"
                )
            _check_same_grid(items)
            if self.combine_type in ("minmed", "iminmed") and len(items) > 5:
                log.warning(
                    "minmed with %d inputs is biased low (no correction for many trials); "
                    "consider combine_type='median' with nhigh=1",
                    len(items),
                )
            meta = [item["meta"] for item in items]
            weights = ImageStack([item["wht"] for item in items], name="weights")
            combiner = StackCombiner(
                ImageStack([item["sci"] for item in items]),
                combine_type=self.combine_type,
                nlow=self.nlow,
                nhigh=self.nhigh,
                lthresh=self.lthresh,
                hthresh=self.hthresh,
                nsigma=_parse_numbers(self.nsigma, "nsigma"),
                grow=self.grow,
                weights=weights,
                readnoise=[m["readnoise"] for m in meta],
                exptime=[m["exptime"] for m in meta],
                background=[m["sky"] for m in meta],
                sigma_low=self.sigma_low,
                sigma_high=self.sigma_high,
                maxiters=self.maxiters,
                fill_value=np.nan,
                maskpt=self.maskpt if self.newmasks else _NO_WEIGHT_MASKPT,
                bufsize=self.bufsize,
            )
            with self.execution() as executor:
                image, weight, n_empty = combine_in_bands(executor, combiner, weights)
            median = self._product(image, weight, items)
        npix = median.data.size
        log.info(
            "Median of %d images (%s): %d of %d pixels without a good value",
            len(items), self.combine_type, n_empty, npix,
        )  # fmt: skip
        if n_empty == npix:
            log.warning("The median rejected every pixel")
        if self.save_results:
            self.save_product(median, self.product_name(), "med")
        return median

    def _product(self, image, weight, items):
        first = items[0]["meta"]
        median = ResampledModel(data=image, wht=weight)
        apply_carried(median.meta, first["carried"])
        median.meta.wcs = first["wcs"]
        median.meta.product_type = "median"
        median.meta.rootname = self.product_name()
        median.meta.filename = f"{median.meta.rootname}_med.fits"
        median.meta.bunit = first["bunit"]
        median.meta.units = first["units"]
        median.meta.resample.combine_type = self.combine_type
        median.meta.resample.inputs = [item["meta"]["filename"] for item in items]
        median.meta.resample.texptime = float(sum(item["meta"]["exptime"] for item in items))
        self.record_step_status(median)
        return median


def _parse_numbers(text, name):
    """``"4 3"`` / ``"4,3"`` -> [4.0, 3.0]; the combine engine checks how many it needs."""
    try:
        return [float(v) for v in re.split(r"[,;\s]+", str(text).strip()) if v]
    except ValueError:
        raise ValueError(f"{name} must be numbers separated by spaces, got {text!r}") from None


def _expand(singles):
    if isinstance(singles, (str,)):
        matches = sorted(glob.glob(singles))
        if not matches:
            raise DrizzlepipeInputError(singles, "no single images match")
        return matches
    if isinstance(singles, ResampledModel):
        return [singles]
    return list(singles)


def _open_single(item, stack):
    """Arrays (or FITS sections, read block by block) and metadata of one single image."""
    if isinstance(item, ResampledModel):
        model = item
        sci, wht = model.data, model.wht
    else:
        path = str(item)
        if path.lower().endswith(".fits"):
            hdulist = stack.enter_context(fits.open(path, memmap=False))
            for name in ("SCI", "WHT"):
                if name not in hdulist:
                    raise DrizzlepipeInputError(path, "not a single drizzled image", name)
            model = open_path(path)  # metadata (and WCS); arrays are read by sections below
            sci, wht = hdulist["SCI"].section, hdulist["WHT"].section
        else:
            model = open_path(path)
            sci, wht = model.data, model.wht
    if not isinstance(model, ResampledModel) or model.wht is None:
        raise DrizzlepipeInputError(item, "not a single drizzled image (no WHT)")
    resample = model.meta.resample
    exptime = model.meta.exposure.exptime if model.meta.exposure.hasattr("exptime") else None
    if not exptime:
        raise DrizzlepipeInputError(model.meta.filename, "single image without exposure time")
    meta = {
        "filename": model.meta.filename,
        "wcs": model.meta.wcs,
        "shape": tuple(model.data.shape),
        "exptime": float(exptime),
        "readnoise": float(resample.readnoise or 0.0) if resample.hasattr("readnoise") else 0.0,
        "sky": float(resample.sky or 0.0) if resample.hasattr("sky") else 0.0,
        "bunit": model.meta.bunit,
        "units": model.meta.units,
        # a single's photometry is already in its (electron) units
        "carried": carried_metadata(model),
    }
    return {"sci": sci, "wht": wht, "meta": meta}


def _check_same_grid(items):
    """All singles must be on one grid: same shape and the same sky at a few pixels."""
    first = items[0]["meta"]
    ny, nx = first["shape"]
    x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2])
    y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2])
    reference = np.array(first["wcs"].pixel_to_world_values(x, y))
    for item in items[1:]:
        meta = item["meta"]
        if meta["shape"] != first["shape"]:
            raise DrizzlepipeInputError(
                meta["filename"], f"shape {meta['shape']} differs from {first['shape']}"
            )
        sky = np.array(meta["wcs"].pixel_to_world_values(x, y))
        # 1e-3 arcsec: far below a pixel, far above the round-off of a saved WCS
        if np.max(np.abs(sky - reference)) * 3600 > 1e-3:
            raise DrizzlepipeInputError(
                meta["filename"], f"on a different grid than {first['filename']}"
            )
