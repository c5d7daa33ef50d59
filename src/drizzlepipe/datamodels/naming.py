"""File names: exposure root names and the suffixes of products (ours and AstroDrizzle's).

A glob such as ``'*.fits'`` in a directory where drizzlepipe or AstroDrizzle ran also matches
their products; :func:`product_kind` recognises them by name so that the library can leave
them out instead of drizzling a ``_crf`` copy beside its exposure, or a ``_drz`` as an input.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "COPY_SUFFIXES",
    "INPUT_SUFFIXES",
    "KNOWN_SUFFIXES",
    "RESAMPLED_SUFFIXES",
    "exposure_root",
    "product_kind",
    "strip_extension",
]

#: Suffixes of drizzlepipe's products that are copies of an exposure in its own layout.
COPY_SUFFIXES = ("crf", "crclean", "sky")

#: Suffixes of resampled and side products (drizzlepipe's and AstroDrizzle's): never exposures.
RESAMPLED_SUFFIXES = (
    "staticmask",
    "staticMask",
    "single",
    "single_sci",
    "single_wht",
    "single_mask",
    "final_mask",
    "med",
    "median",
    "blot",
    "blt",
    "crmask",
    "drz",
    "drc",
    "drw",
    "drz_sci",
    "drz_wht",
    "drz_ctx",
    "drc_sci",
    "drc_wht",
    "drc_ctx",
    "i2d",
    "skysub",
)

#: Suffixes drizzlepipe writes; stripped from input names so re-runs do not pile them up.
KNOWN_SUFFIXES = (
    "staticmask",
    "sky",
    "skysub",
    "single",
    "med",
    "median",
    "blot",
    "crmask",
    "crclean",
    "crf",
    "drz",
    "drc",
    "single_sci",
    "single_wht",
)

#: Suffixes of calibrated exposures (HST, JWST) removed to get an exposure's root name.
INPUT_SUFFIXES = ("flt", "flc", "c0m", "c0f", "cal", "crf", "rate", "calints")

_EXTENSIONS = (".fits", ".asdf", ".fit", ".fits.gz")


def strip_extension(name):
    """``"a/x_flt.fits"`` -> ``"x_flt"``."""
    stem = Path(str(name)).name
    for ext in _EXTENSIONS:
        if stem.lower().endswith(ext):
            return stem[: -len(ext)]
    return stem


def exposure_root(filename):
    """Root name of an exposure file: ``j8bt06nyq_flt.fits`` -> ``j8bt06nyq`` (as AstroDrizzle's
    ``buildNewRootname``), ``jw..._nrcb1_cal.fits`` -> ``jw..._nrcb1``."""
    stem = strip_extension(filename)
    for suffix in sorted(INPUT_SUFFIXES + KNOWN_SUFFIXES, key=len, reverse=True):
        if stem.endswith("_" + suffix):
            return stem[: -len(suffix) - 1]
    return stem


def product_kind(filename):
    """``"copy"`` for a product that copies an exposure (``_crf``, ``_crclean``, ``_sky``),
    ``"resampled"`` for resampled and side products (``_drz``, ``_single_sci``, ``_med``,
    ``_sci1_blt``, ``_crmask`` ...), None for other names (judged by name only)."""
    stem = strip_extension(filename)
    for suffix in sorted(COPY_SUFFIXES, key=len, reverse=True):
        if stem.endswith("_" + suffix):
            return "copy"
    for suffix in sorted(RESAMPLED_SUFFIXES, key=len, reverse=True):
        if stem.endswith("_" + suffix):
            return "resampled"
    return None
