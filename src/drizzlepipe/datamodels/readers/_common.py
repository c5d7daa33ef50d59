"""Helpers shared by the readers: file checks, extension arrays, exposure metadata."""

from __future__ import annotations

import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ...exceptions import DrizzlepipeInputError
from ..dqflags import resetbits_value
from ..units import parse_bunit

_SELECTOR = re.compile(r"^(?P<path>.+?)\[(?P<extname>[A-Za-z_]+)\s*,\s*(?P<extver>\d+)\]$")


def split_selector(name):
    """Split ``"f.fits[SCI,2]"`` into ``(Path("f.fits"), ("SCI", 2))``; without selector: None."""
    text = str(name)
    match = _SELECTOR.match(text)
    if match is None:
        return Path(text), None
    return Path(match["path"]), (match["extname"].upper(), int(match["extver"]))


def chip_member_name(path, extver):
    """The association member name of one SCI extension: ``"/abs/file.fits[SCI,n]"``."""
    return f"{Path(path)}[SCI,{extver}]"


def file_kind(path):
    """Return ``"fits"`` or ``"asdf"`` from the file's first bytes, or raise a clear error."""
    path = Path(path)
    if not path.exists():
        raise DrizzlepipeInputError(path, "file not found")
    if not path.is_file():
        raise DrizzlepipeInputError(path, "not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(80)
    except OSError as exc:
        raise DrizzlepipeInputError(path, f"cannot be read ({exc.strerror})") from None
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"#ASDF"):
        return "asdf"
    raise DrizzlepipeInputError(path, "not a FITS or ASDF file")


def open_fits(path):
    """Open a FITS file read-only (memory-mapped: readers copy what they keep, straight from
    the page cache); unreadable files give a clear error. Image data come as stored:
    :func:`image_array` applies BSCALE, BZERO and BLANK (astropy cannot scale a memory-mapped
    image)."""
    try:
        return fits.open(
            path, mode="readonly", memmap=True, lazy_load_hdus=True, do_not_scale_image_data=True
        )
    except (OSError, ValueError, TypeError) as exc:
        raise DrizzlepipeInputError(path, f"unreadable FITS file ({exc})") from None


@contextmanager
def reading(path, extension=None):
    """Turn any failure while reading ``path`` (a truncated file gives astropy's bare
    ``TypeError: buffer is too small``) into a :class:`DrizzlepipeInputError` naming the file
    and the extension."""
    try:
        yield
    except DrizzlepipeInputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        problem = f"unreadable ({type(exc).__name__}: {exc}); the file may be truncated or damaged"
        raise DrizzlepipeInputError(path, problem, extension) from None


def image_shape(hdu, path, extension, expected_shape=None):
    """The 2-D shape of an image HDU from its header, checked as :func:`image_array` checks the
    array (without reading it)."""
    header = hdu.header
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0 and "PIXVALUE" in header and "NPIX1" in header and "NPIX2" in header:
        shape = (int(header["NPIX2"]), int(header["NPIX1"]))
    elif naxis == 0:
        raise DrizzlepipeInputError(path, "extension holds no data", extension)
    elif naxis != 2:
        dims = tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
        raise DrizzlepipeInputError(
            path, f"expected a 2-D image, found {naxis} dimensions {dims}", extension
        )
    else:
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    if expected_shape is not None and shape != tuple(expected_shape):
        raise DrizzlepipeInputError(
            path, f"shape {shape} differs from the SCI shape {tuple(expected_shape)}", extension
        )
    return shape


