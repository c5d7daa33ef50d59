"""What the DrizSeparate, CreateMedian, BlotCR and DrizFinal steps share: the output grid from
the step parameters, and the metadata their products carry (header cards, photometry, the
per-input table).

Units: every chip is drizzled as a *rate per output pixel*: electrons/s for counts and count
rates (DN are multiplied by the gain), unchanged for surface brightness (MJy/sr), which is
independent of pixel area (:mod:`drizzlepipe.datamodels.conversions`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS as FitsWCS

from .. import __version__
from ..algorithms.grid import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    OutputGridTooLargeError,
    default_output_grid,
    grid_from_reference,
    pixel_scale,
)
from ..datamodels import open_path
from ..datamodels.conversions import electrons_factor
from ..datamodels.readers._common import celestial_wcs
from ..exceptions import DrizzlepipeInputError
from ..execution import Executor

__all__ = [
    "OutputGridMaker",
    "apply_carried",
    "carried_metadata",
    "exposure_product_root",
    "input_member",
    "mask_description",
]

log = logging.getLogger(__name__)


def parse_fillval(value):
    """``None``/``"INDEF"`` -> 0.0 (nothing filled: untouched pixels stay 0), ``"NaN"`` -> NaN,
    numbers -> float."""
    if value is None:
        return 0.0
    text = str(value).strip()
    if text.upper() in ("", "NONE", "INDEF"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"fillval must be a number, 'NaN' or 'INDEF', got {value!r}") from None


def _refimage_grid(path, max_pixels):
    opened = open_path(path) if str(path).lower().endswith(".asdf") else None
    if opened is not None:
        return grid_from_reference(opened.meta.wcs, opened.data.shape, max_pixels=max_pixels)
    try:
        with fits.open(path) as hdulist:
            for index, hdu in enumerate(hdulist):
                if hdu.header.get("NAXIS", 0) == 2 and "CTYPE1" in hdu.header:
                    wcs = celestial_wcs(hdu.header, path, str(index), hdulist)
                    shape = (hdu.header["NAXIS2"], hdu.header["NAXIS1"])
                    return grid_from_reference(wcs, shape, max_pixels=max_pixels)
    except OSError as exc:
        raise DrizzlepipeInputError(path, f"refimage cannot be read ({exc})") from None
    raise DrizzlepipeInputError(path, "refimage has no 2-D image with a celestial WCS")


@dataclass
class OutputGridMaker:
    """The grid parameters of a drizzle step."""

    rotation: float | None = None
    pixel_scale: float | None = None
    pixel_scale_ratio: float = 1.0
    output_shape: tuple[int, int] | None = None  # [nx, ny] as given by the user
    crval: tuple[float, float] | None = None
    crpix: tuple[float, float] | None = None
    refimage: str | None = None
    max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    step_name: str = "driz_final"

    @classmethod
    def from_step(cls, step):
        """Read the output-grid parameters of ``step`` (rotation ... max_pixels, as in its spec)."""
        return cls(
            max_pixels=step.max_pixels,
            step_name=step.class_alias,
            rotation=step.rotation,
            pixel_scale=step.pixel_scale,
            pixel_scale_ratio=step.pixel_scale_ratio,
            output_shape=step.output_shape,
            crval=step.crval,
            crpix=step.crpix,
            refimage=step.refimage,
        )

    def make(self, library):
        """Build the grid for the chips of ``library`` (reads only their WCS and shapes).

        Raises
        ------
        OutputGridTooLargeError
            With the parameter to change (``steps.<step>.max_pixels``) in the message.
        """
        try:
            grid = self._make(library)
        except OutputGridTooLargeError as error:
            raise OutputGridTooLargeError(
                f"{self.step_name}: {error} (parameter steps.{self.step_name}.max_pixels)"
            ) from None
        # The WCS as every process and every saved product will see it (astropy's WCS goes
        # through a FITS header in a pickle and in ASDF, which rounds its last digits once):
        # in memory or on disk, every task then works with the same numbers.
        return replace(grid, wcs=Executor.portable(grid.wcs))

    def _make(self, library):
        if self.refimage:
            return _refimage_grid(self.refimage, self.max_pixels)
        with library:
            chips = [library.chip_info(index) for index in range(len(library))]
        wcs_list = [chip.wcs for chip in chips]
        shapes = [chip.shape for chip in chips]
        reference_scale = chips[0].pixel_scale
        shape = None if self.output_shape is None else (self.output_shape[1], self.output_shape[0])
        return default_output_grid(
            wcs_list,
            shapes,
            rotation=self.rotation,
            pixel_scale=self.pixel_scale,
            pixel_scale_ratio=self.pixel_scale_ratio if self.pixel_scale is None else 1.0,
            output_shape=shape,
            crval=self.crval,
            crpix=self.crpix,
            reference_scale=reference_scale,
            max_pixels=self.max_pixels,
        )


def drizzled_bunit(model, units="cps"):
    """BUNIT of a drizzled product made from chips like ``model``."""
    if model.meta.units == "surface_brightness":
        return model.meta.bunit
    return "ELECTRONS/S" if units == "cps" else "ELECTRONS"


def exposure_product_root(group_id):
    """File-name root of a per-exposure product (``_single``, ``_blot``, ``_crmask``): the
    exposure's name (the file's root name for HST and plain FITS, ``<root>_sci<n>`` for a STIS
    imset, the exposure group for JWST), made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(group_id))


