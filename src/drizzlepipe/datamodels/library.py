"""Step inputs -> a :class:`ModelLibrary` of chips, grouped by exposure.

Accepted inputs: a single file, a Python list (of files or models), a glob pattern
(``'*flt.fits'``), an ``@file`` list (one name per line, ``#`` comments), an association JSON
in the JWST layout or an HST ``_asn.fits`` table (see :mod:`.association`, which also decides
exposure identity). Every multi-chip exposure is expanded into one member per SCI extension
(``file.fits[SCI,n]``), and its chips share a ``group_id``.

In memory (the default) a library of files keeps each chip's state (metadata, WCS, DQ, static
mask) and reads its pixels (SCI, ERR...) from the file when they are used, read-only
(:mod:`drizzlepipe.datamodels.pixels`): assign a new array to change them. With
``on_disk=True`` (the pipeline's ``in_memory=False``) models are kept as ASDF files in a
temporary directory and only borrowed ones are in RAM. A library of models keeps them whole.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import asdf
import numpy as np
from stdatamodels import DataModel
from stpipe.library import AbstractModelLibrary, NoGroupID
from stpipe.step import Step as StpipeStep

from ..exceptions import DrizzlepipeInputError
from ._atomic import atomic_target
from .association import (
    build_association,
    check_exposures,
    instruments,
    load_association,
    model_records,
    resolve_input_files,
)
from .models import DrizDataModel, ImageModel
from .naming import exposure_root
from .pixels import PIXEL_ARRAYS, attach_pixel_source, release_pixels
from .readers import convert_jwst_model, open_path, split_selector
from .readers._common import clear_bits
from .units import electrons_per_unit
from .writers import source_key

__all__ = ["ModelLibrary", "build_association", "resolve_input_files"]

# borrow and shelve of chips read by several threads (ModelLibrary.read_chip)
_LEDGER_LOCK = threading.Lock()


class ModelLibrary(AbstractModelLibrary):
    """A library of :class:`ImageModel` chips built from any accepted input form.

    Parameters
    ----------
    init : str, Path, list, dict or ModelLibrary
        See the module docstring; a list may hold models (or lists of chip models).
    on_disk : bool
        Keep shelved models as temporary ASDF files instead of in memory.
    temp_directory : str or Path, optional
        Where the temporary files go (default: a new directory in the working directory).
    allow_mixed : bool
        Accept inputs of different instruments or filters (warned) instead of refusing them.
    **open_kwargs
        Reader options for every chip: ``units``, ``exptime``, ``gain``, ``readnoise``,
        ``resetbits`` (see :func:`~drizzlepipe.datamodels.readers.open_path`).
    """

    def __init__(self, init, *, on_disk=False, temp_directory=None, allow_mixed=False,
                 **open_kwargs):  # fmt: skip
        self._allow_mixed = allow_mixed
        self._temp_directory = temp_directory
        if isinstance(init, Mapping):
            asn = dict(init)
        elif is_model_list(init):
            models = _flatten_models(init, open_kwargs.get("resetbits"))
            if not models:
                raise DrizzlepipeInputError(None, "empty list of models")
            records = model_records(models)
            check_exposures(records, allow_mixed=allow_mixed)
            super().__init__(models, on_disk=False, **open_kwargs)
            self._product_name = None
            self._instruments = instruments(records)
            return
        else:
            asn = build_association(init, allow_mixed=allow_mixed, options=open_kwargs)
        super().__init__(asn, on_disk=on_disk, temp_directory=temp_directory, **open_kwargs)
        self._product_name = asn["products"][0].get("name")
        self._instruments = asn.get("instruments")  # None in an association made by hand

    @property
    def product_name(self):
        """The association's product name (``products[0].name``), or None."""
        return self._product_name

    @property
    def instruments(self):
        """``(telescope, instrument, detector)`` of the exposures, as their headers say them
        (one per exposure; per detector for JWST, whose exposures span several): from the
        headers read when the library was built, or, for an association made by hand, from
        the chips (read once)."""
        if self._instruments is None:
            records = {}  # the first chip of a file speaks for it, as in model_records
            with self:
                for index in range(len(self)):
                    model = self.borrow(index)
                    for record in model_records([model]):
                        records.setdefault((record.group_id, str(record.path)), record)
                    self.shelve(model, index, modify=False)
            self._instruments = instruments(records.values())
        return [tuple(entry) for entry in self._instruments]

    @property
    def file_groups(self):
        """Chip indices in sets that hold whole files and whole exposures: the units in which
        copies of the inputs (``_crf``, ``_sky``) are written. One exposure each, except where
        a file holds several exposures (STIS imsets), whose chips then go together."""
        unit_of, units = {}, []
        for indices in self.group_indices.values():
            files = {self.member_file(i) for i in indices}
            joined = {unit_of[f] for f in files if f in unit_of}
            unit = min(joined) if joined else len(units)
            if not joined:
                units.append([])
            for other in sorted(joined - {unit}, reverse=True):
                units[unit].extend(units[other])
                units[other] = []
            units[unit].extend(indices)
            for i in units[unit]:
                unit_of[self.member_file(i)] = unit
        return [sorted(unit) for unit in units if unit]

    def copy_roots(self):
        """Input file (:func:`~drizzlepipe.datamodels.writers.source_key`) -> root name of its
        copies (``<root>_crf.fits``...): the file's root name, with ``_2``, ``_3`` ... for
        files of one name in different directories, so that no copy overwrites another."""
        roots, used = {}, set()
        for index in range(len(self)):
            source = self.chip_info(index).source
            if source in roots:
                continue
            base = root = exposure_root(Path(source).name)
            number = 1
            while root in used:
                number += 1
                root = f"{base}_{number}"
            used.add(root)
            roots[source] = root
        return roots

    def member_file(self, index):
        """The file chip ``index`` comes from (its association member without selector)."""
        return str(split_selector(self._members[index]["expname"])[0])

    def subset(self, indices):
        """A new library of the chips ``indices`` (in that order), with the same reader options
        and storage; in memory, chips already read are handed over, not read again. On disk
        the new library starts from the inputs: call it before any step changes the chips."""
        indices = [int(i) for i in indices]
        if self._ledger:
            raise RuntimeError("subset needs every borrowed chip shelved first")
        if getattr(self, "_asn_dir", None) is None:  # a library of in-memory models
            with self:
                models = [self.borrow(i) for i in indices]
                for model, index in zip(models, indices):
                    self.shelve(model, index, modify=False)
            return ModelLibrary(
                models, allow_mixed=self._allow_mixed, **self._datamodels_open_kwargs
            )
        asn = {key: value for key, value in self._asn.items() if key != "products"}
        product = {k: v for k, v in self._asn["products"][0].items() if k != "members"}
        product["members"] = [dict(self._members[i]) for i in indices]
        asn["products"] = [product]
        options = dict(self._datamodels_open_kwargs)
        temp = self._temp_directory
        if self.on_disk and temp is not None:
            temp = tempfile.mkdtemp(prefix="subset-", dir=temp)  # apart from this library's
        library = ModelLibrary(asn, on_disk=self.on_disk, temp_directory=temp,
                               allow_mixed=self._allow_mixed, **options)  # fmt: skip
        library._product_name = self._product_name
        if not self.on_disk:
            for new, old in enumerate(indices):
                if old in self._loaded_models:
                    library._loaded_models[new] = self._loaded_models[old]
        return library

    @property
    def on_disk(self):
        """True when shelved models live in temporary files (the pipeline's in_memory=False)."""
        return bool(self._on_disk)

    @property
    def crds_observatory(self):
        """drizzlepipe never contacts CRDS; this satisfies stpipe's protocol."""
        return "drizzlepipe"

    def _datamodels_open(self, filename, **kwargs):
        is_temp_copy = self._on_disk and Path(filename).parent.parent == self._temp_path
        if self._on_disk:
            return _open_chip(filename, is_temp_copy, kwargs, remember_source=True)
        # in memory: the chip's state; its pixels are read from the file when a step uses them
        # and dropped again when the chip is shelved (drizzlepipe.datamodels.pixels). HST
        # readers leave them in the file from the start; other chips are read whole first.
        model = _open_chip(filename, False, {**kwargs, "pixels": False}, remember_source=False)
        if model.__dict__.get("_pixel_source") is None:
            attach_pixel_source(model, filename, kwargs)
            release_pixels(model)
        return model

    def read_chip(self, index, read):
        """``read(model)`` of chip ``index``, borrowed for it and shelved unmodified after;
        several threads may read their own chips at once (the ledger is changed by one at a
        time; one chip by two threads at once is refused by stpipe as a double borrow). On
        disk the model's arrays close when it is shelved: ``read`` returns them through
        :meth:`kept`."""
        with _LEDGER_LOCK:
            model = self.borrow(index)
        try:
            return read(model)
        finally:
            with _LEDGER_LOCK:
                self.shelve(model, index, modify=False)

    def kept(self, array):
        """An array of a borrowed chip that stays valid after the chip is shelved: a copy on
        disk (the model's arrays close with it), the array itself in memory."""
        return np.array(array) if self._on_disk else array

    def chip_array(self, index, read, shape):
        """A stand-in of shape ``shape`` for an array of chip ``index``: ``read(model)`` (an
        array that stays valid, see :meth:`kept`) gives its values through
        :meth:`read_chip` when numpy first needs them, in the thread that uses them, so that
        chips waiting for a thread of a pool are not all in memory."""
        return ArrayOnUse(functools.partial(self.read_chip, index, read), shape)

    def preload(self):
        """Read every member not yet in memory (in-memory libraries only; an on-disk library
        reads members when they are borrowed), so that the first step's timing and progress
        are its own work's."""
        if self._on_disk:
            return
        for index in range(len(self)):
            if index not in self._loaded_models:
                self._loaded_models[index] = self._load_member(index)

    def member_ref(self, index):
        """An :class:`~drizzlepipe.execution.ObjectRef` that opens member ``index`` in a task,
        as :meth:`borrow` would (its shelved temporary copy when there is one, else its input),
        without borrowing it: for read-only work in worker processes on an on-disk library."""
        from ..execution import ObjectRef

        temp = getattr(self, "_temp_filenames", {}).get(index)
        filename = temp or self._member_to_filename(self._members[index])
        member = {key: self._members[index][key] for key in ("group_id", "exptype")
                  if key in self._members[index]}  # fmt: skip
        return ObjectRef(
            opener=open_library_member,
            args=(str(filename), temp is not None, member, self._asn.get("table_name"),
                  self._asn.get("asn_pool"), dict(self._datamodels_open_kwargs)),
        )  # fmt: skip

    @classmethod
    def _load_asn(cls, filename):
        return load_association(filename)

    def _filename_to_group_id(self, filename):
        raise NoGroupID(f"{filename}: group_id is assigned when the library is built")

    def _model_to_group_id(self, model):
        group_id = getattr(model.meta, "group_id", None)
        if not group_id:
            raise NoGroupID(f"{model.meta.filename}: no meta.group_id")
        return group_id

    def _assign_member_to_model(self, model, member):
        _assign_member(model, member, self._asn.get("table_name"), self._asn.get("asn_pool"))

    def borrow(self, index):
        """Borrow chip ``index`` (see stpipe); its :meth:`chip_info` is recorded on the way."""
        model = super().borrow(index)
        self._chip_info()[index] = ChipInfo.of(model)
        return model

    def chip_info(self, index):
        """:class:`ChipInfo` of chip ``index`` without keeping the chip: recorded when it was
        last borrowed or shelved, read once otherwise (an on-disk library then needs no file
        read for what only needs a chip's WCS, shape or metadata)."""
        known = self._chip_info().get(index)
        if known is None:
            model = self.borrow(index)
            self.shelve(model, index, modify=False)
            known = self._chip_info()[index]
        return known

    def _chip_info(self):
        if "_info" not in self.__dict__:
            self._info = {}
        return self._info

    def finalize_result(self, step, reference_files_used):
        """stpipe's hook after a step returns the library: it gives every model to the step's
        ``finalize_result`` and shelves it *modified*, which on disk rewrites every chip. When
        the step keeps stpipe's no-op hook (all drizzlepipe steps do) there is nothing to do."""
        if type(step).finalize_result is StpipeStep.finalize_result:
            return
        super().finalize_result(step, reference_files_used)

    def shelve(self, model, index=None, modify=True):
        """Return a borrowed model (see stpipe); an on-disk copy keeps the input's file name.

        On disk, a modified chip whose data and error arrays still equal its input file's is
        saved as a small *state* file (metadata, DQ and static mask, compressed) that is laid
        over the input when the chip is borrowed again, instead of a full copy: the steps
        change only those (a UVIS chip's state compresses to some 0.2% of its full copy).
        """
        if index is not None and (modify or not self._on_disk):
            # (on disk, an unmodified shelve discards any change: borrow would not show it)
            self._chip_info()[index] = ChipInfo.of(model)
        if not self._on_disk:
            release_pixels(model)  # read again from the file when they are used
        model._keep_filename = True
        try:
            source = model.__dict__.get("_drizzlepipe_source")
            if modify and self._on_disk and source and _fingerprint(model) == source["fingerprint"]:
                if index is None:
                    index = self._ledger[model]
                path = self._temp_path_for_model(model, index).with_suffix(_STATE_SUFFIX)
                _write_state(model, source, path)
                old = self._temp_filenames.get(index)
                if old is not None and Path(old) != path:
                    os.remove(old)
                self._temp_filenames[index] = path
                modify = False
            super().shelve(model, index, modify)
        finally:
            del model._keep_filename

    def _temp_path_for_model(self, model, index):
        # ASDF is the fastest exact round trip for a shelved chip.
        subpath = self._temp_path / f"{index}"
        subpath.mkdir(parents=True, exist_ok=True)
        stem = Path(self._model_to_filename(model)).stem
        return subpath / f"{stem}.asdf"


