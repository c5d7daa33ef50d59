"""Interpretation of ``BUNIT`` strings into drizzlepipe's unit kinds.

drizzlepipe needs to know three things about a chip's data: whether they are integrated
counts, a rate (per second) or a surface brightness (per solid angle), and, for counts and
rates, whether they are electrons or DN. Anything else is an error: guessing units silently
would scale a mosaic wrongly without anyone noticing.
"""

from __future__ import annotations

__all__ = ["UNIT_KINDS", "electrons_per_unit", "parse_bunit"]

UNIT_KINDS = ("counts", "countrate", "surface_brightness")

_ELECTRON_NAMES = {"electrons", "electron", "e-", "e"}
_DN_NAMES = {"counts", "count", "dn", "adu", "data number", "data numbers"}
_PER_SECOND = ("/s", "/sec", "/second", " s-1", " s**-1", "/ s")
_SOLID_ANGLE = ("/sr", "/arcsec2", "/arcsec**2", "/arcsec^2", "sr-1", "arcsec-2")


def parse_bunit(bunit):
    """Classify a BUNIT string.

    Parameters
    ----------
    bunit : str
        The unit string from a FITS header or a datamodel (``"ELECTRONS"``,
        ``"ELECTRONS/S"``, ``"COUNTS/S"``, ``"DN"``, ``"MJy/sr"``, ...).

    Returns
    -------
    kind : str
        ``"counts"``, ``"countrate"`` or ``"surface_brightness"``.
    in_electrons : bool or None
        True for electrons, False for DN/ADU/counts, None for surface brightness.

    Raises
    ------
    ValueError
        If the string is not one drizzlepipe understands.
    """
    text = " ".join(str(bunit).strip().lower().split())
    if not text:
        raise ValueError("empty unit string")
    if any(token in text for token in _SOLID_ANGLE):
        return "surface_brightness", None
    base, kind = text, "counts"
    for token in _PER_SECOND:
        if text.endswith(token):
            base, kind = text[: -len(token)].strip(), "countrate"
            break
    if base in _ELECTRON_NAMES:
        return kind, True
    if base in _DN_NAMES:
        return kind, False
    raise ValueError(f"unknown units {bunit!r}")


def electrons_per_unit(units, in_electrons, gain):
    """Electrons per data unit of a chip: its gain for counts or rates in DN, else 1
    (electrons, or surface brightness, which is not converted).

    Parameters
    ----------
    units : str
        The chip's unit kind (``meta.units``).
    in_electrons : bool or None
        ``meta.detector.in_electrons``; None counts as electrons.
    gain : float or None
        ``meta.detector.gain`` [e-/DN].

    Returns
    -------
    float
    """
    if units == "surface_brightness" or in_electrons in (None, True):
        return 1.0
    return float(gain or 1.0)
