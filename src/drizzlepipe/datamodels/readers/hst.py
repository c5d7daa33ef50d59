"""Reader for HST calibrated exposures (ACS, WFC3, STIS, WFPC2, NICMOS): one
:class:`ImageModel` per SCI extension.

Units come from BUNIT (``ELECTRONS`` -> counts in electrons, ``ELECTRONS/S`` -> count rate,
``COUNTS`` -> counts in DN), or from the instrument's calibrated units when BUNIT is absent;
gain, read noise and readout direction from :mod:`.instruments` (AstroDrizzle's instrument
classes); the WCS is read by astropy.wcs from the SCI header and the file, so SIP, D2IM and NPOL
lookup-table distortions are all included.

Exposure identity: one file is one exposure whose SCI extensions are its chips, whatever its
ROOTNAME says (STIS CR-split members carry their association's ROOTNAME). STIS files are the
exception AstroDrizzle makes too: each SCI extension is an imset, a separate exposure with its
own EXPTIME and EXPSTART in its SCI header. WFPC2 ``_c0m`` files keep their DQ in the companion
``_c1m`` file; WFC3/IR and NICMOS files carry a TIME extension (seconds per pixel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel
from ..naming import exposure_root, strip_extension
from ..pixels import attach_pixel_source
from ._common import (
    carried_cards,
    celestial_wcs,
    clear_bits,
    exposure_time,
    first_keyword,
    image_array,
    image_shape,
    open_fits,
    photometry_from,
    reading,
    units_from,
)
from .instruments import hst_detector, is_stis_imset_file

__all__ = [
    "is_hst",
    "sci_extvers",
    "read_hst_chip",
    "hst_group_id",
    "companion_dq_file",
]


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


def hst_group_id(path, primary, extver, n_sci):
    """The exposure a chip belongs to: the file's root name (``j8bt06nyq_flt.fits`` ->
    ``j8bt06nyq``); for a STIS file of several imsets, ``<root>_sci<n>`` per imset."""
    root = exposure_root(Path(path).name)
    if n_sci > 1 and is_stis_imset_file(primary):
        return f"{root}_sci{extver}"
    return root


def companion_dq_file(path, primary):
    """The WFPC2 ``_c1m`` file holding a ``_c0m`` file's DQ, or None when the DQ is in the file
    itself (``_flt`` and other instruments). The file may not exist: callers check."""
    if str(primary.get("INSTRUME", "")).strip().upper() != "WFPC2":
        return None
    stem = strip_extension(path)
    if not stem.lower().endswith("_c0m"):
        return None
    return Path(path).with_name(f"{stem[:-4]}_c1m{Path(path).name[len(stem) :]}")


def _companion_dq(dq_path, extver, path, shape):
    """The DQ array of chip ``extver`` from a WFPC2 ``_c1m`` file (its extensions carry the
    chips in order; their EXTNAME varies: SCI, SDQ or DQ)."""
    ext = f"{Path(dq_path).name}[{extver}]"
    with reading(dq_path, ext), fits.open(dq_path, mode="readonly", memmap=False) as dq_list:
        images = [hdu for hdu in dq_list[1:] if hdu.is_image and hdu.header.get("NAXIS") == 2]
        matching = [hdu for hdu in images if int(hdu.header.get("EXTVER", 0)) == extver]
        hdu = matching[0] if matching else (images[extver - 1] if extver <= len(images) else None)
        if hdu is None:
            raise DrizzlepipeInputError(dq_path, f"no DQ image for chip {extver} of {path}")
        return image_array(hdu, dq_path, ext, np.uint32, shape)


def read_hst_chip(hdulist, path, extver, *, units=None, exptime=None, gain=None,
                  readnoise=None, resetbits=None, pixels=True):  # fmt: skip
    """Read SCI/ERR/DQ (and TIME) of one chip of an HST exposure into an :class:`ImageModel`.

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
    gain, readnoise : float, optional
        Gain [e-/DN] and read noise [e-] overriding the instrument's.
    resetbits : int, optional
        DQ bits cleared in the chip (in memory; the file is not touched).
    pixels : bool, optional
        False: SCI, ERR and TIME are left in the file and read when used (a pixel source is
        attached, :mod:`drizzlepipe.datamodels.pixels`); their shapes are checked now.

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
    # STIS keeps EXPTIME/EXPSTART of each imset in its SCI header: the SCI header comes first
    headers = (sci.header, primary)
    has_err = ("ERR", extver) in hdulist
    if pixels:
        arrays = read_hst_pixels(hdulist, path, extver)
        shape = arrays["data"].shape
    else:  # read from the file when used (drizzlepipe.datamodels.pixels): shapes checked now
        with reading(path, ext):
            shape = image_shape(sci, path, ext)
        arrays = {}
        for name in ("ERR", "TIME"):
            if (name, extver) in hdulist:
                with reading(path, f"{name},{extver}"):
                    image_shape(hdulist[name, extver], path, f"{name},{extver}", shape)
    dq_path = companion_dq_file(path, primary)
    if dq_path is not None and dq_path.is_file():
        dq = _companion_dq(dq_path, extver, path, shape)
    elif ("DQ", extver) in hdulist:
        with reading(path, f"DQ,{extver}"):
            dq = image_array(hdulist["DQ", extver], path, f"DQ,{extver}", np.uint32, shape)
    else:
        dq = np.zeros(shape, np.uint32)
    clear_bits(dq, resetbits)

    wcs = celestial_wcs(sci.header, path, ext, hdulist)
    wcs.pixel_shape = (shape[1], shape[0])
    exp = exposure_time(headers, path, ext, ("EXPTIME",), exptime)
    instrument = str(primary.get("INSTRUME", "")).strip()
    detector = str(primary.get("DETECTOR", "")).strip()
    chip_detector = hst_detector(primary, sci.header, extver, gain=gain, readnoise=readnoise)
    bunit = first_keyword(headers, ("BUNIT",))
    if bunit is None and units is None:
        bunit = chip_detector.native_bunit
    kind, electrons, bunit = units_from(bunit, path, ext, units, gain)

    model = ImageModel(dq=dq, **arrays)
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
    meta.detector.gain = chip_detector.gain
    meta.detector.readnoise = chip_detector.readnoise
    meta.detector.readout_direction = chip_detector.readout_direction
    if (idcscale := sci.header.get("IDCSCALE")) not in (None, ""):
        meta.detector.pixel_scale = float(idcscale)
    meta.dq_convention = "hst"
    meta.has_err = has_err
    # MDRIZSKY left by an earlier AstroDrizzle run is not trusted as a sky (it would be
    # subtracted again if the sky step is skipped); SkySub's user_keyword reads it on request.
    meta.background.level = 0.0
    meta.background.subtracted = False
    for name, value in photometry_from(headers).items():
        setattr(meta.photometry, name, value)
    rootname = first_keyword(headers, ("EXPNAME",)) if is_stis_imset_file(primary) else None
    meta.rootname = str(rootname or primary.get("ROOTNAME", "") or exposure_root(path.name))
    meta.rootname = meta.rootname.strip().lower()
    meta.header_cards = carried_cards(primary)
    meta.group_id = hst_group_id(path, primary, extver, len(sci_extvers(hdulist)))
    meta.source.path = str(path.resolve())
    meta.source.format = "hst"
    meta.source.extension = ext
    if not pixels:
        names = ("data", "err", "time") if ("TIME", extver) in hdulist else ("data", "err")
        options = {"units": units, "exptime": exptime, "gain": gain, "readnoise": readnoise,
                   "resetbits": resetbits}  # fmt: skip
        attach_pixel_source(model, f"{path}[{ext}]", options, names=names, shape=shape)
    return model