def image_array(hdu, path, extension, dtype, expected_shape=None, rows=None):
    """Return the 2-D array of an image HDU as ``dtype`` (a copy, so the file is never touched).

    HST files store constant ERR/DQ arrays without data, as ``NPIX1``/``NPIX2``/``PIXVALUE``
    keywords; those are expanded here. Stored values are scaled (``BZERO + BSCALE x value``;
    BLANK integers become NaN in float arrays), e.g. the unsigned 16-bit images of many
    cameras (BZERO = 32768). ``rows`` (a slice): only those rows, read alone from a
    memory-mapped file (:func:`open_fits`), the shape checks being those of the whole array.
    """
    header = hdu.header
    data = hdu.data
    stored = data is not None  # values as the file stores them (see open_fits)
    if data is None and "PIXVALUE" in header and "NPIX1" in header and "NPIX2" in header:
        shape = (int(header["NPIX2"]), int(header["NPIX1"]))
        data = np.broadcast_to(np.asarray(header["PIXVALUE"], dtype=dtype), shape)  # copied below
    if data is None:
        raise DrizzlepipeInputError(path, "extension holds no data", extension)
    if data.ndim != 2:
        raise DrizzlepipeInputError(
            path, f"expected a 2-D image, found {data.ndim} dimensions {data.shape}", extension
        )
    if expected_shape is not None and data.shape != tuple(expected_shape):
        raise DrizzlepipeInputError(
            path,
            f"shape {data.shape} differs from the SCI shape {tuple(expected_shape)}",
            extension,
        )
    if rows is not None:
        data = data[rows]
    if stored and _is_scaled(header, data):
        return _scaled(data, header, dtype, path, extension)
    if np.issubdtype(np.dtype(dtype), np.integer) and np.issubdtype(data.dtype, np.signedinteger):
        # HST DQ is int16: reinterpret the bit pattern instead of sign-extending it (a view in
        # the file's byte order; the copy below swaps and widens in one pass).
        data = data.view(data.dtype.str.replace("i", "u"))
    return np.array(data, dtype=dtype, copy=True)


def _is_scaled(header, data):
    """Whether stored values differ from the physical ones (BSCALE, BZERO, or BLANK of an
    integer image)."""
    integer = np.issubdtype(data.dtype, np.integer)
    return (
        float(header.get("BSCALE", 1.0)) != 1.0
        or float(header.get("BZERO", 0.0)) != 0.0
        or (integer and header.get("BLANK") is not None)
    )


def _scaled(data, header, dtype, path, extension):
    """The physical values ``BZERO + BSCALE x stored`` as ``dtype``: computed in float64 for a
    float ``dtype`` (BLANK integers become NaN), exactly in integers for an integer one (flags
    must stay whole numbers within the dtype)."""
    scale, zero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    if np.issubdtype(np.dtype(dtype), np.integer):
        if scale != 1.0 or zero != round(zero):
            raise DrizzlepipeInputError(
                path, f"flags scaled by BSCALE={scale:g} and BZERO={zero:g} are not whole "
                "numbers", extension,
            )  # fmt: skip
        values = data.astype(np.int64) + int(zero)
        limits = np.iinfo(dtype)
        if values.size and (values.min() < limits.min or values.max() > limits.max):
            raise DrizzlepipeInputError(
                path, f"flags outside {limits.min}..{limits.max} after BZERO={zero:g}", extension
            )
        return values.astype(dtype)
    values = data.astype(np.float64)
    values *= scale
    values += zero
    blank = header.get("BLANK") if np.issubdtype(data.dtype, np.integer) else None
    if blank is not None:
        values[data == int(blank)] = np.nan
    return values.astype(dtype)


_WARNINGS_LOCK = threading.Lock()


def celestial_wcs(header, path, extension, hdulist=None):
    """Build an astropy WCS (SIP and lookup-table distortion included) or raise a clear error."""
    # catch_warnings changes process-wide state: one thread at a time (chips are read by
    # several threads, see ModelLibrary.preload)
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, fobj=hdulist, relax=True)
        except Exception as exc:  # astropy raises many types for broken WCS headers
            raise DrizzlepipeInputError(path, f"invalid WCS ({exc})", extension) from None
    if not wcs.has_celestial or wcs.naxis != 2:
        raise DrizzlepipeInputError(path, "no celestial WCS (need RA/Dec CTYPEs)", extension)
    return wcs


def first_keyword(headers, names):
    """Value of the first of ``names`` found in any of ``headers`` (in order), else None."""
    for name in names:
        for header in headers:
            if header is not None and name in header and header[name] not in ("", None):
                return header[name]
    return None


def exposure_time(headers, path, extension, names=("EXPTIME",), override=None):
    """Exposure time in seconds from the first keyword found, or ``override``; must be > 0."""
    value = override if override is not None else first_keyword(headers, names)
    if value is None:
        raise DrizzlepipeInputError(
            path,
            f"no exposure time (none of {', '.join(names)}); pass exptime= to state it",
            extension,
        )
    try:
        value = float(value)
    except (TypeError, ValueError):
        problem = f"exposure time {value!r} is not a number"
        raise DrizzlepipeInputError(path, problem, extension) from None
    if not np.isfinite(value) or value <= 0:
        raise DrizzlepipeInputError(
            path, f"exposure time must be positive, found {value}", extension
        )
    return value


