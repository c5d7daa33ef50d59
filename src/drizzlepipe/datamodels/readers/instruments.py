"""Detector properties of each instrument: gain, read noise, native units, DQ source, readout.

One table, :data:`INSTRUMENTS`, says for every instrument drizzlepipe knows where a chip's gain
[electrons/DN] and read noise [electrons] come from, which units its calibrated data have when
the file has no ``BUNIT``, where its data-quality flags live and in which direction its charge
is read out (the direction of CTE trails, for ``ctegrow``). It follows AstroDrizzle's
instrument classes (``drizzlepac/acsData.py``, ``wfc3Data.py``, ``stisData.py``,
``wfpc2Data.py``, ``nicmosData.py``); ``docs/instruments.md`` shows the same table.

Values stated by the user (``gain=``, ``readnoise=``) win over every header. A quantity that
neither the header nor the user gives is taken from a default and reported in
:attr:`Detector.assumed`, which the library logs once per file as a warning: data are never
converted with a guessed gain without a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import as_number, mean_nonzero

__all__ = [
    "INSTRUMENTS",
    "Detector",
    "hst_detector",
    "generic_detector",
    "is_stis_imset_file",
    "readout_direction",
    "wfpc2_gain_readnoise",
]

_AMPS = "ABCD"

#: WFPC2 gain [e-/DN] and read noise [e-] per chip (DETECTOR 1-4 = PC1, WF2, WF3, WF4) and
#: commanded gain ATODGAIN (7 or 15), from drizzlepac's ``wfpc2Data.WFPC2_GAINS``.
WFPC2_GAINS = {
    1: {7: (7.12, 5.24), 15: (13.99, 7.02)},
    2: {7: (7.12, 5.51), 15: (14.50, 7.84)},
    3: {7: (6.90, 5.22), 15: (13.95, 6.99)},
    4: {7: (7.10, 5.19), 15: (13.95, 8.32)},
}

#: NICMOS gain [e-/DN] and read noise [e-] per camera (drizzlepac's ``nicmosData``).
NICMOS_GAINS = {1: (5.4, 26.0), 2: (5.4, 26.0), 3: (6.5, 29.0)}

#: One row per instrument/detector: (instrument, detector, gain, read noise, units without
#: BUNIT, DQ source, readout direction). Rendered in ``docs/instruments.md``; the functions
#: below implement it.
INSTRUMENTS = (
    ("ACS", "WFC, HRC", "mean of non-zero ATODGN[A-D]", "mean of non-zero READNSE[A-D]",
     "ELECTRONS", "DQ extension", "WFC: SCI,1 -y, SCI,2 +y; HRC: amp A/B +y, C/D -y"),
    ("ACS", "SBC", "1 (MAMA)", "0 (MAMA)", "COUNTS", "DQ extension", "none"),
    ("WFC3", "UVIS", "mean of non-zero ATODGN[A-D]", "mean of non-zero READNSE[A-D]",
     "ELECTRONS", "DQ extension", "SCI,1 -y, SCI,2 +y"),
    ("WFC3", "IR", "mean of non-zero ATODGN[A-D]", "mean of non-zero READNSE[A-D]",
     "ELECTRONS/S", "DQ extension; TIME (s per pixel) read too", "none"),
    ("STIS", "CCD", "ATODGAIN, else CCDGAIN", "READNSE", "COUNTS (DN)", "DQ extension", "+y"),
    ("STIS", "FUV-MAMA, NUV-MAMA", "1 (MAMA)", "0 (MAMA)", "COUNTS", "DQ extension", "none"),
    ("WFPC2", "PC1, WF2-4", "table by ATODGAIN (7/15) and chip", "table by ATODGAIN and chip",
     "COUNTS (DN)", "companion _c1m file (c0m input), DQ extension (flt)", "-y"),
    ("NICMOS", "NIC1-3", "5.4 (NIC1/2), 6.5 (NIC3)", "26, 26, 29", "COUNTS/S (DN/s)",
     "DQ extension", "none"),
    ("JWST", "all imagers", "1 (data are MJy/sr)", "from VAR_RNOISE/ERR", "MJy/sr",
     "DQ (JWST flags)", "none"),
    ("plain FITS", "-", "gain=, else GAIN/EGAIN/CCDGAIN, else 1 (warned)",
     "readnoise=, else RDNOISE/READNOIS/RON, else 0 (warned)", "BUNIT or units= (required)",
     "DQ or MASK extension", "none"),
)  # fmt: skip


@dataclass(frozen=True)
class Detector:
    """What a chip's detector contributes to its metadata.

    Attributes
    ----------
    gain : float
        Electrons per DN (1 for data already in electrons or for photon counters).
    readnoise : float
        Read noise [electrons].
    native_bunit : str or None
        BUNIT of the instrument's calibrated data, used when the file has none.
    readout_direction : int
        Charge transfer along y: +1, -1, or 0 (none/unknown).
    assumed : tuple of str
        Quantities taken from a default rather than the header or the user (to be reported).
    """

    gain: float
    readnoise: float
    native_bunit: str | None
    readout_direction: int
    assumed: tuple[str, ...] = ()


def readout_direction(instrument, detector, extver, ccdamp=""):
    """Charge-transfer direction along y for a chip (+1, -1, or 0 when there is none).

    ACS/WFC and WFC3/UVIS: SCI,1 reads out towards -y, SCI,2 towards +y; ACS/HRC: amps A/B
    +1, C/D -1; STIS/CCD +1; WFPC2 -1; detectors without CTE trails along columns (SBC, IR,
    MAMA, NICMOS) 0. As drizzlepac's instrument classes (``cte_dir``).
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
    if (instrument, detector) == ("STIS", "CCD"):
        return 1
    if instrument == "WFPC2":
        return -1
    return 0


