"""Reader for JWST level-2 ``_cal`` images through ``stdatamodels.jwst``.

The JWST model keeps its gwcs, surface-brightness units (MJy/sr), ERR and VAR_* arrays; sky
bookkeeping (``meta.background``) and the DQ convention (DO_NOT_USE, OUTLIER) carry over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel
from ..naming import exposure_root
from ._common import clear_bits, units_from

__all__ = ["is_jwst", "read_jwst_image", "convert_jwst_model"]


def is_jwst(primary_header):
    """True for files whose primary header says TELESCOP = 'JWST'."""
    return str(primary_header.get("TELESCOP", "")).strip().upper() == "JWST"


def read_jwst_image(path, *, units=None, exptime=None, resetbits=None, gain=None, readnoise=None):
    """Open a JWST ``_cal`` image file and convert it to an :class:`ImageModel`.

    ``gain`` and ``readnoise`` are accepted for a uniform reader interface and not used: JWST
    data are surface brightness whose noise comes from ERR and VAR_* arrays.
    """
    from stdatamodels.jwst import datamodels as jwst_datamodels

    path = Path(path)
    try:
        jwst_model = jwst_datamodels.open(str(path))
    except Exception as exc:  # stdatamodels raises many types for broken files
        raise DrizzlepipeInputError(path, f"not a readable JWST datamodel ({exc})") from None
    with jwst_model:
        return convert_jwst_model(
            jwst_model, path, units=units, exptime=exptime, resetbits=resetbits
        )


#: meta.observation attributes and FITS keywords of JWST's exposure grouping, in order.
_GROUP_PARTS = (
    ("program_number", "PROGRAM"),
    ("observation_number", "OBSERVTN"),
    ("visit_number", "VISIT"),
    ("visit_group", "VISITGRP"),
    ("sequence_id", "SEQ_ID"),
    ("activity_id", "ACT_ID"),
    ("exposure_number", "EXPOSURE"),
)


def jwst_group_id(parts, fallback):
    """JWST's exposure grouping (as ``jwst.datamodels.utils.group_id``): detectors of one
    exposure share it. ``parts``: program, observation, visit, visit group, sequence,
    activity, exposure; ``fallback`` when any is missing."""
    parts = list(parts)
    if any(part in (None, "") for part in parts):
        return fallback
    return "jw{}{}{}_{}{}{}_{}".format(*parts)


def group_id_from_header(header, fallback):
    """:func:`jwst_group_id` from a primary header (no arrays read)."""
    return jwst_group_id((header.get(key) for _, key in _GROUP_PARTS), fallback)


def _jwst_group_id(meta, fallback):
    observation = meta.observation
    return jwst_group_id((getattr(observation, name, None) for name, _ in _GROUP_PARTS), fallback)


#: stdatamodels.jwst attributes -> primary-header keywords that products carry.
_CARRIED = (
    ("target.catalog_name", "TARGNAME"),
    ("target.proposer_name", "TARGPROP"),
    ("observation.program_number", "PROGRAM"),
    ("observation.date", "DATE-OBS"),
    ("observation.time", "TIME-OBS"),
    ("instrument.name", "INSTRUME"),
    ("instrument.detector", "DETECTOR"),
    ("instrument.filter", "FILTER"),
    ("instrument.pupil", "PUPIL"),
    ("instrument.channel", "CHANNEL"),
    ("instrument.module", "MODULE"),
)

#: stdatamodels.jwst ``meta.photometry`` attributes -> our ``meta.photometry`` names.
_PHOTOMETRY = (
    ("conversion_megajanskys", "photmjsr"),
    ("conversion_microjanskys", "photuja2"),
    ("pixelarea_steradians", "pixar_sr"),
    ("pixelarea_arcsecsq", "pixar_a2"),
)


def _attribute(meta, dotted):
    value = meta
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def convert_jwst_model(jwst_model, path=None, *, units=None, exptime=None, resetbits=None):
    """Convert an in-memory ``stdatamodels.jwst`` ImageModel into our :class:`ImageModel`.

    ``resetbits`` (JWST flag names or bits) are cleared in the converted DQ only.
    """
    name = path if path is not None else (jwst_model.meta.filename or "jwst_model")
    path = Path(name)
    ext = "SCI"
    data = getattr(jwst_model, "data", None)
    if data is None or np.ndim(data) != 2:
        raise DrizzlepipeInputError(path, "not a 2-D image model", ext)
    shape = data.shape
    for array_name in ("dq", "err", "var_rnoise", "var_poisson", "var_flat"):
        array = getattr(jwst_model, array_name, None)
        if array is not None and array.shape != shape:
            raise DrizzlepipeInputError(
                path, f"shape {array.shape} differs from the SCI shape {shape}", array_name.upper()
            )
    meta_in = jwst_model.meta
    wcs = getattr(meta_in, "wcs", None)
    if wcs is None:
        raise DrizzlepipeInputError(path, "no WCS in meta.wcs (run assign_wcs first)", ext)
    exposure = meta_in.exposure
    exp = exptime
    if exp is None:
        for attr in ("exposure_time", "effective_exposure_time", "measurement_time"):
            exp = getattr(exposure, attr, None)
            if exp is not None:
                break
    if exp is None or not np.isfinite(exp) or exp <= 0:
        raise DrizzlepipeInputError(path, f"no positive exposure time (found {exp})", ext)
    kind, electrons, bunit = units_from(getattr(meta_in, "bunit_data", None), path, ext, units)

    err = getattr(jwst_model, "err", None)
    model = ImageModel(
        data=np.asarray(data, np.float32),
        dq=clear_bits(
            np.array(getattr(jwst_model, "dq", np.zeros(shape)), np.uint32), resetbits, "jwst"
        ),
        err=np.asarray(err if err is not None else np.zeros(shape), np.float32),
    )
    for array_name in ("var_rnoise", "var_poisson", "var_flat"):
        array = getattr(jwst_model, array_name, None)
        if array is not None and np.size(array):
            setattr(model, array_name, np.asarray(array, np.float32))
    meta = model.meta
    meta.filename = path.name
    meta.telescope = "JWST"
    meta.instrument.name = str(meta_in.instrument.name or "")
    meta.instrument.detector = str(meta_in.instrument.detector or "")
    if meta_in.instrument.filter:
        meta.instrument.filter = str(meta_in.instrument.filter)
    meta.chip = 1
    meta.wcs = wcs
    meta.exposure.exptime = float(exp)
    if exposure.start_time is not None:
        meta.exposure.start = float(exposure.start_time)
    if exposure.end_time is not None:
        meta.exposure.end = float(exposure.end_time)
    meta.units = kind
    meta.bunit = bunit
    meta.detector.in_electrons = bool(electrons) if electrons is not None else True
    meta.detector.gain = 1.0
    meta.detector.readnoise = 0.0
    meta.detector.readout_direction = 0
    area = getattr(meta_in.photometry, "pixelarea_arcsecsq", None)
    if area:
        meta.detector.pixel_scale = float(np.sqrt(area))
    meta.dq_convention = "jwst"
    meta.has_err = err is not None
    background = meta_in.background
    meta.background.level = float(background.level) if background.level is not None else 0.0
    meta.background.subtracted = bool(background.subtracted) if background.subtracted else False
    for source, name in _PHOTOMETRY:
        if (value := _attribute(meta_in, f"photometry.{source}")) is not None:
            setattr(meta.photometry, name, float(value))
    cards = {"TELESCOP": "JWST"}
    for attribute, keyword in _CARRIED:
        if (value := _attribute(meta_in, attribute)) not in (None, ""):
            cards[keyword] = value
    meta.header_cards = cards
    meta.rootname = exposure_root(path.name)
    meta.group_id = str(
        getattr(meta_in, "group_id", None) or _jwst_group_id(meta_in, path.name.split("_cal")[0])
    )
    meta.source.path = str(path.resolve()) if path.exists() else str(path)
    meta.source.format = "jwst"
    meta.source.extension = ext
    return model