def units_from(bunit, path, extension, override=None, gain=None):
    """Return ``(kind, in_electrons, bunit)`` from a BUNIT string or the user's statement.

    With ``override`` (the user's ``units``) the kind is the user's; counts and rates are DN
    when the user also gives a ``gain`` (that is what a gain is for), else what BUNIT says
    (electrons when BUNIT says nothing readable).
    """
    if override is not None:
        if override not in ("counts", "countrate", "surface_brightness"):
            raise DrizzlepipeInputError(
                path,
                f"units={override!r} is not one of counts, countrate, surface_brightness",
                extension,
            )
        return override, electrons_stated(bunit, override, gain), str(bunit) if bunit else override
    if bunit is None or str(bunit).strip() == "":
        raise DrizzlepipeInputError(
            path, "no BUNIT keyword: units unknown; pass units= to state them", extension
        )
    try:
        kind, electrons = parse_bunit(bunit)
    except ValueError:
        raise DrizzlepipeInputError(
            path, f"unknown units BUNIT={bunit!r}; pass units= to state them", extension
        ) from None
    return kind, electrons, str(bunit)


def electrons_stated(bunit, units, gain):
    """Whether counts or rates the user stated as ``units`` are electrons (None for surface
    brightness): not when the user gives a ``gain``, else as BUNIT says, else electrons."""
    if units == "surface_brightness":
        return None
    if gain is not None:
        return False
    try:
        electrons = parse_bunit(bunit)[1] if bunit else None
    except ValueError:
        electrons = None
    return True if electrons is None else electrons


def as_number(value):
    """``value`` as a finite float, or None (missing, text or non-finite)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def mean_nonzero(values):
    """Mean of the non-zero, finite values (AstroDrizzle's gain/read-noise rule); None if none."""
    good = [v for v in map(as_number, values) if v is not None and v != 0]
    return float(np.mean(good)) if good else None


#: Photometric keywords of HST chips (SCI header first, then primary) -> meta.photometry.
HST_PHOTOMETRY = {
    "PHOTMODE": "photmode",
    "PHOTFLAM": "photflam",
    "PHOTFNU": "photfnu",
    "PHOTPLAM": "photplam",
    "PHOTBW": "photbw",
    "PHOTZPT": "photzpt",
}

#: Primary-header keywords of an exposure that describe a combined product of it too (target,
#: programme, instrument configuration, date of observation); products carry those of their
#: first input. Exposure-specific keywords (ROOTNAME, EXPTIME, EXPSTART, gains, ...) are not
#: among them: products get their own.
CARRIED_KEYWORDS = (
    "TELESCOP", "INSTRUME", "DETECTOR", "CAMERA", "FILTER", "FILTER1", "FILTER2", "PUPIL",
    "CHANNEL", "MODULE", "APERTURE", "PRIMESI", "OBSTYPE", "OBSMODE", "TARGNAME", "RA_TARG",
    "DEC_TARG", "PROPOSID", "PROGRAM", "PR_INV_L", "PR_INV_F", "DATE-OBS", "TIME-OBS",
    "PA_V3", "EQUINOX",
)  # fmt: skip


def photometry_from(headers):
    """``meta.photometry`` values from the first header of ``headers`` holding each keyword."""
    values = {}
    for keyword, name in HST_PHOTOMETRY.items():
        value = first_keyword(headers, (keyword,))
        if value is None:
            continue
        if keyword == "PHOTMODE":
            values[name] = str(value).strip()
        elif (number := as_number(value)) is not None:
            values[name] = number
    return values


def carried_cards(header):
    """The :data:`CARRIED_KEYWORDS` present in ``header``, as ``{keyword: value}``."""
    cards = {}
    for keyword in CARRIED_KEYWORDS:
        value = header.get(keyword)
        if value is None or isinstance(value, fits.card.Undefined):
            continue
        cards[keyword] = value.strip() if isinstance(value, str) else value
    return cards


def clear_bits(dq, resetbits, convention="hst"):
    """Clear ``resetbits`` (see :func:`~drizzlepipe.datamodels.dqflags.resetbits_value`; None:
    nothing) in ``dq`` in place and return it."""
    bits = resetbits_value(resetbits, convention)
    if bits:
        dq &= np.uint32(~bits & 0xFFFFFFFF)
    return dq