class ArrayOnUse:
    """An array-like with a known ``shape`` whose values come from ``load()`` each time numpy
    asks for them (the caller keeps what it needs)."""

    def __init__(self, load, shape):
        self._load, self.shape = load, tuple(shape)
        self.ndim = len(self.shape)

    def __array__(self, dtype=None, copy=None):
        return np.array(self._load(), dtype=dtype, copy=copy)


@dataclass(frozen=True)
class ChipInfo:
    """What steps need of a chip without its pixels (:meth:`ModelLibrary.chip_info`)."""

    wcs: object
    shape: tuple
    pixel_scale: float | None  # meta.detector.pixel_scale [arcsec]
    group_id: str | None
    filename: str | None
    extension: str | None
    chip: int | None
    exptime: float | None
    units: str | None
    sky: float | None
    sky_subtracted: bool
    cr_npix: int | None  # cosmic rays among the pixels the input had not flagged
    rootname: str | None = None
    source: str | None = None  # the input file (writers.source_key)
    filter: str | None = None
    to_electrons: float = 1.0  # electrons per data unit (the gain of data in DN)
    cr_fraction: float | None = None  # cr_npix over the pixels the input had not flagged
    detector: str | None = None
    sky_subtracted_by_step: bool = False
    start: float | None = None  # exposure start [MJD]
    end: float | None = None  # exposure end [MJD]
    readnoise: float = 0.0  # [electrons]
    instrument: str | None = None

    @classmethod
    def of(cls, model):
        meta = model.meta
        return cls(
            wcs=meta.wcs,
            shape=tuple(model.shape),
            pixel_scale=meta.detector.pixel_scale,
            group_id=meta.group_id,
            filename=meta.filename,
            extension=meta.source.extension if meta.hasattr("source") else None,
            chip=meta.chip,
            exptime=meta.exposure.exptime,
            units=meta.units,
            sky=meta.background.level,
            sky_subtracted=bool(meta.background.subtracted),
            cr_npix=meta.cosmic_rays.npix,
            cr_fraction=meta.cosmic_rays.fraction,
            detector=meta.instrument.detector,
            rootname=meta.rootname if meta.hasattr("rootname") else None,
            source=source_key(model),
            to_electrons=electrons_per_unit(
                meta.units, meta.detector.in_electrons, meta.detector.gain
            ),
            filter=meta.instrument.filter,
            sky_subtracted_by_step=bool(meta.background.subtracted_by_step),
            start=meta.exposure.start if meta.exposure.hasattr("start") else None,
            end=meta.exposure.end if meta.exposure.hasattr("end") else None,
            readnoise=float(meta.detector.readnoise or 0.0),
            instrument=meta.instrument.name,
        )


