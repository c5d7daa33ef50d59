"""Reader for HST FLT/FLC multi-extension files: one :class:`ImageModel` per SCI extension.

Units come from BUNIT (``ELECTRONS`` -> counts in electrons, ``ELECTRONS/S`` -> count rate,
``COUNTS`` -> counts in DN); gain and read noise are the means of the non-zero ``ATODGN*`` and
``READNSE*`` keywords, as AstroDrizzle does; the WCS is read by astropy.wcs from the SCI header
and the file, so SIP, D2IM and NPOL lookup-table distortions are all included. The readout
(CTE) direction follows drizzlepac's instrument classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel
from ._common import (
    celestial_wcs,
    exposure_time,
    first_keyword,
    image_array,
    mean_nonzero,
    units_from,
)

__all__ = ["is_hst", "sci_extvers", "read_hst_chip", "readout_direction"]

_AMPS = "ABCD"


def is_hst(primary_header):
    """True for files whose primary header says TELESCOP = 'HST'."""
    return str(primary_header.get("TELESCOP", "")).strip().upper() == "HST"


def sci_extvers(hdulist):
    """EXTVERs of the SCI image extensions, in file order."""
    versions = []
    for hdu in hdulist[1:]:
        if str(hdu.header.get("EXTNAME", "")).strip().upper() == "SCI":
            versions.append(int(hdu.header.get("EXTVER", 1)))
    return versions


def readout_direction(instrument, detector, extver, ccdamp=""):
    """Charge-transfer direction along y for a chip (+1, -1, or 0 when there is none).

    ACS/WFC and WFC3/UVIS: SCI,1 reads out towards -y, SCI,2 towards +y; ACS/HRC: amps A/B
    +1, C/D -1; detectors without CTE trails along columns (SBC, IR, MAMA) 0.
    """
    instrument = str(instrument).upper()
    detector = str(detector).upper()
    if (instrument, detector) in (("ACS", "WFC"), ("WFC3", "UVIS")):
        return -1 if extver == 1 else 1
    if (instrument, detector) == ("ACS", "HRC"):
        amp = str(ccdamp).strip().upper()[:1]
        if amp in ("A", "B"):
            return 1
        if amp in ("C", "D"):
            return -1
    return 0


def _filter_name(primary):
    names = []
    for key in ("FILTER", "FILTER1", "FILTER2"):
        value = str(primary.get(key, "")).strip()
        if value and not value.upper().startswith("CLEAR") and value.upper() != "N/A":
            names.append(value)
    return ";".join(names) if names else None


def read_hst_chip(hdulist, path, extver, *, units=None, exptime=None):
    """Read SCI/ERR/DQ of one chip of an HST exposure into an :class:`ImageModel`.

    Parameters
    ----------
    hdulist : astropy.io.fits.HDUList
        The open file (read-only).
    path : Path
        The file, for messages and provenance.
    extver : int
        EXTVER of the SCI extension.
    units : str, optional
        ``counts``/``countrate``/``surface_brightness`` when BUNIT is missing or wrong.
    exptime : float, optional
        Exposure time [s] overriding EXPTIME.

    Returns
    -------
    ImageModel
    """
    path = Path(path)
    ext = f"SCI,{extver}"
    try:
        sci = hdulist["SCI", extver]
    except KeyError:
        raise DrizzlepipeInputError(path, "no such extension", ext) from None
    primary = hdulist[0].header
    headers = (sci.header, primary)
    data = image_array(sci, path, ext, np.float32)
    shape = data.shape

    if ("ERR", extver) in hdulist:
        err = image_array(hdulist["ERR", extver], path, f"ERR,{extver}", np.float32, shape)
        has_err = True
    else:
        err, has_err = np.zeros(shape, np.float32), False
    if ("DQ", extver) in hdulist:
        dq = image_array(hdulist["DQ", extver], path, f"DQ,{extver}", np.uint32, shape)
    else:
        dq = np.zeros(shape, np.uint32)

    wcs = celestial_wcs(sci.header, path, ext, hdulist)
    wcs.pixel_shape = (shape[1], shape[0])
    exp = exposure_time(headers, path, ext, ("EXPTIME",), exptime)
    bunit = first_keyword(headers, ("BUNIT",))
    kind, electrons, bunit = units_from(bunit, path, ext, units)

    instrument = str(primary.get("INSTRUME", "")).strip()
    detector = str(primary.get("DETECTOR", "")).strip()
    gain = mean_nonzero([primary.get(f"ATODGN{a}") for a in _AMPS])
    readnoise = mean_nonzero([primary.get(f"READNSE{a}") for a in _AMPS])

    model = ImageModel(data=data, dq=dq, err=err)
    meta = model.meta
    meta.filename = path.name
    meta.telescope = "HST"
    meta.instrument.name = instrument
    meta.instrument.detector = detector
    if (filt := _filter_name(primary)) is not None:
        meta.instrument.filter = filt
    meta.chip = int(extver)
    meta.wcs = wcs
    meta.exposure.exptime = exp
    for attr, key in (("start", "EXPSTART"), ("end", "EXPEND")):
        if (value := first_keyword(headers, (key,))) is not None:
            setattr(meta.exposure, attr, float(value))
    meta.units = kind
    meta.bunit = bunit
    meta.detector.in_electrons = bool(electrons) if electrons is not None else True
    meta.detector.gain = gain if gain is not None else 1.0
    meta.detector.readnoise = readnoise if readnoise is not None else 0.0
    meta.detector.readout_direction = readout_direction(
        instrument, detector, extver, primary.get("CCDAMP", "")
    )
    if (idcscale := sci.header.get("IDCSCALE")) not in (None, ""):
        meta.detector.pixel_scale = float(idcscale)
    meta.dq_convention = "hst"
    meta.has_err = has_err
    # MDRIZSKY left by an earlier AstroDrizzle run is not trusted as a sky (it would be
    # subtracted again if the sky step is skipped); SkySub's user_keyword reads it on request.
    meta.background.level = 0.0
    meta.background.subtracted = False
    rootname = str(primary.get("ROOTNAME", "")).strip().lower()
    meta.group_id = rootname or path.name.split("_")[0]
    meta.source.path = str(path.resolve())
    meta.source.format = "hst"
    meta.source.extension = ext
    return model