def read_hst_pixels(hdulist, path, extver, names=("data", "err", "time"), rows=None):
    """The input arrays ``names`` of one chip, as float32: ``data`` (SCI), ``err`` (ERR, zeros
    when the file has none) and ``time`` (WFC3/IR and NICMOS TIME, only where the file has
    it). SCI is always read (it gives the shape). ``rows`` (a slice): only those rows."""
    ext = f"SCI,{extver}"
    try:
        sci = hdulist["SCI", extver]
    except KeyError:
        raise DrizzlepipeInputError(path, "no such extension", ext) from None
    with reading(path, ext):
        whole_shape = image_shape(sci, path, ext)
        data = image_array(sci, path, ext, np.float32, rows=rows)
    pixels = {"data": data}
    if "err" in names:
        pixels["err"] = np.zeros(data.shape, np.float32)
    for name in ("ERR", "TIME"):
        if name.lower() in names and (name, extver) in hdulist:
            extension = f"{name},{extver}"
            with reading(path, extension):
                pixels[name.lower()] = image_array(
                    hdulist[name, extver], path, extension, np.float32, whole_shape, rows
                )
    return pixels


def _filter_name(primary):
    names = []
    for key in ("FILTER", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAM2"):
        value = str(primary.get(key, "")).strip()
        if value and not value.upper().startswith("CLEAR") and value.upper() != "N/A":
            names.append(value)
    return ";".join(names) if names else None


def read_hst_file(path, selector=None, **options):
    """All chips of an HST file (or the one ``selector`` names), as :func:`read_hst_chip`
    (``pixels=False``: their input arrays are read from the file when used)."""
    with open_fits(path) as hdulist:
        with reading(path):
            versions = sci_extvers(hdulist)
        if not versions:
            raise DrizzlepipeInputError(path, "HST file without SCI extensions")
        if selector is not None:
            extname, extver = selector
            if extname != "SCI" or extver not in versions:
                problem = f"no such extension (SCI extensions: {versions})"
                raise DrizzlepipeInputError(path, problem, f"{extname},{extver}")
            return read_hst_chip(hdulist, path, extver, **options)
        chips = [read_hst_chip(hdulist, path, extver, **options) for extver in versions]
    return chips[0] if len(chips) == 1 else chips
