"""SkySubStep: sky level of every chip by AstroDrizzle's methods (localmin, globalmin, match,
globalmin+match) or from the user (a sky file, or a keyword naming a sky already subtracted).

Skies are compared in brightness units (per arcsec^2 and per second), so chips with different
pixel scales or exposure times are treated right. Results go to ``meta.background`` (level in
the chip's data units per pixel, i.e. MDRIZSKY); the data are changed only with
``subtract=True``. ``match`` falls back to ``localmin`` and ``globalmin+match`` to
``globalmin`` when matching cannot be solved, with a warning, as AstroDrizzle does.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..algorithms.grid import pixel_scale
from ..algorithms.sky import SkyChip, SkyMatchError, SkyStatistic, compute_sky, sky_spread
from ..datamodels.conversions import bad_pixels, chip_label, data_with_sky
from ..datamodels.library import ArrayOnUse
from ..datamodels.readers import source_chip
from ..datamodels.readers._common import split_selector
from ..datamodels.writers import write_copies
from ..exceptions import DrizzlepipeInputError
from .base import DrizStep

__all__ = ["SkySubStep"]

log = logging.getLogger(__name__)

_FALLBACK = {"match": "localmin", "globalmin+match": "globalmin"}


class SkySubStep(DrizStep):
    """Measure (and optionally subtract) the sky of every chip."""

    class_alias = "sky_sub"

    spec = """
    method = option('localmin', 'globalmin', 'match', 'globalmin+match', 'user', default=None)  # Sky method (None: the preset's, else localmin)
    stat = option('median', 'mode', 'mean', 'midpt', default=None)  # Sky statistic (None: the preset's, else median)
    nclip = integer(default=5, min=0)  # Clipping iterations
    lsigma = float(default=4.0)  # Lower clipping limit [sigma]
    usigma = float(default=4.0)  # Upper clipping limit [sigma]
    lower = float(default=None)  # Ignore data below this (data units)
    upper = float(default=None)  # Ignore data above this (data units)
    binwidth = float(default=0.1)  # Histogram bin width [sigma] for mode and midpt
    good_bits = string(default=None)  # DQ bits treated as good ('4+8', '~4'; 'None': ignore DQ; None: the pipeline's good_bits, else '0')
    use_static = boolean(default=True)  # Exclude the static mask
    mask_files = string(default=None)  # Catalogue: 'image mask1 [mask2 ...]' per line (0 = bad)
    user_keyword = string(default=None)  # Header keyword holding a sky already subtracted
    skyfile = string(default=None)  # File: 'image sky1 [sky2 ...]' per line, for method=user
    subtract = boolean(default=False)  # Subtract the sky from the data
    """  # noqa: E501
    builtin_defaults = {"method": "localmin", "stat": "median"}

    def process(self, input_data):
        """Measure the sky of every chip (and subtract it with ``subtract=True``).

        Parameters
        ----------
        input_data : ModelLibrary, str, list
            The chips (anything :class:`~drizzlepipe.datamodels.ModelLibrary` accepts).

        Returns
        -------
        ModelLibrary
            The chips with ``meta.background`` set: ``level`` in each chip's data units per
            pixel (``MDRIZSKY``), ``subtracted`` and ``method``.
        """
        library = self.prepare_library(input_data)
        if self.user_keyword:
            return self._user_keyword(library)
        statistic = SkyStatistic(
            stat=self.stat,
            nclip=self.nclip,
            lsigma=self.lsigma,
            usigma=self.usigma,
            lower=self.lower,
            upper=self.upper,
            binwidth=self.binwidth,
        )
        user_masks = _read_catalogue(self.mask_files, "mask_files") if self.mask_files else {}
        self._restore(library)
        with library:
            chips, labels, files = [], [], []
            # A chip's pixels are read when the sky algorithms reach it (they work one chip or
            # one exposure at a time, each in a thread of statistics_map), so memory holds the
            # chips being measured, not all of them.
            pixels = _OnDemandPixels(library, self, user_masks)
            for index in range(len(library)):
                info = library.chip_info(index)  # no file read when known
                chip = self._sky_chip(info, pixels, index)
                chips.append(chip)
                labels.append(chip.name)
                files.append(info.filename)
            user_values = None
            if self.method == "user":
                user_values = _user_values(self.skyfile, files)
            with self.statistics_map(library, wanted=self.method != "user") as map_:
                result = self._compute(chips, statistic, user_values, map_)
            del chips
            for index in range(len(library)):
                model = library.borrow(index)
                self._record(model, result.sky[index], result.method)
                library.shelve(model, index, modify=True)
        self._report(result, labels)
        if self.save_results:
            self._save(library)
        return library

    def _sky_chip(self, info, pixels, index):
        """The :class:`SkyChip` of chip ``index``, described by ``info`` (a library's
        :class:`~drizzlepipe.datamodels.library.ChipInfo`), its arrays read on demand from
        ``pixels``."""
        data, mask = pixels.arrays(index, info.shape)
        return SkyChip(
            data=data,
            wcs=info.wcs,
            exposure_id=info.group_id,
            pixel_scale=info.pixel_scale or pixel_scale(info.wcs, info.shape),
            exptime=float(info.exptime),
            in_counts=info.units == "counts",
            mask=mask,
            name=chip_label(info),
            per_area=info.units == "surface_brightness",
            gain=info.to_electrons,
        )

    def _sky_arrays(self, model, user_masks):
        """Data (sky included) and mask (True = not sky) of one chip."""
        mask = bad_pixels(model, self.inherited("good_bits", "0"), use_static=self.use_static)
        extra = user_masks.get(model.meta.filename)
        if extra:
            position = int(model.meta.chip or 1) - 1
            mask_file = extra[min(position, len(extra) - 1)]
            user = np.asarray(fits.getdata(mask_file))
            if user.shape != model.shape:
                raise DrizzlepipeInputError(
                    mask_file, f"mask shape {user.shape} differs from {model.shape}"
                )
            mask |= user == 0
        return data_with_sky(model), mask

    def _compute(self, chips, statistic, user_values, map_):
        try:
            return compute_sky(chips, self.method, statistic, user_values=user_values, map_=map_)
        except SkyMatchError as error:
            fallback = _FALLBACK[self.method]
            log.warning("Sky %s failed (%s); falling back to %s", self.method, error, fallback)
            return compute_sky(chips, fallback, statistic, map_=map_)

    def _restore(self, library):
        """Give chips whose sky an earlier call subtracted (``subtract=True``) their data and
        background back as their file holds them (read again: exact, and a sky the file records
        as subtracted stays so), so that this call measures what a first call would. A model
        without a file gets the level added back (exact to float32 rounding). Changes made to
        such a chip's data in memory after it was read are therefore lost."""
        with library:
            for index in range(len(library)):
                if not library.chip_info(index).sky_subtracted_by_step:
                    continue
                model = library.borrow(index)
                original = source_chip(model)
                background = model.meta.background
                if original is not None:
                    model.data = original.data
                    background.level = original.meta.background.level
                    background.subtracted = original.meta.background.subtracted
                else:
                    model.data = model.data + np.float32(background.level or 0.0)
                    background.subtracted = False
                background.subtracted_by_step = False
                library.shelve(model, index, modify=True)

    def _record(self, model, level, method):
        level = float(level)
        if model.meta.background.subtracted:
            # data whose sky was subtracted before drizzlepipe read them get it back first:
            # the new level replaces the old one (else the drizzle steps would subtract a sky
            # a second time)
            model.data = model.data + np.float32(model.meta.background.level or 0.0)
        if self.subtract:
            # a new array: the input's pixels are read-only (drizzlepipe.datamodels.pixels)
            model.data = model.data - np.float32(level)
        model.meta.background.level = level
        model.meta.background.subtracted = bool(self.subtract)
        model.meta.background.subtracted_by_step = bool(self.subtract)
        model.meta.background.method = method
        self.record_step_status(model)

    def _report(self, result, labels):
        for label, level in zip(labels, result.sky):
            log.debug("Sky %-40s %12.5g (%s)", label, level, result.method)
        levels = [level for level in result.sky if np.isfinite(level)]
        if levels:
            log.info(
                "Sky (%s) of %d chips: %.5g to %.5g (data units per pixel)",
                result.method, len(result.sky), min(levels), max(levels),
            )  # fmt: skip
        if (spread := sky_spread(result)) is not None:
            log.warning(
                "Sky brightness differs by %s between exposures (%s): check the sky "
                "(bright targets, scattered light) or use method='match'", *spread,
            )  # fmt: skip
        for index in result.empty_chips:
            log.warning("%s: no valid pixel for the sky; sky set to 0", labels[index])
        for exposure in result.unmatched_exposures:
            log.warning("Exposure %s overlaps no other: it keeps its own sky", exposure)
        if len(result.match_groups) > 1:
            log.warning(
                "Exposures form %d groups without overlap between them: %s",
                len(result.match_groups),
                "; ".join(", ".join(map(str, group)) for group in result.match_groups),
            )

    def _user_keyword(self, library):
        """Skies already subtracted by the user, read from a header keyword of each chip."""
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                level = _keyword_value(model, self.user_keyword)
                model.meta.background.level = level
                model.meta.background.subtracted = True
                model.meta.background.method = f"user keyword {self.user_keyword}"
                self.record_step_status(model)
                log.info("Sky %s = %g (already subtracted)", chip_label(model), level)
                library.shelve(model, index, modify=True)
        return library

    def _save(self, library):
        with library:
            roots = library.copy_roots()
            # whole files at a time: a STIS file of several imsets is one copy
            for indices in library.file_groups:
                models = [library.borrow(index) for index in indices]
                try:
                    written = write_copies(
                        models, lambda source: self.product_path(roots[source], "sky")
                    )
                finally:
                    for model, index in zip(models, indices):
                        library.shelve(model, index, modify=False)
                for path in written:
                    log.debug("Wrote %s", path)
        log.info("%d _sky copies in %s", len(roots), Path(self.product_path("x", "sky")).parent)


