"""Per-chip and per-exposure tasks that the steps hand to :class:`drizzlepipe.execution.Executor`.

Tasks are module-level functions of one picklable argument (a small dataclass holding WCS
objects, scalars and :class:`~drizzlepipe.execution.ArrayRef` handles), so they run the same in
this thread, a thread pool, worker processes or a dask.distributed cluster.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..algorithms.blot import blot, sample_nearest
from ..algorithms.crdetect import CTEGrowthSkippedWarning, detect_cosmic_rays
from ..algorithms.pixmap import PixmapRows, compute_pixmap
from ..algorithms.resample import (
    CONTEXT_PLANE_BITS,
    DrizzleAccumulator,
    ResampleInputError,
    build_weight,
)
from ..datamodels.writers import write_exposure_copy
from ..execution import ArrayRef

log = logging.getLogger(__name__)

__all__ = [
    "ChipJob",
    "DrizzleJob",
    "BlotCRJob",
    "drizzle_chips",
    "new_accumulator",
    "output_buffers",
    "received",
    "add_chip",
    "blot_and_detect",
    "CopyJob",
    "write_copy",
]


@dataclass
class ChipJob:
    """One chip ready to drizzle: data already sky-subtracted and converted (see
    :func:`drizzlepipe.steps._drizzle_common.chip_job`)."""

    data: ArrayRef
    bad_mask: ArrayRef
    variance: ArrayRef | None
    wcs: Any
    shape: tuple
    exptime: float
    in_units: str
    iscale: float
    pixel_scale_ratio: float
    label: str
    context_id: int | None = None
    weight_variance: ArrayRef | None = None  # for err/ivm weights
    group_id: str | None = None
    exposure: dict | None = None  # exptime, start, end of the chip's exposure


@dataclass
class DrizzleJob:
    """Chips to drizzle into one accumulator on one grid."""

    chips: list
    grid_wcs: Any
    grid_shape: tuple
    kernel: str
    pixfrac: float
    fillval: float
    stepsize: int
    weight_type: str = "exptime"
    enable_context: bool = False
    enable_err: bool = False
    n_inputs: int | None = None
    finalize: bool = True
    first_context_id: int = 0  # context id of the first chip (chips have consecutive ids)
    out: dict | None = None  # ArrayRefs of zeroed output arrays (img, wht, var, ctx) to fill


@dataclass
class DrizzleResult:
    """What a :class:`DrizzleJob` produced: the finished arrays or the open accumulator."""

    product: Any = None  # DrizzleProduct (finalize=True)
    partial: Any = None  # PartialDrizzle (finalize=False)
    added: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    chips: list = field(default_factory=list)  # (label, group_id, exposure) of every chip


def _weight(job, chip, data, bad_mask):
    if job.weight_type == "exptime":
        return None
    variance = chip.weight_variance.get()
    if job.weight_type == "err":
        return build_weight(
            "err", exptime=chip.exptime, bad_mask=bad_mask, data=data, err=np.sqrt(variance),
            in_units=chip.in_units, iscale=chip.iscale,
        )  # fmt: skip
    with np.errstate(divide="ignore"):
        ivm = np.where(variance > 0, 1.0 / variance, 0.0)
    return build_weight(
        "ivm", exptime=chip.exptime, bad_mask=bad_mask, data=data, ivm=ivm,
        in_units=chip.in_units, iscale=chip.iscale,
    )  # fmt: skip


def drizzle_chips(job):
    """Drizzle the chips of ``job`` in order; chips that cannot be drizzled are skipped.

    Returns
    -------
    DrizzleResult
        ``product`` (finalized arrays) or ``partial`` (the sums, when ``job.finalize`` is
        False, for merging), the labels added and the messages of the chips skipped. Arrays
        that live in the job's ``out`` buffers come back as handles on them
        (:func:`received`), the others as arrays.
    """
    # each buffer mapped once: a file's memory map is a new array at every get()
    out = {name: (ref, ref.get()) for name, ref in (job.out or {}).items()}
    accumulator = new_accumulator(job, {name: array for name, (_, array) in out.items()})
    result = DrizzleResult()
    for chip in job.chips:
        add_chip(accumulator, job, chip, result)
    if not result.added:
        return result
    if job.finalize:
        result.product = _ship(accumulator.finalize(), out)
    else:
        result.partial = _ship(accumulator.partial(), out)
    return result


@dataclass
class _InBuffer:
    """An array that is the leading part of an ``out`` buffer, reshaped."""

    ref: ArrayRef
    shape: tuple

    def load(self):
        flat = self.ref.load().reshape(-1)
        return flat[: int(np.prod(self.shape))].reshape(self.shape)


def _ship(result, out):
    """``result`` (a dataclass of arrays) with every array that lies at the start of one of the
    ``out`` buffers (``{name: (ArrayRef, mapped array)}``) replaced by an :class:`_InBuffer`
    handle, so it is not pickled."""
    if not out:
        return result
    buffers = list(out.values())
    for _, buffer in buffers:
        if isinstance(buffer, np.memmap):
            buffer.flush()  # a file read by another process (a cluster's client)
    changes = {}
    for name, value in vars(result).items():
        if not isinstance(value, np.ndarray) or not value.flags.c_contiguous:
            continue
        start = value.__array_interface__["data"][0]
        for ref, buffer in buffers:
            if buffer.__array_interface__["data"][0] == start and value.nbytes <= buffer.nbytes:
                changes[name] = _InBuffer(ref, value.shape)
                break
    return replace(result, **changes)


def received(result):
    """A shipped product or partial with its arrays back in this process (see
    :func:`drizzle_chips`)."""
    if result is None:
        return None
    changes = {
        name: value.load() for name, value in vars(result).items() if isinstance(value, _InBuffer)
    }
    return replace(result, **changes)


def output_buffers(executor, grid_shape, *, err=False, context=False, n_inputs=1):
    """Zeroed output arrays for one accumulation that its worker fills and this process reads
    without pickling (:meth:`~drizzlepipe.execution.Executor.shared_zeros`); None when the
    tasks run in this process (the accumulator then allocates its own)."""
    if executor.shares_memory:
        return None
    out = {name: executor.shared_zeros(grid_shape, np.float32) for name in ("img", "wht")}
    if err:
        out["var"] = executor.shared_zeros(grid_shape, np.float32)
    if context:
        n_planes = (max(int(n_inputs), 1) - 1) // CONTEXT_PLANE_BITS + 1
        out["ctx"] = executor.shared_zeros((n_planes, *grid_shape), np.int32)
    return out


def new_accumulator(job, out_arrays=None):
    """An empty :class:`DrizzleAccumulator` for the grid and switches of ``job``, on
    ``out_arrays`` (default: the job's ``out`` buffers) when there are any."""
    if out_arrays is None:
        out_arrays = {name: ref.get() for name, ref in (job.out or {}).items()}
    return DrizzleAccumulator(
        job.grid_shape,
        kernel=job.kernel,
        fillval=job.fillval,
        enable_context=job.enable_context,
        enable_err=job.enable_err,
        n_inputs=job.n_inputs,
        out_arrays=out_arrays,
        first_context_id=job.first_context_id,
        # the grid was checked against the step's max_pixels when it was made (before any
        # work); a second, different limit here would only fail later
        memory_limit=math.inf,
    )


def add_chip(accumulator, job, chip, result):
    """Drizzle one :class:`ChipJob` (or a chip with a ``prepare()`` method that makes one) into
    ``accumulator``; record it in ``result`` as added or skipped (chips that cannot be drizzled
    are reported, not fatal)."""
    if not isinstance(chip, ChipJob):
        chip = chip.prepare()
    result.chips.append((chip.label, chip.group_id, chip.exposure))
    data, bad_mask = chip.data.get(), chip.bad_mask.get()
    variance = chip.variance.get() if chip.variance is not None else None
    try:
        pixmap = compute_pixmap(chip.wcs, chip.shape, job.grid_wcs, stepsize=job.stepsize)
        accumulator.add_chip(
            data,
            pixmap,
            exptime=chip.exptime,
            weight=_weight(job, chip, data, bad_mask),
            bad_mask=bad_mask,
            variance=variance if job.enable_err else None,
            in_units=chip.in_units,
            iscale=chip.iscale,
            pixel_scale_ratio=chip.pixel_scale_ratio,
            pixfrac=job.pixfrac,
            context_id=chip.context_id,
            label=chip.label,
        )
        result.added.append(chip.label)
        log.debug("Drizzled %s", chip.label)
    except ResampleInputError as error:
        result.skipped.append(str(error))


@dataclass
class BlotCRJob:
    """One chip to check for cosmic rays against the median."""

    data: ArrayRef  # the chip's data in its own units, sky included
    err: ArrayRef | None  # in the chip's units (noise='err')
    wcs: Any
    shape: tuple
    label: str
    median: ArrayRef  # median with holes filled
    holes: ArrayRef | None
    median_wcs: Any
    blot_iscale: float  # median -> chip units
    sky: float  # chip units, added to the blot
    to_counts: float  # chip units -> electrons (counts)
    readnoise: float
    readout_direction: int
    noise: str
    snr: tuple
    scale: tuple
    grow: int
    ctegrow: int
    interp: str
    sinscl: float
    stepsize: int
    keep_blot: bool = False
    median_weight: ArrayRef | None = None  # sum of the singles' weights [s], for median noise
    holes_in_weight: bool = False  # median_weight is -1 at the median's holes (holes is None)
    exptime: float = 1.0


def median_variance(pixel_variance, n_exposures):
    """Variance of a median of ``n`` exposures whose pixels have ``pixel_variance`` each.

    ``(pi / 2) sigma**2 / n`` for a median of n >= 3 values (asymptotic efficiency of the
    median), ``sigma**2 / n`` for the mean of two (n is the exposures' total weight over one
    exposure's, so it need not be an integer).
    """
    n = np.maximum(n_exposures, 1.0)
    factor = (np.where(n >= 3, np.pi / 2, 1.0) / n).astype(np.float32)
    return pixel_variance * factor


@dataclass
class BlotCRResult:
    """Cosmic-ray mask (bit-packed), the blot when asked for, and warnings to log."""

    packed_mask: np.ndarray | None
    shape: tuple
    n_flagged: int
    blotted: np.ndarray | None = None
    warnings: list = field(default_factory=list)

    def mask(self):
        """The boolean cosmic-ray mask (True = cosmic ray)."""
        if self.packed_mask is None:
            return np.zeros(self.shape, dtype=bool)
        size = int(np.prod(self.shape))
        return np.unpackbits(self.packed_mask, count=size).astype(bool).reshape(self.shape)


#: Chip rows blotted and checked at a time: a band's temporaries (pixel map, blot, noise,
#: residual, derivative, masks: ~70 bytes a pixel) stay ~70 MB for a 4096-pixel-wide chip
#: instead of ~600 MB for the whole chip (the pixel map's buffer is reused from band to band).
BAND_ROWS = 256


def _band_rows(job):
    """Rows per band of ``job``'s chip and the margin each band is given (see
    :func:`blot_and_detect`)."""
    halo = 2 + job.grow + job.ctegrow
    return max(BAND_ROWS, 4 * halo), halo


def blot_and_detect(job):
    """Blot the median onto one chip and find its cosmic rays, a band of rows at a time.

    Each band is processed with ``2 + grow + ctegrow`` extra rows on either side, so the mask
    equals that of the whole chip at once: the derivative and the 3 x 3 neighbourhood of the
    first pass reach 2 rows, the grown box ``grow // 2`` and the CTE trail ``ctegrow`` more
    (the margin is a little wider than that, for safety at ~1% of the work). The band layout
    is fixed, so results do not depend on the scheduler.

    Returns
    -------
    BlotCRResult
        ``packed_mask`` is None when no chip pixel has median data (nothing was checked).
    """
    ny, nx = job.shape
    band, halo = _band_rows(job)
    start, stop = 0, ny
    positions = PixmapRows(job.wcs, job.shape, job.median_wcs, stepsize=job.stepsize)
    pixmap_buffer = np.empty((min(ny, band + 2 * halo), nx, 2), dtype=np.float64)
    median = job.median.get()
    # the Lanczos interpolants normalise by a blot of ones: one array for all bands
    ones = np.ones_like(median) if job.interp.startswith("lan") else None
    # outside the median, a position is a hole: 1 in the holes' map, -1 in a weight that
    # carries them
    weight_fill = -1.0 if job.holes_in_weight else 0.0
    lookups = ((job.holes, 1.0), (job.median_weight, weight_fill))
    sampled = [(ref.get(), fill) for ref, fill in lookups if ref is not None]
    data = job.data.get()
    err = job.err.get() if job.err is not None else None
    shape = (stop - start, nx)
    cr_mask = np.zeros(shape, dtype=bool)
    blotted_chip = np.full(shape, np.nan, np.float32) if job.keep_blot else None
    checked = False
    messages = []
    for first in range(start, stop, band):
        last = min(stop, first + band)
        low, high = max(0, first - halo), min(ny, last + halo)
        pixmap = positions.rows(low, high, out=pixmap_buffer)
        blotted, n_exposures = _blot_band(job, median, sampled, pixmap, ones)
        inner = slice(first - low, last - low)
        if blotted_chip is not None:
            blotted_chip[first - start : last - start] = blotted[inner]
        if not np.isfinite(blotted).any():
            continue  # no median data near these rows: nothing to check (NaN is never flagged)
        checked = True
        band_err = err[low:high] if err is not None else None
        mask, caught = _detect_band(job, data[low:high], blotted, band_err, n_exposures)
        cr_mask[first - start : last - start] = mask[inner]
        messages.extend(message for message in caught if message not in messages)
    if not checked:
        return BlotCRResult(None, shape, -1, blotted_chip)
    log.debug("Checked %s for cosmic rays", job.label)
    return BlotCRResult(
        packed_mask=np.packbits(cr_mask, axis=None),
        shape=shape,
        n_flagged=int(np.count_nonzero(cr_mask)),
        blotted=blotted_chip,
        warnings=messages,
    )


def _blot_band(job, median, sampled, pixmap, ones):
    """The median blotted onto a band of chip rows (chip units, sky added, NaN where the
    nearest median pixel had no data), and the exposures behind every pixel (or None)."""
    blotted = blot(
        median,
        pixmap,
        interp=job.interp,
        sinscl=job.sinscl,
        iscale=job.blot_iscale,
        fill_value=np.nan,
        ones=ones,
    )
    # Chip pixels whose nearest median pixel had no data are not checked; the exposures
    # behind each blotted pixel are the median's total weight over this chip's.
    values = []
    if sampled:
        images, fills = zip(*sampled)
        values = sample_nearest(list(images), pixmap, list(fills))
    if job.holes is not None:
        blotted[values.pop(0) > 0.5] = np.nan
    n_exposures = None
    if job.median_weight is not None:
        weight = values.pop(0)
        if job.holes_in_weight:
            blotted[weight < 0] = np.nan
            np.maximum(weight, 0, out=weight)
        n_exposures = weight / np.float32(job.exptime)
    blotted += np.float32(job.sky)
    return blotted, n_exposures


def _detect_band(job, data, blotted, err, n_exposures):
    """Cosmic-ray mask of a band (in electrons) and the warnings raised."""
    counts = np.float32(job.to_counts)
    err = err * counts if err is not None else None
    model_variance = None
    if n_exposures is not None:
        # one exposure's pixel variance: ERR**2, or the detector model of the blot
        if err is not None:
            pixel_variance = np.square(np.nan_to_num(err))
        else:
            pixel_variance = np.abs(blotted * counts) + np.float32(job.readnoise**2)
        model_variance = median_variance(pixel_variance, n_exposures)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CTEGrowthSkippedWarning)
        mask = detect_cosmic_rays(
            data * counts,
            blotted * counts,
            noise=job.noise,
            gain=1.0,
            readnoise=job.readnoise,
            err=err,
            snr=job.snr,
            scale=job.scale,
            grow=job.grow,
            ctegrow=job.ctegrow,
            readout_direction=job.readout_direction,
            model_variance=model_variance,
        )
    return mask, [str(warning.message) for warning in caught]


@dataclass
class CopyJob:
    """Write one input file's chips as a copy with their DQ as now (e.g. ``_crf``)."""

    models: list  # ObjectRefs of the file's chip models, in extension order
    path: str


def write_copy(job):
    """Write ``job.path`` (:func:`~drizzlepipe.datamodels.writers.write_exposure_copy`)."""
    write_exposure_copy([ref.get() for ref in job.models], job.path)
    return job.path
