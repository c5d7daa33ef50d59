"""Writers for per-exposure products in the *input's own layout* (``_crf``, ``_crclean``) and
small multi-extension side products (``_blot``, ``_crmask``).

Everything is written atomically (temporary file in the target directory, then rename) and the
input files are only read: users get CR-flagged copies of their exposures without any risk to
the originals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..exceptions import DrizzlepipeInputError
from ._atomic import atomic_target
from .naming import COPY_SUFFIXES, strip_extension
from .readers._common import split_selector

__all__ = [
    "write_fits_atomic",
    "write_exposure_copy",
    "write_copies",
    "plan_copies",
    "write_chip_arrays",
    "source_key",
]


def write_fits_atomic(hdulist, path):
    """Write ``hdulist`` to ``path`` through a temporary file and a rename; returns the path."""
    with atomic_target(path, ".fits") as tmp_name:
        hdulist.writeto(tmp_name, overwrite=True, output_verify="silentfix")
    return str(path)


def _source_file(model):
    source = model.meta.source.path if model.meta.hasattr("source") else None
    if not source:
        return None
    path, _ = split_selector(source)
    return path if path.is_file() else None


def write_exposure_copy(models, path, *, data_override=None):
    """Write a copy of an exposure's input file with the chips' current DQ and sky.

    Parameters
    ----------
    models : list of ImageModel
        The chips of one exposure, as read from the same input file.
    path : str or Path
        Output file (e.g. ``<root>_crf.fits``).
    data_override : list of ndarray or None
        Replacement SCI arrays per chip (the ``_crclean`` product), in the chip's units.

    Returns
    -------
    str
        The path written.

    Notes
    -----
    HST files keep every extension of the original; each chip's DQ is replaced (in the
    original DQ dtype) and ``MDRIZSKY`` is set in its SCI header. JWST files are rewritten
    through ``stdatamodels.jwst`` with the new DQ and ``meta.background``. Models without a
    readable source file are saved as drizzlepipe ImageModels (one file per chip when there
    are several).
    """
    source = _source_file(models[0])
    fmt = models[0].meta.source.format
    if source is None or fmt == "drizzlepipe":
        if len(models) == 1:
            model = models[0].copy()
            if data_override is not None:
                model.data = data_override[0]
            return model.save(str(path))
        written = []
        for model, index in zip(models, range(len(models))):
            chip_path = Path(path).with_name(f"{Path(path).stem}_chip{index + 1}.fits")
            copy = model.copy()
            if data_override is not None:
                copy.data = data_override[index]
            written.append(copy.save(str(chip_path)))
        return written[0]
    if fmt == "jwst":
        return _write_jwst_copy(models[0], source, path, data_override)
    with fits.open(source, memmap=False) as original:
        hdulist = fits.HDUList([hdu.copy() for hdu in original])
    _mark_copy(hdulist[0].header, path)
    for index, model in enumerate(models):
        extver = int(model.meta.chip or 1)
        if fmt == "hst":
            sci_key, dq_key = ("SCI", extver), ("DQ", extver)
        else:  # plain FITS: the image HDU, plus a DQ extension
            sci_key, dq_key = _first_image_index(hdulist), "DQ"
        sci = hdulist[sci_key]
        sci.header["MDRIZSKY"] = (
            float(model.meta.background.level or 0.0),
            "Sky value computed by drizzlepipe",
        )
        if data_override is not None:
            sci.data = np.asarray(data_override[index], dtype=sci.data.dtype)
        _replace_dq(hdulist, dq_key, model.dq, extver)
    return write_fits_atomic(hdulist, path)


def _mark_copy(header, path):
    """Mark a copy as drizzlepipe's (``DPSOFT``, ``DPPRODTP``), so that a glob over the
    directory leaves it out of the next run's inputs."""
    header["DPSOFT"] = ("drizzlepipe", "Software that wrote this copy")
    header["DPPRODTP"] = (_copy_kind(path), "drizzlepipe product: copy of an exposure")


def _copy_kind(path):
    """``crf``, ``crclean`` or ``sky`` from the product's file name (``copy`` otherwise)."""
    stem = strip_extension(path)
    return next((kind for kind in COPY_SUFFIXES if stem.endswith(f"_{kind}")), "copy")