class _OnDemandPixels:
    """Sky arrays of a library's chips, read when first used and kept for one chip per thread
    (the sky algorithms take a chip's data and mask one after the other; each thread of a
    pool takes its own chips)."""

    def __init__(self, library, step, user_masks):
        self._library, self._step, self._user_masks = library, step, user_masks
        self._local = threading.local()

    def arrays(self, index, shape):
        """Stand-ins for chip ``index``'s data and mask (shape known, pixels read on use)."""
        return tuple(
            ArrayOnUse(functools.partial(self._array, index, which), shape) for which in (0, 1)
        )

    def _array(self, index, which):
        return self.load(index)[which]

    def load(self, index):
        local = self._local
        if getattr(local, "index", None) != index:
            local.index, local.arrays = None, None  # let the previous chip go first
            local.arrays = self._library.read_chip(index, self._read)
            local.index = index
        return local.arrays

    def _read(self, model):
        data, mask = self._step._sky_arrays(model, self._user_masks)
        return self._library.kept(data), mask


def _read_catalogue(path, what):
    """``{image file name: [values...]}`` from 'name value [value ...]' lines (# comments)."""
    path = Path(path)
    if not path.is_file():
        raise DrizzlepipeInputError(path, f"{what} file not found")
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = re.split(r"[\s,]+", line)
        if len(fields) < 2:
            raise DrizzlepipeInputError(path, f"line {number}: expected a name and values")
        entries[Path(fields[0]).name] = fields[1:]
    return entries


