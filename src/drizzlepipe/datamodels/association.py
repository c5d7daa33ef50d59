"""Inputs -> a chip-level association: which files, which exposures, which chips.

Accepted inputs: a single file, a list of names, a glob pattern (``'*flt.fits'``), an ``@file``
list (one name per line, ``#`` comments), an association JSON in the JWST layout
(``products[0].name``, ``members[].expname``, ``exptype``) or an HST association table
(``_asn.fits``: its EXP-* members present on disk, the PROD-* member as the product name).

Exposure identity is decided here, from headers only (:func:`~.readers.inspect_file`):

* one HST file is one exposure whose SCI extensions are its chips, never merged with another
  file whatever their ROOTNAME says; a STIS file holds one exposure per imset; JWST detectors
  of one exposure share its group, as in the JWST pipeline;
* two inputs that are the same exposure (HST: instrument, detector, ROOTNAME and EXPSTART, as
  an ``_flt`` and its ``_flc``; JWST: exposure and detector) are refused with an error naming
  both files;
* products of drizzlepipe or AstroDrizzle (``_crf``, ``_single``, ``_med``, ``_drz``, ``_blt``
  ...) and association tables matched by a glob are left out with a warning; named on their
  own, a resampled product is refused (it is not an exposure);
* inputs of different instruments or filters are refused unless ``allow_mixed=True`` (then
  a warning): a product header can describe only one photometric system.

Anything the readers will have to assume about a file (a gain, units) is logged once here.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..exceptions import DrizzlepipeInputError
from .naming import exposure_root
from .readers import ExposureRecord, inspect_file, split_selector
from .readers._common import reading

__all__ = [
    "build_association",
    "check_exposures",
    "footprint_estimate",
    "instruments",
    "load_association",
    "model_records",
    "resolve_input_files",
]

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")

#: Files an HST association member may have, in order of preference: calibrated exposures.
_HST_MEMBER_SUFFIXES = ("_flt.fits", "_flc.fits", "_c0m.fits")


def _is_glob(text):
    # "file.fits[SCI,2]" is a chip selector, not a glob.
    _, selector = split_selector(text)
    return selector is None and bool(_GLOB_CHARS & set(text))


def _read_list_file(list_path):
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DrizzlepipeInputError(list_path, "@-list file not found")
    names = []
    for line in list_path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = line.split()[0]
            names.append(name if os.path.isabs(name) else str(list_path.parent / name))
    if not names:
        raise DrizzlepipeInputError(list_path, "@-list file names no inputs")
    return names


def load_association(asn_path):
    """Read an association JSON (JWST layout) and check it has ``products[0].members``."""
    asn_path = Path(asn_path)
    if not asn_path.is_file():
        raise DrizzlepipeInputError(asn_path, "association file not found")
    try:
        asn = json.loads(asn_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DrizzlepipeInputError(asn_path, f"not a valid association JSON ({exc})") from None
    products = asn.get("products") if isinstance(asn, Mapping) else None
    if not products or not isinstance(products, list) or "members" not in products[0]:
        raise DrizzlepipeInputError(asn_path, "association has no products[0].members")
    return asn


def _input_names(init):
    """``[(name, matched_by_glob), ...]`` for a file name, glob, ``@list`` or list of them."""
    items = [init] if isinstance(init, (str, Path)) else list(init)
    names = []
    for item in items:
        text = str(item)
        if text.lower().endswith(".json") and len(items) > 1:
            raise DrizzlepipeInputError(
                text, "an association must be the only input (its members are the exposures)"
            )
        if text.startswith("@"):
            names.extend((name, False) for name in _read_list_file(text[1:]))
        elif _is_glob(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise DrizzlepipeInputError(text, "glob pattern matches no files")
            names.extend((match, True) for match in matches)
        else:
            names.append((text, False))
    return names


def resolve_input_files(init):
    """Expand a file name, glob, ``@list`` or list of names into a list of paths.

    Parameters
    ----------
    init : str, Path or list of str/Path
        What the user gave.

    Returns
    -------
    list of str
        Paths (possibly with ``[SCI,n]`` selectors), in the user's order (globs sorted).
    """
    return [name for name, _ in _input_names(init)]


def _hst_asn_members(asn_path):
    """``(product name, member files)`` of an HST association table: the EXP-* members
    present (MEMPRSNT), each as the ``_flt``, ``_flc`` or ``_c0m`` file beside the table."""
    asn_path = Path(asn_path)
    with reading(asn_path, "1"), fits.open(asn_path, memmap=False) as hdulist:
        if len(hdulist) < 2 or not isinstance(hdulist[1], fits.BinTableHDU):
            raise DrizzlepipeInputError(asn_path, "association table without a table", "1")
        columns = {name.upper(): name for name in hdulist[1].columns.names}
        for needed in ("MEMNAME", "MEMTYPE"):
            if needed not in columns:
                raise DrizzlepipeInputError(asn_path, f"association table without {needed}", "1")
        table = hdulist[1].data
        names = [str(n).strip().lower() for n in table[columns["MEMNAME"]]]
        types = [str(t).strip().upper() for t in table[columns["MEMTYPE"]]]
        present = (
            [bool(p) for p in table[columns["MEMPRSNT"]]]
            if "MEMPRSNT" in columns
            else [True] * len(names)
        )
    product = next(
        (name for kind in ("PROD-DTH", "PROD-RPT", "PROD-CRJ")
         for name, memtype in zip(names, types) if memtype == kind),
        exposure_root(asn_path.name).removesuffix("_asn"),
    )  # fmt: skip
    exposures = [n for n, t, p in zip(names, types, present) if t.startswith("EXP") and p]
    if not exposures:
        raise DrizzlepipeInputError(asn_path, "association table has no EXP-* member present")
    files, missing = [], []
    for name in exposures:
        found = [asn_path.parent / f"{name}{s}" for s in _HST_MEMBER_SUFFIXES]
        found = [path for path in found if path.is_file()]
        if len(found) > 1:
            raise DrizzlepipeInputError(
                asn_path,
                f"member {name} has {' and '.join(p.name for p in found)}: the same exposure "
                "twice; give the files to drizzle instead (e.g. '*_flc.fits')",
            )
        (files if found else missing).append(found[0] if found else name)
    if missing and not files:
        # a STIS CR-split or repeated observation: one file, named after the product,
        # holds every member as an imset
        for suffix in _HST_MEMBER_SUFFIXES:
            if (combined := asn_path.parent / f"{product}{suffix}").is_file():
                return product, [combined]
    if missing:
        raise DrizzlepipeInputError(
            asn_path,
            f"members not found beside the table: {', '.join(missing)} "
            f"(looked for {'/'.join(_HST_MEMBER_SUFFIXES)})",
        )
    return product, files


def _records_of(names, options, base_dir=None):
    """Exposure records of the inputs, with association tables expanded and products that a
    glob matched left out (warned); ``(records, product name of an HST table or None)``."""
    records, product = [], None
    for name, from_glob in names:
        path, selector = split_selector(name)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        for record in inspect_file(path, selector, options=options):
            if record.asn_table:
                if from_glob:
                    log.warning("%s: an association table matched by the glob: left out", path)
                    continue
                product, files = _hst_asn_members(path)
                inner, _ = _records_of([(str(f), False) for f in files], options)
                records.extend(inner)
            elif from_glob and (kind := record.product or record.named_like) is not None:
                log.warning(
                    "%s: a %s product, not an exposure: left out of the inputs",
                    path, "drizzle" if kind == "resampled" else kind,
                )  # fmt: skip
            elif record.product == "resampled":
                raise DrizzlepipeInputError(path, "a drizzled product, not an exposure")
            else:
                records.append(record)
    return records, product


def _name_groups(records):
    """Give every record a group id (its file's root name when the reader did not decide), so
    that two different files never share one unless they are detectors of one JWST exposure."""
    owner = {}
    for record in records:
        group = record.group_id or exposure_root(record.path.name)
        if record.telescope != "JWST":
            base, number = group, 1
            while owner.get(group, record.path) != record.path:
                number += 1
                group = f"{base}_{number}"
            owner[group] = record.path
        record.group_id = group


def check_exposures(records, *, allow_mixed=False):
    """Refuse two inputs that are the same exposure, and (unless ``allow_mixed``) inputs of
    different photometric modes; report what the readers will assume, once per file.

    Parameters
    ----------
    records : list of ExposureRecord
        One per exposure.
    allow_mixed : bool
        Combine different instruments or filters anyway (warned).

    Raises
    ------
    DrizzlepipeInputError
        Naming both files of a duplicated exposure, or the files of the different modes.
    """
    seen_identity, seen_timing, seen_similar, rootnames = {}, {}, {}, {}
    for record in records:
        first = seen_identity.setdefault(record.identity, record) if record.identity else None
        timed = seen_timing.setdefault(record.timing, record) if record.timing else None
        if (
            timed is not None
            and timed.path != record.path
            and None in (timed.identity, record.identity)
        ):
            first = timed  # a ROOTNAME is missing: the same detector at the same time
        if first is not None and first.path != record.path:
            hint = " (e.g. the _flc or the _flt file)" if record.telescope == "HST" else ""
            raise DrizzlepipeInputError(
                record.path,
                f"the same exposure as {first.path} ({_describe(record)}): give only one "
                f"of them{hint}",
            )
        similar = seen_similar.setdefault(record.similar, record) if record.similar else None
        if similar is not None and similar.path != record.path:
            log.warning(
                "%s and %s have the same instrument, start and exposure time: the same "
                "exposure twice? (kept both; remove one if so)", similar.path, record.path,
            )  # fmt: skip
        if record.identity is None and record.rootname and record.telescope == "HST":
            other = rootnames.setdefault(record.rootname, record)
            if other.path != record.path:
                log.warning(
                    "%s and %s carry the same ROOTNAME %s and no EXPSTART: taken as different "
                    "exposures; drop one if they are the same",
                    other.path, record.path, record.rootname,
                )  # fmt: skip
    kinds = {}
    for record in records:
        if record.per_area is not None:
            kinds.setdefault(record.per_area, record.path)
    if len(kinds) > 1:
        raise DrizzlepipeInputError(
            kinds[False],
            f"data per pixel (counts or rates), while {kinds[True].name} is surface brightness "
            "(MJy/sr): they cannot be drizzled together (a JWST _rate with _cal files?)",
        )
    modes = {}
    for record in records:
        if record.photometric_mode:
            modes.setdefault(record.photometric_mode, record.path)
    if len(modes) > 1:
        listing = "; ".join(f"{mode} ({path.name})" for mode, path in modes.items())
        if not allow_mixed:
            raise DrizzlepipeInputError(
                None,
                f"inputs of different instruments or filters: {listing}; one product can "
                "describe one of them only (allow_mixed=True, strun --allow_mixed=true, "
                "combines them anyway)",
            )
        log.warning("Combining inputs of different instruments or filters: %s", listing)
    reported = set()
    for record in records:
        if record.path not in reported:
            reported.add(record.path)
            for note in record.notes:
                log.warning("%s: %s", record.path, note)


def _describe(record):
    if record.telescope == "JWST":
        return f"JWST exposure {record.group_id}, detector {record.detector}"
    if record.identity is not None and record.identity[0] == "HST":
        _, instrument, detector, rootname, expstart = record.identity
        return f"{instrument}/{detector} ROOTNAME {rootname}, EXPSTART {expstart}"
    if record.timing is not None:
        _, instrument, detector, expstart, exptime = record.timing
        return f"{instrument}/{detector} EXPSTART {expstart}, EXPTIME {exptime}"
    return "same instrument, detector, start and exposure time"


def footprint_estimate(records):
    """What the memory model needs, from the records' headers: the largest chip's pixels, an
    estimate of the output grid's pixels, the numbers of chips and exposures.

    The output grid is the bounding box of every chip corner in a tangent plane at the first
    chip's corner, its axes along the first chip's rows (the default grid is rotated like the
    first chip), at the finest chip scale; without a readable WCS in some header, the sum of
    the chips' pixels stands for it (an upper bound for dithered exposures)."""
    footprints = [f for record in records for f in record.footprints]
    pixels = [f[0] for f in footprints] or [0]
    sizes = {"chip_pixels": max(pixels), "n_chips": len(footprints),
             "n_exposures": len(records), "output_pixels": sum(pixels)}  # fmt: skip
    if footprints and all(f[1] is not None for f in footprints):
        corners = np.concatenate([f[1] for f in footprints])
        ra0, dec0 = np.deg2rad(corners[0])
        ra, dec = np.deg2rad(corners[:, 0]), np.deg2rad(corners[:, 1])
        cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
        xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
        eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
        scale = np.deg2rad(min(f[2] for f in footprints))
        angle = np.arctan2(eta[1] - eta[0], xi[1] - xi[0])  # the first chip's x axis
        along = xi * np.cos(angle) + eta * np.sin(angle)
        across = -xi * np.sin(angle) + eta * np.cos(angle)
        area = np.ptp(along) * np.ptp(across) / scale**2
        if np.isfinite(area) and area > 0:
            sizes["output_pixels"] = int(area)
    return sizes


def build_association(init, *, allow_mixed=False, options=None):
    """Build a chip-level association dict from any accepted input form.

    Parameters
    ----------
    init : str, Path, or list of str/Path
        Association JSON or HST ``_asn.fits``, single file, glob, ``@list`` or list of names.
    allow_mixed : bool
        Accept inputs of different instruments or filters (warned).
    options : dict, optional
        Reader options (``units``, ``gain``...): quantities the user states are not reported
        as assumed.

    Returns
    -------
    dict
        ``{"products": [{"name": ..., "members": [...]}], "table_name": ...}`` with one
        science member per chip and ``group_id`` set (the exposure's name), ``sizes``
        (:func:`footprint_estimate`) and ``instruments`` (:func:`instruments`).
    """
    name, table_name, base_dir = None, None, None
    if isinstance(init, (str, Path)) and str(init).lower().endswith(".json"):
        asn_path = Path(init).resolve()
        product = load_association(asn_path)["products"][0]
        science = [
            m for m in product["members"] if str(m.get("exptype", "science")).lower() == "science"
        ]
        if not science:
            raise DrizzlepipeInputError(asn_path, "association has no science members")
        for member in science:
            if "expname" not in member:
                raise DrizzlepipeInputError(asn_path, f"member without expname: {member}")
            member_path, _ = split_selector(member["expname"])
            if not member_path.is_absolute():
                member_path = asn_path.parent / member_path
            if not member_path.exists():
                raise DrizzlepipeInputError(
                    asn_path, f"association member {member['expname']!r} not found ({member_path})"
                )
        names = [(m["expname"], False) for m in science]
        name, table_name, base_dir = product.get("name"), asn_path.name, asn_path.parent
    else:
        names = _input_names(init)
        if not names:
            raise DrizzlepipeInputError(None, "no inputs given")
        table_name = Path(split_selector(names[0][0])[0]).name
    records, hst_product = _records_of(names, options or {}, base_dir)
    if not records:
        raise DrizzlepipeInputError(None, f"no exposure among the inputs {init!r}")
    _name_groups(records)
    check_exposures(records, allow_mixed=allow_mixed)
    members, seen = [], set()
    for record in records:
        for expname in record.members:
            if expname in seen:
                raise DrizzlepipeInputError(record.path, f"duplicate input ({expname} twice)")
            seen.add(expname)
            members.append({"expname": expname, "exptype": "science", "group_id": record.group_id})
    product = {"members": members}
    if name or hst_product:
        product["name"] = name or hst_product
    return {"products": [product], "table_name": table_name,
            "sizes": footprint_estimate(records), "instruments": instruments(records)}  # fmt: skip


def instruments(records):
    """``[telescope, instrument, detector]`` of every record (one per exposure; per detector
    for JWST, whose exposures span several), as the headers say them: what the pipeline's
    ``preset=auto`` decides by (:mod:`drizzlepipe.presets`)."""
    return [[record.telescope, record.instrument, record.detector] for record in records]


def model_records(models):
    """:class:`ExposureRecord` of in-memory chip models (one per exposure), for
    :func:`check_exposures` on a library built from models."""
    records = {}
    for model in models:
        meta = model.meta
        source = meta.source.path if meta.hasattr("source") and meta.source.path else None
        path = Path(split_selector(source)[0]) if source else Path(meta.filename or "model")
        key = (meta.group_id, str(path))
        if key in records:
            continue
        telescope = str(meta.telescope or "")
        instrument, detector = str(meta.instrument.name or ""), str(meta.instrument.detector or "")
        rootname = meta.rootname if meta.hasattr("rootname") else None
        start = meta.exposure.start if meta.exposure.hasattr("start") else None
        identity = timing = None
        exptime = meta.exposure.exptime if meta.exposure.hasattr("exptime") else None
        if telescope == "HST" and rootname and start is not None:
            identity = ("HST", instrument.upper(), detector.upper(), rootname, float(start))
        elif telescope == "JWST" and meta.group_id:
            identity = ("JWST", meta.group_id, detector.upper())
        if telescope == "HST" and start is not None and exptime is not None:
            timing = ("HST", instrument.upper(), detector.upper(), float(start), float(exptime))
        filters = str(meta.instrument.filter or "").upper().replace(";", " ")
        parts = [telescope, instrument, detector if telescope != "JWST" else "", filters]
        per_area = meta.units == "surface_brightness" if meta.units else None
        records[key] = ExposureRecord(
            path, [], group_id=meta.group_id, telescope=telescope, instrument=instrument,
            per_area=per_area,
            detector=detector, identity=identity, timing=timing, rootname=rootname,
            photometric_mode=" ".join(p for p in parts if p) if filters else "",
        )  # fmt: skip
    return list(records.values())
