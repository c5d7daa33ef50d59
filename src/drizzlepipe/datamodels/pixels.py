"""Pixels read from the input file when they are used, not kept between steps.

A library of files keeps every chip's *state* in memory (metadata, WCS, DQ, static mask, the
cosmic rays found), which the steps change, and reads the chip's *input arrays* (``data``,
``err``, ``time``, ``var_*``), which no step changes, from its file when a step uses them:
:func:`attach_pixel_source` records where they come from, the first access of ``model.data``
(or another of them) reads that array (:meth:`PixelSource.load`; :func:`load_pixels` reads them
all in one opening of the file, for code that uses several), and :func:`release_pixels` drops
them again (the library does so when the chip is shelved). The memory of a library is
then its state, about a third of the pixels, and a step holds the pixels only of the chips it
is working on. Reading again costs a read from the operating system's file cache (the inputs
are read in every step, as AstroDrizzle reads them).

Arrays read this way are **read-only**: no step changes input pixels in place. To change them,
assign a new array (``model.data = model.data - sky``); the chip then keeps that array in
memory, and its file is no longer read for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..exceptions import DrizzlepipeInputError

__all__ = [
    "PIXEL_ARRAYS",
    "PixelSource",
    "attach_pixel_source",
    "load_pixels",
    "pixel_rows",
    "release_pixels",
]

#: The arrays of a chip that come from its file unchanged (the steps change only metadata, DQ
#: and the static mask).
PIXEL_ARRAYS = ("data", "err", "time", "var_rnoise", "var_poisson", "var_flat")


@dataclass
class PixelSource:
    """Where the input arrays of a chip come from.

    Attributes
    ----------
    name : str
        The file with its chip selector (``path_flt.fits[SCI,1]``), as the library opened it.
    options : dict
        The reader options it was opened with (units, exposure time, gain...).
    names : tuple of str
        The arrays this source provides: those the chip had when it was read.
    shape : tuple of int
        The shape of the chip's ``data`` (known without reading it).
    stamp : tuple
        Size and modification time of the file when it was first read: a file changed during
        the run is refused, not read again.
    loaded : dict
        The arrays this source put into the model and that are still the model's.
    """

    name: str
    options: dict
    names: tuple
    shape: tuple
    stamp: tuple
    loaded: dict = field(default_factory=dict)

    def read(self, names=None, rows=None):
        """The source arrays (``names``, default all; a reader that opens the whole chip gives
        them all), read from the file as the reader made them, read-only; ``rows`` (a slice):
        only those rows (HST files read nothing else).

        Raises
        ------
        DrizzlepipeInputError
            When the file changed since it was first read, or cannot be read.
        """
        from .readers import read_pixel_arrays

        if _stamp(self.name) != self.stamp:
            raise DrizzlepipeInputError(
                self.name, "the input file changed during the run (its pixels are read again "
                "by every step): run again on files that stay unchanged",
            )  # fmt: skip
        wanted = self.names if names is None else names
        arrays = read_pixel_arrays(self.name, wanted, self.options, rows)
        for array in arrays.values():
            array.flags.writeable = False
        return arrays

    def load(self, model, names=None):
        """Put the arrays (``names``, default all) that the model does not hold into it, read
        from the file (with any others the reader had to read anyway)."""
        wanted = self.names if names is None else [n for n in names if n in self.names]
        missing = tuple(name for name in wanted if name not in model._instance)
        if not missing:
            return
        for name, array in self.read(missing).items():
            if name in self.names and name not in model._instance:
                model._instance[name] = array
                self.loaded[name] = array

    def release(self, model):
        """Drop the arrays this source loaded and the model still holds unchanged; an array
        the model was given instead (``model.data = ...``) stays, and is no longer the
        file's to provide."""
        for name in list(self.loaded):
            array = self.loaded.pop(name)
            if model._instance.get(name) is array:
                del model._instance[name]
            else:
                self.names = tuple(other for other in self.names if other != name)


def attach_pixel_source(model, name, options, *, names=None, shape=None):
    """Make the input arrays of ``model`` (read from ``name`` with reader ``options``) come from
    the file from now on: they become read-only and are dropped by :func:`release_pixels`.

    ``names`` and ``shape``: the arrays the file provides and the shape of ``data``, for a
    model read without them (default: those the model holds)."""
    if names is None:
        names = tuple(n for n in PIXEL_ARRAYS if isinstance(model._instance.get(n), np.ndarray))
    if shape is None:
        shape = model._instance["data"].shape
    names, shape = tuple(names), tuple(int(n) for n in shape)
    source = PixelSource(str(name), dict(options), names, shape, _stamp(name))
    for array_name in names:
        array = model._instance.get(array_name)
        if array is not None:
            array.flags.writeable = False
            source.loaded[array_name] = array
    model.__dict__["_pixel_source"] = source
    return source


def pixel_rows(model, name, rows):
    """Rows ``rows`` (a slice) of the input array ``name`` of ``model``: from memory when the
    model holds the array, else read from its file without the other rows (nothing is kept
    in the model)."""
    source = model.__dict__.get("_pixel_source")
    if source is None or name not in source.names or name in model._instance:
        return getattr(model, name)[rows]
    return source.read((name,), rows)[name]


def load_pixels(model):
    """Read the input arrays of ``model`` from its file if they are not in memory (a no-op for a
    model without a pixel source)."""
    source = model.__dict__.get("_pixel_source")
    if source is not None:
        source.load(model)


def release_pixels(model):
    """Drop the input arrays of ``model`` that its file provides (a no-op for a model without a
    pixel source, whose arrays are its only copy)."""
    source = model.__dict__.get("_pixel_source")
    if source is not None:
        source.release(model)


def _stamp(name):
    """Size and modification time (ns) of the file of ``name`` (a chip selector removed)."""
    from .readers import split_selector

    path = split_selector(name)[0]
    try:
        status = os.stat(path)
    except OSError as error:
        raise DrizzlepipeInputError(path, f"input file cannot be read ({error.strerror})") from None
    return status.st_size, status.st_mtime_ns