def _user_values(skyfile, files):
    """Per-chip sky values from a sky file (one value per chip, or one per exposure)."""
    if not skyfile:
        raise DrizzlepipeInputError(None, "method='user' needs skyfile")
    entries = _read_catalogue(skyfile, "skyfile")
    unknown = sorted(set(entries) - set(files))
    if unknown:
        raise DrizzlepipeInputError(skyfile, f"names inputs that are not given: {unknown}")
    values = []
    chip_of = {}
    for name in files:
        if name not in entries:
            raise DrizzlepipeInputError(skyfile, f"has no sky for {name}")
        count = files.count(name)
        given = entries[name]
        if len(given) not in (1, count):
            raise DrizzlepipeInputError(
                skyfile, f"{name}: {len(given)} values for {count} chips (give 1 or {count})"
            )
        position = chip_of.get(name, 0)
        chip_of[name] = position + 1
        try:
            values.append(float(given[min(position, len(given) - 1)]))
        except ValueError:
            raise DrizzlepipeInputError(skyfile, f"{name}: {given} are not numbers") from None
    return values


def _keyword_value(model, keyword):
    source = model.meta.source.path if model.meta.hasattr("source") else None
    label = chip_label(model)
    if not source:
        raise DrizzlepipeInputError(label, f"no source file to read {keyword} from")
    path, _ = split_selector(source)
    extension = ("SCI", int(model.meta.chip or 1)) if model.meta.source.format == "hst" else 0
    header = fits.getheader(path, extension)
    if keyword not in header:
        header = fits.getheader(path, 0)
    if keyword not in header:
        raise DrizzlepipeInputError(path, f"no keyword {keyword}", str(extension))
    return float(header[keyword])
