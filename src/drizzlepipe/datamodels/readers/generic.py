"""Reader for plain FITS images: the primary HDU or the first image HDU with a celestial WCS.

Exposure time comes from ``EXPTIME``, ``EXPOSURE``, ``EXP_TIME``, ``ITIME`` or ``TEXPTIME``, units
from ``BUNIT``, gain and read noise from ``GAIN``/``EGAIN``/``CCDGAIN`` and
``RDNOISE``/``READNOIS``/``RON``; each can be stated by the user instead (``exptime=``,
``units=``, ``gain=``, ``readnoise=``). Optional ``ERR`` and ``DQ`` (or ``MASK``) extensions of the
same shape are used when present. A gain or read noise found nowhere is 1 or 0: the library
warns about it once per file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel
from ..naming import exposure_root
from ._common import (
    carried_cards,
    celestial_wcs,
    clear_bits,
    exposure_time,
    first_keyword,
    image_array,
    photometry_from,
    reading,
    units_from,
)
from .instruments import generic_detector

__all__ = ["read_plain_fits", "science_hdu"]

_EXPTIME_KEYS = ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME", "TEXPTIME")


def science_hdu(hdulist, path):
    """``(index, HDU)`` of the image a plain FITS file holds: the first 2-D image HDU."""
    for index, hdu in enumerate(hdulist):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) == 2:
            return index, hdu
    raise DrizzlepipeInputError(path, "no 2-D image in the primary or any image extension")


def read_plain_fits(hdulist, path, *, units=None, exptime=None, gain=None, readnoise=None,
                    resetbits=None):  # fmt: skip
    """Read a plain FITS image into an :class:`ImageModel`.

    Parameters
    ----------
    hdulist : astropy.io.fits.HDUList
        The open file (read-only).
    path : Path
        The file, for messages and provenance.
    units : str, optional
        ``counts``, ``countrate`` or ``surface_brightness`` when BUNIT is absent or wrong.
    exptime : float, optional
        Exposure time [s] when no keyword holds it.
    gain, readnoise : float, optional
        Gain [e-/DN] and read noise [e-] overriding the header's; with ``units`` stated, a
        gain makes counts and rates DN (see :func:`._common.units_from`).
    resetbits : int or str, optional
        DQ bits cleared in memory (the file is not touched).
    """
    path = Path(path)
    index, hdu = science_hdu(hdulist, path)
    ext = "PRIMARY" if index == 0 else str(hdu.header.get("EXTNAME", index))
    primary = hdulist[0].header
    headers = (hdu.header, primary)
    with reading(path, ext):
        data = image_array(hdu, path, ext, np.float32)
    shape = data.shape
    wcs = celestial_wcs(hdu.header, path, ext, hdulist)
    wcs.pixel_shape = (shape[1], shape[0])
    exp = exposure_time(headers, path, ext, _EXPTIME_KEYS, exptime)
    kind, in_electrons, bunit = units_from(
        first_keyword(headers, ("BUNIT",)), path, ext, units, gain
    )

    err, has_err = np.zeros(shape, np.float32), False
    dq = np.zeros(shape, np.uint32)
    with reading(path):
        if "ERR" in hdulist:
            err, has_err = image_array(hdulist["ERR"], path, "ERR", np.float32, shape), True
        for name in ("DQ", "MASK"):
            if name in hdulist:
                dq = image_array(hdulist[name], path, name, np.uint32, shape)
                break
    clear_bits(dq, resetbits)

    model = ImageModel(data=data, dq=dq, err=err)
    meta = model.meta
    meta.filename = path.name
    if (telescope := first_keyword(headers, ("TELESCOP",))) is not None:
        meta.telescope = str(telescope)
    if (instrument := first_keyword(headers, ("INSTRUME",))) is not None:
        meta.instrument.name = str(instrument)
    if (detector := first_keyword(headers, ("DETECTOR",))) is not None:
        meta.instrument.detector = str(detector)
    if (filt := first_keyword(headers, ("FILTER",))) is not None:
        meta.instrument.filter = str(filt)
    meta.chip = 1
    meta.wcs = wcs
    meta.exposure.exptime = exp
    meta.units = kind
    meta.bunit = bunit
    meta.detector.in_electrons = bool(in_electrons) if in_electrons is not None else True
    chip_detector = generic_detector(headers, gain=gain, readnoise=readnoise)
    meta.detector.gain = chip_detector.gain
    meta.detector.readnoise = chip_detector.readnoise
    meta.detector.readout_direction = 0
    meta.dq_convention = "hst"
    meta.has_err = has_err
    meta.background.level = 0.0  # a header sky is used only on request (SkySub user_keyword)
    meta.background.subtracted = False
    for name, value in photometry_from(headers).items():
        setattr(meta.photometry, name, value)
    meta.header_cards = carried_cards(primary)
    meta.rootname = exposure_root(path.name)
    meta.group_id = exposure_root(path.name)
    meta.source.path = str(path.resolve())
    meta.source.format = "fits"
    meta.source.extension = ext
    return model
