"""Turn files on disk into drizzlepipe models without ever modifying them.

:func:`open_path` understands HST FLT/FLC files (one :class:`ImageModel` per SCI extension),
JWST ``_cal`` images, plain FITS images with a celestial WCS and drizzlepipe's own FITS/ASDF
products. A single chip can be selected with ``"file.fits[SCI,2]"``.
"""

from __future__ import annotations

from pathlib import Path

import asdf
from astropy.io import fits

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel, ResampledModel
from ._common import chip_member_name, file_kind, open_fits, split_selector
from .generic import read_plain_fits
from .hst import is_hst, read_hst_chip, sci_extvers
from .jwst import convert_jwst_model, group_id_from_header, is_jwst, read_jwst_image

__all__ = [
    "open_path",
    "product_model_type",
    "chip_members",
    "split_selector",
    "chip_member_name",
    "convert_jwst_model",
]

_OWN_MODELS = {"ImageModel": ImageModel, "ResampledModel": ResampledModel}


def _own_model_class(primary_header):
    if str(primary_header.get("DPSOFT", "")).strip().lower() != "drizzlepipe":
        return None
    return _OWN_MODELS.get(str(primary_header.get("DATAMODL", "")).strip())


def _open_own(cls, path):
    try:
        return cls(str(path))
    except Exception as exc:  # stdatamodels/asdf raise many types for damaged files
        raise DrizzlepipeInputError(path, f"damaged drizzlepipe product ({exc})") from None


def _open_asdf(path):
    try:
        with asdf.open(path, lazy_load=True, memmap=False) as af:
            model_type = af.tree.get("meta", {}).get("model_type")
    except Exception as exc:  # asdf raises many types for damaged files
        raise DrizzlepipeInputError(path, f"unreadable ASDF file ({exc})") from None
    cls = _OWN_MODELS.get(model_type)
    if cls is None:
        raise DrizzlepipeInputError(
            path, f"ASDF file is not a drizzlepipe model (meta.model_type={model_type!r})"
        )
    return _open_own(cls, path)


def open_path(name, *, units=None, exptime=None):
    """Open one file (or one chip of it) as drizzlepipe model(s).

    Parameters
    ----------
    name : str or Path
        A file, optionally with a chip selector ``[SCI,n]``.
    units : str, optional
        ``counts``, ``countrate`` or ``surface_brightness``, overriding/replacing BUNIT.
    exptime : float, optional
        Exposure time [s] overriding/replacing the header's.

    Returns
    -------
    ImageModel, list of ImageModel or ResampledModel
        A list (in SCI extension order) for multi-chip HST exposures without a selector.
    """
    path, selector = split_selector(name)
    kind = file_kind(path)
    if kind == "asdf":
        return _open_asdf(path)
    with open_fits(path) as hdulist:
        primary = hdulist[0].header
        if (cls := _own_model_class(primary)) is not None:
            return _open_own(cls, path)
        if is_jwst(primary):
            hdulist.close()
            return read_jwst_image(path, units=units, exptime=exptime)
        versions = sci_extvers(hdulist)
        if is_hst(primary) or versions:
            if not versions:
                raise DrizzlepipeInputError(path, "HST file without SCI extensions")
            if selector is not None:
                extname, extver = selector
                if extname != "SCI" or extver not in versions:
                    where = f"{extname},{extver}"
                    problem = f"no such extension (SCI extensions: {versions})"
                    raise DrizzlepipeInputError(path, problem, where)
                return read_hst_chip(hdulist, path, extver, units=units, exptime=exptime)
            chips = [
                read_hst_chip(hdulist, path, extver, units=units, exptime=exptime)
                for extver in versions
            ]
            return chips[0] if len(chips) == 1 else chips
        return read_plain_fits(hdulist, path, units=units, exptime=exptime)


def product_model_type(name):
    """``"ImageModel"``/``"ResampledModel"`` for a drizzlepipe product file, else None.

    Reads only the primary header (FITS) or the tree (ASDF); never raises for missing or
    foreign files, so callers can use it to route inputs.
    """
    path, selector = split_selector(name)
    if selector is not None or not path.is_file():
        return None
    try:
        kind = file_kind(path)
        if kind == "asdf":
            with asdf.open(path, lazy_load=True, memmap=False) as af:
                return af.tree.get("meta", {}).get("model_type")
        cls = _own_model_class(fits.getheader(path, 0))
    except Exception:  # a foreign or damaged file is not one of our products
        return None
    return cls.__name__ if cls is not None else None


def chip_members(path):
    """Association member names for the chips in ``path`` (reads headers only).

    Returns
    -------
    list of (str, str or None)
        ``(member name, group_id)`` pairs: ``"/abs/file.fits[SCI,n]"`` for each SCI extension
        of an HST exposure, the plain path for one-chip files. ``group_id`` is the HST
        ROOTNAME when known, else None (the reader decides).
    """
    path = Path(path).resolve()
    if file_kind(path) == "asdf":
        return [(str(path), None)]
    with open_fits(path) as hdulist:
        primary = hdulist[0].header
        if is_jwst(primary):
            return [(str(path), group_id_from_header(primary, None))]
        if _own_model_class(primary) is not None:
            return [(str(path), None)]
        versions = sci_extvers(hdulist)
        if not versions:
            return [(str(path), None)]
        root = str(primary.get("ROOTNAME", "")).strip().lower() or path.name.split("_")[0]
        return [(chip_member_name(path, v), root) for v in versions]