def wfpc2_gain_readnoise(atodgain, chip_detector):
    """WFPC2 (gain, read noise) for a commanded gain (7 or 15) and a chip (1-4), or None."""
    try:
        return WFPC2_GAINS[int(chip_detector)][int(round(float(atodgain)))]
    except (KeyError, TypeError, ValueError):
        return None


def is_stis_imset_file(primary_header):
    """True for STIS files, whose SCI extensions are separate exposures (imsets of a CR-split
    or repeated observation), not chips: AstroDrizzle splits them into one file each."""
    return str(primary_header.get("INSTRUME", "")).strip().upper() == "STIS"


def hst_detector(primary, sci_header, extver, *, gain=None, readnoise=None):
    """The :class:`Detector` of one chip of an HST exposure.

    Parameters
    ----------
    primary, sci_header : astropy.io.fits.Header
        The primary header and the chip's SCI header.
    extver : int
        The chip's SCI EXTVER.
    gain, readnoise : float, optional
        The user's values [e-/DN, e-], which win over the header.

    Returns
    -------
    Detector
    """
    instrument = str(primary.get("INSTRUME", "")).strip().upper()
    detector = str(primary.get("DETECTOR", "")).strip().upper()
    direction = readout_direction(instrument, detector, extver, primary.get("CCDAMP", ""))
    native = None
    header_gain = header_noise = None
    mama = detector.endswith("MAMA") or detector == "SBC"
    if mama:
        header_gain, header_noise = 1.0, 0.0
        native = "COUNTS"
    elif instrument in ("ACS", "WFC3"):
        header_gain = mean_nonzero(primary.get(f"ATODGN{a}") for a in _AMPS)
        header_noise = mean_nonzero(primary.get(f"READNSE{a}") for a in _AMPS)
        native = "ELECTRONS/S" if detector == "IR" else "ELECTRONS"
    elif instrument == "STIS":
        header_gain = as_number(primary.get("ATODGAIN")) or as_number(primary.get("CCDGAIN"))
        header_noise = as_number(primary.get("READNSE"))
        native = "COUNTS"
    elif instrument == "WFPC2":
        chip = sci_header.get("DETECTOR", extver)
        pair = wfpc2_gain_readnoise(primary.get("ATODGAIN"), chip)
        if pair is not None:
            header_gain, header_noise = pair
        native = "COUNTS"
    elif instrument == "NICMOS":
        camera = as_number(primary.get("CAMERA"))
        pair = NICMOS_GAINS.get(int(camera)) if camera is not None else None
        if pair is not None:
            header_gain, header_noise = pair
        native = "COUNTS/S"
    else:  # another HST instrument: the keywords ACS and WFC3 use, when present
        header_gain = mean_nonzero(primary.get(f"ATODGN{a}") for a in _AMPS)
        header_noise = mean_nonzero(primary.get(f"READNSE{a}") for a in _AMPS)
    return _detector(gain, readnoise, header_gain, header_noise, native, direction)


def generic_detector(headers, *, gain=None, readnoise=None):
    """The :class:`Detector` of a plain FITS image (or another telescope's): gain from
    ``GAIN``/``EGAIN``/``CCDGAIN``, read noise from ``RDNOISE``/``READNOIS``/``RON``, or the
    user's values."""
    header_gain = _first_number(headers, ("GAIN", "EGAIN", "CCDGAIN"))
    header_noise = _first_number(headers, ("RDNOISE", "READNOIS", "RON", "READNOISE"))
    return _detector(gain, readnoise, header_gain, header_noise, None, 0)


def _first_number(headers, names):
    for name in names:
        for header in headers:
            if header is not None and name in header and (value := as_number(header[name])):
                return value
    return None


def _detector(gain, readnoise, header_gain, header_noise, native, direction):
    if gain is not None and not gain > 0:
        raise ValueError(f"gain must be a positive number of electrons per DN, got {gain!r}")
    if readnoise is not None and not readnoise >= 0:
        raise ValueError(f"readnoise must be a number of electrons >= 0, got {readnoise!r}")
    assumed = []
    if gain is None:
        gain = header_gain
    if gain is None or gain <= 0:
        gain = 1.0
        assumed.append("gain")
    if readnoise is None:
        readnoise = header_noise
    if readnoise is None or readnoise < 0:
        readnoise = 0.0
        assumed.append("readnoise")
    return Detector(float(gain), float(readnoise), native, int(direction), tuple(assumed))