#: Suffix of an on-disk library's state files (see ModelLibrary.shelve).
_STATE_SUFFIX = ".state.asdf"
# A state file holds every array but the input arrays (PIXEL_ARRAYS): those are read from the
# input file.


def _fingerprint(model):
    """SHA-1 of the chip's data and error arrays (one pass over them): a changed array never
    passes for the input's by chance, as it could with a 32-bit checksum."""
    digest = hashlib.sha1(usedforsecurity=False)
    for name in PIXEL_ARRAYS:
        array = model._instance.get(name)
        if isinstance(array, np.ndarray):
            digest.update(f"{name}{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).view(np.uint8))
    return digest.hexdigest()


def _write_state(model, source, path):
    tree = {key: value for key, value in model._instance.items() if key not in PIXEL_ARRAYS}
    # the WCS never changes: the input's is read again with the chip, exactly as in memory
    # (an ASDF round trip would round its last digits)
    tree["meta"] = {key: value for key, value in tree["meta"].items() if key != "wcs"}
    tree["drizzlepipe_state"] = dict(source)
    with atomic_target(path, ".asdf") as tmp_name:
        # DQ and static masks are mostly zeros: zlib makes them small and fast to write.
        asdf.AsdfFile(tree).write_to(tmp_name, all_array_compression="zlib")


def _open_state(path):
    """A chip from its input file with a state file's metadata and arrays laid over it."""
    try:
        with asdf.open(path, lazy_load=False, memmap=False) as state_file:
            tree = dict(state_file.tree)
            source = dict(tree.pop("drizzlepipe_state"))
            for key in ("asdf_library", "history"):
                tree.pop(key, None)
            tree = {
                key: np.array(value) if isinstance(value, np.ndarray) else value
                for key, value in tree.items()
            }
    except Exception as exc:  # asdf raises many types for damaged files
        raise DrizzlepipeInputError(path, f"unreadable library state file ({exc})") from None
    model = _open_chip(source["name"], False, source["kwargs"])
    wcs = model._instance["meta"].get("wcs")  # the input's, read again (not in the state)
    model._instance.update(tree)
    if wcs is not None:
        model._instance["meta"]["wcs"] = wcs
    return model


def _open_chip(filename, is_temp_copy, kwargs, remember_source=True):
    if is_temp_copy and str(filename).endswith(_STATE_SUFFIX):
        return _open_state(filename)
    # A temporary copy is an ImageModel written by the library: open it as one directly
    # (open_path would first parse the whole tree, WCS included, to find the model type).
    model = ImageModel(str(filename)) if is_temp_copy else open_path(filename, **kwargs)
    if remember_source and not is_temp_copy and isinstance(model, ImageModel):
        # what an on-disk library needs to save only the chip's state later (the SHA-1 of
        # data and errors, a pass over them, not spent in memory)
        model._drizzlepipe_source = {
            "name": str(filename), "kwargs": dict(kwargs), "fingerprint": _fingerprint(model),
        }  # fmt: skip
    if not isinstance(model, ImageModel):
        raise DrizzlepipeInputError(filename, "expected one chip (ImageModel) for a library member")
    if is_temp_copy:
        # A shelved temporary copy: the model keeps its input's name, not the copy's.
        source = model.meta.source.path if model.meta.hasattr("source") else None
        if source:
            model.meta.filename = split_selector(source)[0].name
    return model


def _assign_member(model, member, table_name, pool_name):
    # stpipe's version treats meta.asn as a dict; ours is a schema object node.
    for attr in ("group_id", "exptype"):
        if attr in member:
            setattr(model.meta, attr, member[attr])
    if table_name is not None:
        model.meta.asn.table_name = table_name
    if pool_name is not None:
        model.meta.asn.pool_name = pool_name


def open_library_member(filename, is_temp_copy, member, table_name, pool_name, kwargs):
    """Open a library member as the library's ``borrow`` does (:meth:`ModelLibrary.member_ref`)."""
    model = _open_chip(filename, is_temp_copy, kwargs, remember_source=False)  # read only
    if not is_temp_copy:  # as stpipe: a shelved copy keeps what it was given
        _assign_member(model, member, table_name, pool_name)
    return model


def is_model_list(init):
    """True when ``init`` is a (nested) list of models rather than names."""
    if isinstance(init, (str, Path, Mapping)) or not isinstance(init, Iterable):
        return False
    items = list(init)
    return bool(items) and all(isinstance(i, (DataModel, list, tuple)) for i in items)


def _flatten_models(items, resetbits=None):
    """The chips of a (nested) list of models; ``resetbits`` are cleared in our models' DQ (a
    library of models works on the models themselves) and in the copies made of JWST models."""
    models = []
    for item in items:
        if isinstance(item, (list, tuple)):
            models.extend(_flatten_models(item, resetbits))
        elif isinstance(item, ImageModel):
            clear_bits(item.dq, resetbits, item.meta.dq_convention or "hst")
            models.append(item)
        elif not isinstance(item, DrizDataModel) and item.meta.telescope == "JWST":
            models.append(convert_jwst_model(item, resetbits=resetbits))
        else:
            raise DrizzlepipeInputError(
                getattr(item.meta, "filename", None), "library members must be ImageModel chips"
            )
    return models