def write_copies(models, path_for, *, data_override=None):
    """Write one :func:`write_exposure_copy` per input file among ``models``.

    Parameters
    ----------
    models : list of ImageModel
        Chips of one exposure (which may come from several files, e.g. the detectors of a
        JWST exposure).
    path_for : callable
        ``path_for(input file) -> output path``, given the file's :func:`source_key`.
    data_override : list of ndarray or None
        Replacement SCI arrays, one per model.

    Returns
    -------
    list of str
        The paths written.

    Raises
    ------
    DrizzlepipeInputError
        If an output path is one of the input files (they are never overwritten).
    """
    written = []
    for indices, path in plan_copies(models, path_for):
        override = None if data_override is None else [data_override[i] for i in indices]
        written.append(
            write_exposure_copy([models[i] for i in indices], path, data_override=override)
        )
    return written


def source_key(model):
    """The input file a chip model comes from (its path, without a chip selector), or its file
    name for a model built in memory: the chips of one key are copied into one file."""
    source = model.meta.source.path if model.meta.hasattr("source") else None
    if source:
        return str(split_selector(source)[0])
    return str(model.meta.filename)


def plan_copies(models, path_for):
    """The files :func:`write_copies` writes: ``[(indices of models, output path), ...]``,
    one per input file (:func:`source_key`), checked so that no input file is overwritten."""
    by_file = {}
    for index, model in enumerate(models):
        by_file.setdefault(source_key(model), []).append(index)
    plan = []
    for key, indices in by_file.items():
        path = Path(path_for(key))
        source = _source_file(models[indices[0]])
        if source is not None and path.resolve() == source.resolve():
            raise DrizzlepipeInputError(
                source, f"refusing to overwrite an input file with its product {path.name}"
            )
        plan.append((indices, path))
    return plan


def _first_image_index(hdulist):
    for index, hdu in enumerate(hdulist):
        if hdu.header.get("NAXIS", 0) == 2:
            return index
    return 0


def _replace_dq(hdulist, key, dq, extver):
    try:
        hdu = hdulist[key]
    except KeyError:
        hdu = None
    if hdu is None:
        hdulist.append(fits.ImageHDU(dq.astype(np.uint32), name="DQ", ver=extver))
        return
    dtype = hdu.data.dtype if hdu.data is not None else np.dtype(np.int16)
    for name in ("NPIX1", "NPIX2", "PIXVALUE"):
        hdu.header.remove(name, ignore_missing=True)
    if np.issubdtype(dtype, np.signedinteger):
        # Keep the bit pattern (HST DQ is int16 holding 16 flag bits).
        unsigned = np.dtype(dtype.str.replace("i", "u").lstrip("<>=|"))
        hdu.data = dq.astype(unsigned).view(dtype.newbyteorder("="))
    else:
        hdu.data = dq.astype(dtype)


def _write_jwst_copy(model, source, path, data_override):
    from stdatamodels.jwst import datamodels as jwst_datamodels

    with jwst_datamodels.open(str(source)) as original:
        copy = original.copy()
    copy.dq = model.dq.astype(np.uint32)
    if not copy.meta.background.subtracted:
        # the copy holds the original data: record the sky we found, not subtracted
        copy.meta.background.level = float(model.meta.background.level or 0.0)
        copy.meta.background.subtracted = False
    if data_override is not None:
        copy.data = np.asarray(data_override[0], dtype=np.float32)
    with atomic_target(path, ".fits") as tmp_name:
        copy.save(tmp_name)
        with fits.open(tmp_name, mode="update") as written:
            _mark_copy(written[0].header, path)
    return str(path)


def write_chip_arrays(arrays, path, *, extname, headers=None, dtype=np.float32):
    """Write one image extension per chip (``EXTNAME=extname``, ``EXTVER`` = chip number).

    Parameters
    ----------
    arrays : list of (int, ndarray)
        ``(chip number, array)`` pairs.
    path : str or Path
        Output file.
    extname : str
        Extension name (``BLOT``, ``CRMASK``).
    headers : list of astropy.io.fits.Header or None
        Extra header cards per chip (e.g. the chip WCS).
    dtype : numpy dtype
        Data type written.

    Returns
    -------
    str
        The path written.
    """
    hdus = [fits.PrimaryHDU()]
    for index, (chip, array) in enumerate(arrays):
        hdu = fits.ImageHDU(np.asarray(array, dtype=dtype), name=extname, ver=int(chip))
        if headers is not None and headers[index] is not None:
            hdu.header.update(headers[index])
        hdus.append(hdu)
    return write_fits_atomic(fits.HDUList(hdus), path)