def _distortion(wcs):
    """What describes a chip's distortion, AstroDrizzle's ``COEF`` (``SIP``, ``NPOL``...)."""
    if not isinstance(wcs, FitsWCS):
        return type(wcs).__name__.lower()
    parts = [name for name, present in (
        ("SIP", wcs.sip is not None), ("NPOL", wcs.cpdis1 is not None or wcs.cpdis2 is not None),
        ("D2IM", wcs.det2im1 is not None or wcs.det2im2 is not None),
    ) if present]  # fmt: skip
    return "+".join(parts) or "none"


def mask_description(good_bits, *, use_static=True, crbit=None):
    """Which pixels a drizzle step left out, for the ``D%03dMASK`` keyword."""
    parts = [f"DQ bits outside {good_bits}" if good_bits not in (None, "None") else "no DQ"]
    if use_static:
        parts.append("static mask")
    if crbit:
        parts.append("cosmic rays" if crbit == "auto" else f"cosmic rays ({crbit})")
    return ", ".join(parts)


def input_member(info, mask):
    """One row of a product's input table (``meta.resample.members``, written as the
    ``D%03d*`` keywords and ``HDRTAB``) from a chip's :class:`ChipInfo`."""
    extension = info.extension or f"SCI,{info.chip or 1}"
    extname, _, extver = extension.partition(",")
    return {
        "data": f"{info.filename}[{extension.lower()}]",
        "file": info.filename,
        "extname": extname,
        "extver": int(extver) if extver.strip().isdigit() else 1,
        "rootname": info.rootname,
        "filter": info.filter,
        "exptime": info.exptime,
        "expstart": info.start,
        "expend": info.end,
        "sky": float(info.sky or 0.0),
        "pixel_scale": info.pixel_scale or pixel_scale(info.wcs, info.shape),
        "distortion": _distortion(info.wcs),
        "mask": mask,
        "weight_scale": 1.0,
        "software": f"drizzlepipe {__version__} (drizzle {_drizzle_version()})",
        "wcskey": "",
    }


@lru_cache(maxsize=1)
def _drizzle_version():
    try:
        return version("drizzle")
    except PackageNotFoundError:  # pragma: no cover - drizzle is a dependency
        return "?"


def carried_metadata(model, output_scale=None):
    """What a product made from ``model`` (its first input chip) carries of it: header cards,
    root name and photometry, in the product's units (data in DN are drizzled as electrons,
    so PHOTFLAM and PHOTFNU, per DN/s, are divided by the gain; JWST pixel areas become the
    output pixel's, ``output_scale`` [arcsec]). Apply with :func:`apply_carried`."""
    meta = model.meta
    photometry = dict(meta.photometry.instance) if meta.hasattr("photometry") else {}
    # a resampled product (a single for the median) is in electrons already
    factor = electrons_factor(model) if meta.hasattr("detector") else 1.0
    for name in ("photflam", "photfnu"):
        if name in photometry:
            photometry[name] = float(photometry[name]) / factor
    if output_scale is not None and ("pixar_sr" in photometry or "pixar_a2" in photometry):
        photometry["pixar_a2"] = float(output_scale) ** 2
        photometry["pixar_sr"] = float(output_scale) ** 2 * (np.pi / 180.0 / 3600.0) ** 2
    cards = meta.header_cards.instance if meta.hasattr("header_cards") else {}
    return {"header_cards": dict(cards or {}), "photometry": photometry}


def apply_carried(product_meta, carried, detectors=()):
    """Set what :func:`carried_metadata` returned in a product's metadata; a product of chips
    of several ``detectors`` (JWST NRCB1 and NRCB2...) says ``DETECTOR = 'MULTIPLE'``."""
    cards = dict(carried["header_cards"])
    if len(set(detectors)) > 1:
        product_meta.instrument.detector = "MULTIPLE"
        if "DETECTOR" in cards:
            cards["DETECTOR"] = "MULTIPLE"
    if cards:
        product_meta.header_cards = cards
    for name, value in carried["photometry"].items():
        setattr(product_meta.photometry, name, value)
