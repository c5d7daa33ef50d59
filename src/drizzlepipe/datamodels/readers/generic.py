"""Reader for plain FITS images: the primary HDU or the first image HDU with a celestial WCS.

Exposure time comes from ``EXPTIME``, ``EXPOSURE``, ``EXP_TIME``, ``ITIME`` or ``TEXPTIME``, units
from ``BUNIT``; either can be stated by the user instead (``exptime=``, ``units=``). Optional
``ERR`` and ``DQ`` (or ``MASK``) extensions of the same shape are used when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel
from ._common import celestial_wcs, exposure_time, first_keyword, image_array, units_from

__all__ = ["read_plain_fits"]

_EXPTIME_KEYS = ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME", "TEXPTIME")


def _science_hdu(hdulist, path):
    for index, hdu in enumerate(hdulist):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) == 2:
            return index, hdu
    raise DrizzlepipeInputError(path, "no 2-D image in the primary or any image extension")


def read_plain_fits(hdulist, path, *, units=None, exptime=None, electrons=True):
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
    electrons : bool
        With ``units`` stated: True if counts/rates are electrons, False if DN.
    """
    path = Path(path)
    index, hdu = _science_hdu(hdulist, path)
    ext = "PRIMARY" if index == 0 else str(hdu.header.get("EXTNAME", index))
    primary = hdulist[0].header
    headers = (hdu.header, primary)
    data = image_array(hdu, path, ext, np.float32)
    shape = data.shape
    wcs = celestial_wcs(hdu.header, path, ext, hdulist)
    wcs.pixel_shape = (shape[1], shape[0])
    exp = exposure_time(headers, path, ext, _EXPTIME_KEYS, exptime)
    kind, in_electrons, bunit = units_from(
        first_keyword(headers, ("BUNIT",)), path, ext, units, electrons
    )

    err, has_err = np.zeros(shape, np.float32), False
    dq = np.zeros(shape, np.uint32)
    if "ERR" in hdulist:
        err, has_err = image_array(hdulist["ERR"], path, "ERR", np.float32, shape), True
    for name in ("DQ", "MASK"):
        if name in hdulist:
            dq = image_array(hdulist[name], path, name, np.uint32, shape)
            break

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
    gain = first_keyword(headers, ("GAIN", "EGAIN", "CCDGAIN"))
    readnoise = first_keyword(headers, ("RDNOISE", "READNOIS", "RON"))
    meta.detector.gain = float(gain) if gain is not None else 1.0
    meta.detector.readnoise = float(readnoise) if readnoise is not None else 0.0
    meta.detector.readout_direction = 0
    meta.dq_convention = "hst"
    meta.has_err = has_err
    meta.background.level = 0.0  # a header sky is used only on request (SkySub user_keyword)
    meta.background.subtracted = False
    meta.group_id = path.name.rsplit(".", 1)[0]
    meta.source.path = str(path.resolve())
    meta.source.format = "fits"
    meta.source.extension = ext
    return model
