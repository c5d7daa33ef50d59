"""FITS headers of resampled products that AstroDrizzle users can read as before.

A product (``_drz``, ``_single``, ``_med``) written as FITS gets, besides the keywords of its
schema:

* in the primary header, the primary-header keywords of its first input that describe the
  product too (``meta.header_cards``: TARGNAME, PROPOSID, DATE-OBS, FILTER1 ...); its
  photometric keywords (``meta.photometry``: PHOTFLAM ... for HST, PHOTMJSR and PIXAR_* for
  JWST) are in the primary header through the schema and are repeated in the SCI header,
  where AstroDrizzle puts them;
* one group of ``D%03d*`` keywords per input chip, as AstroDrizzle writes them (``D001DATA``,
  ``D001DEXP``, ``D001OUDA`` ...), plus ``D001SKY``, the sky of that chip in its data units;
* a binary table extension ``HDRTAB`` with one row per input chip (file, extension, ROOTNAME,
  filter, EXPTIME, EXPSTART, EXPEND, MDRIZSKY, input pixel scale).

The rows come from ``meta.resample.members`` (a list of dicts), which the drizzle steps fill.
FITS keywords allow ``D001``-``D999``: beyond 999 input chips the keywords stop (logged) and the
table holds every row.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from astropy.io import fits

__all__ = ["MAX_KEYWORD_INPUTS", "add_product_header", "table_hdu"]

log = logging.getLogger(__name__)

#: Inputs that get ``D%03d*`` keywords (three digits).
MAX_KEYWORD_INPUTS = 999

#: Photometric keywords repeated in the SCI header (AstroDrizzle and JWST readers look there).
_SCI_PHOTOMETRY = (
    "PHOTMODE", "PHOTFLAM", "PHOTFNU", "PHOTPLAM", "PHOTBW", "PHOTZPT", "PHOTMJSR", "PHOTUJA2",
    "PIXAR_SR", "PIXAR_A2",
)  # fmt: skip

#: HDRTAB columns: (name, member key, FITS format); strings get the width they need.
_TABLE_COLUMNS = (
    ("FILENAME", "file", "A"),
    ("EXTNAME", "extname", "A"),
    ("EXTVER", "extver", "J"),
    ("ROOTNAME", "rootname", "A"),
    ("FILTER", "filter", "A"),
    ("EXPTIME", "exptime", "D"),
    ("EXPSTART", "expstart", "D"),
    ("EXPEND", "expend", "D"),
    ("MDRIZSKY", "sky", "D"),
    ("PIXSCALE", "pixel_scale", "D"),
)


def _resample(meta):
    return meta.resample if meta.hasattr("resample") else None


def table_hdu(members):
    """The ``HDRTAB`` binary table of ``members`` (one row per input chip)."""
    columns = []
    for name, key, kind in _TABLE_COLUMNS:
        values = [member.get(key) for member in members]
        if kind == "A":
            text = [str(v) if v is not None else "" for v in values]
            width = max([1] + [len(v) for v in text])
            columns.append(fits.Column(name=name, format=f"{width}A", array=np.array(text)))
        elif kind == "J":
            array = np.array([int(v) if v is not None else -1 for v in values], np.int32)
            columns.append(fits.Column(name=name, format="J", array=array))
        else:
            array = np.array([float(v) if v is not None else np.nan for v in values])
            columns.append(fits.Column(name=name, format="D", array=array))
    hdu = fits.BinTableHDU.from_columns(columns, name="HDRTAB")
    hdu.header["COMMENT"] = "One row per input chip of this product, in context-bit order"
    return hdu


def _input_keywords(header, number, member, resample, filename, units):
    prefix = f"D{number:03d}"
    cards = (
        ("VER", member.get("software", ""), "Drizzle, task version"),
        ("GEOM", "wcs", "Drizzle, source of geometric information"),
        ("DATA", member.get("data", ""), "Drizzle, input data image"),
        ("DEXP", float(member.get("exptime") or 0.0), "Drizzle, input image exposure time (s)"),
        ("OUDA", f"{filename}[SCI]", "Drizzle, output data image"),
        ("OUWE", f"{filename}[WHT]", "Drizzle, output weighting image"),
        ("OUCO", f"{filename}[CTX]", "Drizzle, output context image"),
        ("MASK", member.get("mask", ""), "Drizzle, input mask (bad pixels)"),
        ("WTSC", float(member.get("weight_scale", 1.0)), "Drizzle, weighting factor for input"),
        ("KERN", str(resample.kernel or ""), "Drizzle, form of weight distribution kernel"),
        ("PIXF", float(resample.pixfrac or 1.0), "Drizzle, linear size of drop"),
        ("COEF", member.get("distortion", ""), "Drizzle, source of coefficients"),
        ("OUUN", units, "Drizzle, units of output image - counts or cps"),
        ("FVAL", str(resample.fillval or "INDEF"), "Drizzle, fill value for zero weight pixels"),
        ("WKEY", member.get("wcskey", ""), "Input image WCS Version used"),
        ("SCAL", float(resample.pixel_scale or 0.0), "Drizzle, pixel size (arcsec) of output"),
        ("ISCL", float(member.get("pixel_scale") or 0.0), "Drizzle, input pixel size (arcsec)"),
        ("SKY", float(member.get("sky") or 0.0), "Sky subtracted from input, its data units"),
    )
    for suffix, value, comment in cards:
        header[f"{prefix}{suffix}"] = (value, comment)


def add_product_header(model, hdulist):
    """Add the header cards, SCI photometry, ``D%03d*`` keywords and ``HDRTAB`` of a resampled
    product to the HDU list written for it (see the module docstring)."""
    meta = model.meta
    primary = hdulist[0].header
    cards = meta.header_cards.instance if meta.hasattr("header_cards") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # long string values
        for keyword, value in (cards or {}).items():
            if keyword not in primary and isinstance(value, (str, int, float, bool)):
                primary[keyword] = value
        if "SCI" in hdulist:
            sci = hdulist["SCI"].header
            for keyword in _SCI_PHOTOMETRY:
                if keyword in primary:
                    sci[keyword] = (primary[keyword], primary.comments[keyword])
        resample = _resample(meta)
        has_members = resample is not None and resample.hasattr("members")
        members = [dict(member) for member in resample.members.instance] if has_members else []
        if not members:
            return
        units = "counts" if meta.units == "counts" else "cps"
        filename = meta.filename or ""
        for number, member in enumerate(members[:MAX_KEYWORD_INPUTS], start=1):
            _input_keywords(primary, number, member, resample, filename, units)
        if len(members) > MAX_KEYWORD_INPUTS:
            log.info(
                "%s: %d inputs, D%%03d keywords for the first %d; HDRTAB lists all",
                filename, len(members), MAX_KEYWORD_INPUTS,
            )  # fmt: skip
    if "HDRTAB" in hdulist:  # a product read back and saved again
        del hdulist["HDRTAB"]
    hdulist.append(table_hdu(members))
