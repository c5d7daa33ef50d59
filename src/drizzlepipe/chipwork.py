"""The execution layer's work on a library of chips: the steps say what to compute, this
module decides how the chips reach the workers and how the results come back.

* :func:`drizzle_exposures` drizzles each exposure onto the grid into its own output (the
  singles), all in one map when they stay in memory, else a worker's worth at a time;
* :func:`drizzle_all` drizzles every chip onto one grid in ``runs`` partial accumulations
  of chips by position, side by side, each but the first on the rows its chips reach, and
  merges them in order (the final product);
* :func:`prepare_median` fills the median's holes for blotting, in bands of rows side by side;
* :func:`check_chips` blots the median onto every chip and finds its cosmic rays, yielding the
  results a set of files at a time, with the chips borrowed for the caller to record them;
* :func:`write_copies_in_workers` writes copies of input files (``_crf``) in the workers;
* :func:`combine_in_bands` combines a stack of images (the singles into the median) in bands
  of rows side by side.

How chips travel: a chip model is handed to a task as itself (``serial``/``threads``), inherited
by forked worker processes, or opened by the worker from its file (an on-disk library); only a
distributed cluster with an in-memory library gets arrays through scratch files. Pixels are read
where the task runs (:mod:`drizzlepipe.datamodels.pixels`) and let go when it is done with them.
Outputs that workers fill (drizzle sums) live in shared buffers that the caller reads without
pickling (:func:`output_buffers`). Results never depend on the scheduler: tasks are pure
functions of their arguments and are combined in a fixed order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .algorithms.blotcr import (
    BlotMedian,
    ChipScaling,
    CosmicRayTest,
    MedianPreparation,
    blot_and_detect,
    unpack_mask,
)
from .algorithms.combine import StackCombiner, sum_rows
from .algorithms.grid import pixel_scale, position_runs
from .algorithms.pixmap import PixmapRows, chip_rows_on_grid
from .algorithms.resample import (
    CONTEXT_PLANE_BITS,
    DrizzleAccumulator,
    PartialDrizzle,
    ResampleInputError,
    build_weight,
    kernel_reach,
)
from .algorithms.sections import ImageStack
from .datamodels import dqflags
from .datamodels.conversions import (
    bad_pixels,
    chip_iscale,
    chip_label,
    chip_variance,
    data_with_sky,
    electrons_factor,
    exposure_times,
    weight_variance,
)
from .datamodels.pixels import load_pixels, release_pixels
from .datamodels.writers import write_exposure_copy
from .exceptions import DrizzlepipeInputError
from .execution import ArrayRef, Executor

__all__ = [
    "DrizzleSettings",
    "drizzle_exposures",
    "drizzle_all",
    "FinalDrizzle",
    "check_chips",
    "prepare_median",
    "write_copies_in_workers",
    "combine_in_bands",
    "ChipJob",
    "DrizzleJob",
    "DrizzleResult",
    "drizzle_chips",
    "chip_job",
    "output_buffers",
    "received",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrizzleSettings:
    """How a drizzle step drizzles its chips (its parameters).

    Attributes
    ----------
    kernel, pixfrac, fillval, stepsize
        Drizzle kernel, drop size, value of pixels without data, WCS evaluation step.
    good_bits : str, int or None
        DQ bits that do not make a pixel bad.
    weight_type : str
        ``exptime``, ``err`` or ``ivm``.
    crbit : int, "auto" or None
        DQ value of cosmic rays (always bad; ``"auto"``: the chip's mission's).
    context, compute_err : bool
        Keep the context image; propagate the variance into an error image.
    """

    kernel: str
    pixfrac: float
    fillval: float
    stepsize: int
    good_bits: Any = "0"
    weight_type: str = "exptime"
    crbit: Any = None
    context: bool = False
    compute_err: bool = False

    def chip_options(self):
        """The :func:`chip_job` options these settings give every chip."""
        return {"good_bits": self.good_bits, "crbit": self.crbit,
                "with_variance": self.compute_err, "weight_type": self.weight_type}  # fmt: skip

    def job(self, chips, grid, executor, *, finalize, n_inputs=None, first_context_id=0):
        """The :class:`DrizzleJob` of ``chips`` on ``grid``."""
        return DrizzleJob(
            chips=chips,
            grid_wcs=executor.portable(grid.wcs),
            grid_shape=grid.shape,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            fillval=self.fillval,
            stepsize=self.stepsize,
            weight_type=self.weight_type,
            enable_context=self.context,
            enable_err=self.compute_err,
            n_inputs=n_inputs,
            finalize=finalize,
            first_context_id=first_context_id,
        )


def drizzle_exposures(executor, library, groups, grid, settings, *, keep):
    """Drizzle each group of chips (an exposure) onto ``grid`` into an output of its own.

    Parameters
    ----------
    executor : Executor
        Runs the tasks.
    library : ModelLibrary
        The chips.
    groups : list of list of int
        The chips of every exposure.
    grid : OutputGrid
        The common grid.
    settings : DrizzleSettings
        The drizzle step's parameters.
    keep : bool
        The outputs stay in memory (then all exposures go in one map); else the caller
        saves each as it comes and exposures go a worker's worth (``n_workers``) at a time,
        so that memory holds that many outputs.

    Yields
    ------
    DrizzleResult
        One per group, in order (``product`` None when no chip could be drizzled).
    """
    batch = len(groups) if keep else max(1, executor.n_workers)
    for start in range(0, len(groups), batch):
        with ChipSources(library, executor) as sources:
            jobs = []
            for indices in groups[start : start + batch]:
                chips = [sources.chip(index, grid.pixel_scale, **settings.chip_options())
                         for index in indices]  # fmt: skip
                job = settings.job(chips, grid, executor, finalize=True)
                job.out = output_buffers(executor, grid.shape)
                jobs.append(job)
            results = executor.map(drizzle_chips, jobs, label="Single drizzle")
            for result in results:  # while the jobs hold the buffers' handles
                result.product = received(result.product)
            del jobs
        yield from results


@dataclass
class FinalDrizzle:
    """Every chip drizzled onto one grid (:func:`drizzle_all`)."""

    product: Any  # DrizzleProduct, or None when no chip could be drizzled
    chips: list  # (label, group_id, exposure times) of every chip, in library order
    added: set  # labels of the chips drizzled
    skipped: list  # why the others were not


def drizzle_all(executor, library, grid, settings, *, runs):
    """Drizzle every chip of ``library`` onto ``grid``; context bit ``i`` is chip ``i``.

    The chips go in ``runs`` runs by their position on the grid (:func:`position_runs`), one
    partial accumulation each, side by side on worker processes (drizzle's kernel holds the
    GIL, so threads would take turns), merged in that order. The first run holds arrays for
    the whole grid, which become the product; every other run holds arrays for the rows its
    chips reach only (for WFC3/UVIS or ACS/WFC, each chip position is one run and half of the
    grid). The product's last bits depend on ``runs`` and the chips' positions only, never on
    the scheduler or the machine.

    Returns
    -------
    FinalDrizzle
    """
    n_chips = len(library)
    ny, nx = grid.shape
    infos = [library.chip_info(index) for index in range(n_chips)]
    extents = [_rows_on_grid(info, grid) for info in infos]
    margins = [_row_margin(info, grid, settings) for info in infos]
    groups = position_runs(extents, runs, weights=[math.prod(info.shape) for info in infos])
    with ChipSources(library, executor) as sources:
        jobs, windows = [], []
        for run, group in enumerate(groups):
            start, stop = (0, ny) if run == 0 else _rows_reached(extents, margins, group, ny)
            chips = [sources.chip(index, grid.pixel_scale, context_id=index,
                                  **settings.chip_options()) for index in group]  # fmt: skip
            job = settings.job(chips, grid, executor, finalize=False, n_inputs=n_chips,
                               first_context_id=group[0])  # fmt: skip
            job.grid_shape, job.origin = (stop - start, nx), (0.0, float(start))
            job.out = output_buffers(executor, job.grid_shape, err=settings.compute_err,
                                     context=settings.context, n_inputs=n_chips)  # fmt: skip
            jobs.append(job)
            windows.append(start)
        log.info(
            "Final drizzle: %d chips in %d run(s) on %d worker(s) (%s)",
            n_chips, len(jobs), executor.n_workers, executor.scheduler,
        )  # fmt: skip
        results = executor.map(drizzle_chips, jobs, label="Final drizzle")
        for result in results:  # while the jobs hold the buffers' handles
            result.partial = received(result.partial)
        del jobs
    partials = [
        (
            DrizzleAccumulator.from_partial(
                result.partial, kernel=settings.kernel, fillval=settings.fillval
            ),
            start,
        )  # fmt: skip
        for result, start in zip(results, windows)
        if result.partial is not None
    ]
    product = None
    if partials:
        first, first_start = partials[0]
        if first_start != 0 or first.out_shape != grid.shape:  # the whole-grid run added nothing
            first = DrizzleAccumulator.from_partial(
                _empty_partial(grid.shape, settings, n_chips), kernel=settings.kernel,
                fillval=settings.fillval,
            )  # fmt: skip
            partials.insert(0, (first, 0))
        for other, start in partials[1:]:
            first.merge(other, row_offset=start)
        product = first.finalize()
    # every job records each of its chips, in its group's order: back to library order
    chips = [chip for _, chip in sorted(
        (index, chip) for group, result in zip(groups, results)
        for index, chip in zip(group, result.chips)
    )]  # fmt: skip
    return FinalDrizzle(
        product=product,
        chips=chips,
        added={label for result in results for label in result.added},
        skipped=[reason for result in results for reason in result.skipped],
    )


def _rows_on_grid(info, grid):
    """The output rows a chip's outline spans, or None (then its run takes every row: only
    memory is at stake, the chip's drizzle reports what it cannot map)."""
    try:
        return chip_rows_on_grid(info.wcs, info.shape, grid.wcs)
    except Exception as error:  # noqa: BLE001 - any WCS's failure to map the outline
        log.debug("%s: outline not mapped onto the grid (%s)", chip_label(info), error)
        return None


def _row_margin(info, grid, settings):
    """Output rows beyond a chip's outline that the run's arrays must hold: its drops' reach,
    the room the accumulator keeps around a chip it drizzles directly (1 pixel and the reach,
    2 and the reach on a sub-grid), and the outline's sampling."""
    size = (info.pixel_scale or pixel_scale(info.wcs, info.shape)) / grid.pixel_scale
    return 4.0 + kernel_reach(settings.kernel, settings.pixfrac, size)


def _rows_reached(extents, margins, group, n_rows):
    """``[start, stop)``: the output rows the chips of ``group`` can reach."""
    spans = [extents[index] for index in group]
    if any(span is None for span in spans):
        return 0, n_rows
    start = math.floor(min(extents[i][0] - margins[i] for i in group))
    stop = math.ceil(max(extents[i][1] + margins[i] for i in group)) + 1
    start, stop = max(start, 0), min(stop, n_rows)
    return (start, stop) if start < stop else (0, n_rows)


def _empty_partial(shape, settings, n_chips):
    """Zero sums for the whole grid, for runs that all added nothing on the whole-grid run."""
    n_planes = (max(int(n_chips), 1) - 1) // CONTEXT_PLANE_BITS + 1
    return PartialDrizzle(
        img=np.zeros(shape, np.float32), wht=np.zeros(shape, np.float32),
        var=np.zeros(shape, np.float32) if settings.compute_err else None,
        context=np.zeros((n_planes, *shape), np.int32) if settings.context else None,
        context_ids=(),
    )  # fmt: skip


@dataclass
class ChipJob:
    """One chip ready to drizzle: data already sky-subtracted and converted (see
    :func:`chip_job`)."""

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
    first_context_id: int = 0  # context id of the first chip (see DrizzleAccumulator)
    out: dict | None = None  # ArrayRefs of zeroed output arrays (img, wht, var, ctx) to fill
    origin: tuple = (0.0, 0.0)  # output pixel of the grid where grid_shape starts (a window)


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
        pixmap = PixmapRows(
            chip.wcs, chip.shape, job.grid_wcs, stepsize=job.stepsize, origin=job.origin
        )
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


def chip_job(model, output_scale, executor, *, good_bits, crbit=None, with_variance=False,
             weight_type="exptime", context_id=None):  # fmt: skip
    """Sky-subtract and convert one chip for drizzling (the model is left unchanged).

    Parameters
    ----------
    model : ImageModel
        The chip.
    output_scale : float
        Pixel scale of the output grid [arcsec].
    executor : Executor
        Makes the arrays and the WCS readable by the workers.
    good_bits : str or int or None
        DQ bits that do not make a pixel bad.
    crbit : int or "auto", optional
        DQ value of cosmic rays flagged by BlotCR (always bad); ``"auto"``: the default of the
        chip's DQ convention (4096 for HST, OUTLIER + DO_NOT_USE for JWST).
    with_variance : bool
        Also pass the variance of the drizzled data (error propagation).
    weight_type : str
        ``exptime``, ``err`` or ``ivm``: which variance the weights need.
    context_id : int, optional
        The chip's context bit in the product.

    Returns
    -------
    ChipJob
    """
    if weight_type == "err" and model.meta.has_err is False:
        raise DrizzlepipeInputError(
            chip_label(model), "weight_type='err' but there is no ERR array"
        )
    if crbit == "auto":
        crbit = dqflags.default_crbit(model.meta.dq_convention or "hst")
    factor = electrons_factor(model)
    # the errors first, let go before the mask and the data: one input array in memory at a
    # time, and the mask's temporaries before the data come
    variance = chip_variance(model, factor) if with_variance else None
    variance_for_weight = weight_variance(model, factor, weight_type)
    release_pixels(model)
    bad_mask = bad_pixels(model, good_bits, crbit=crbit)
    sky = 0.0 if model.meta.background.subtracted else float(model.meta.background.level or 0.0)
    data = np.subtract(model.data, np.float32(sky), dtype=np.float32)
    data *= np.float32(factor)  # in place: one chip-sized array, not two
    input_scale = model.meta.detector.pixel_scale or pixel_scale(model.meta.wcs, model.shape)
    return ChipJob(
        data=executor.share(data),
        bad_mask=executor.share(bad_mask),
        variance=executor.share(variance) if variance is not None else None,
        weight_variance=executor.share(variance_for_weight),
        wcs=executor.portable(model.meta.wcs),
        shape=tuple(model.shape),
        exptime=float(model.meta.exposure.exptime),
        in_units="counts" if model.meta.units == "counts" else "cps",
        iscale=chip_iscale(model, output_scale, input_scale),
        pixel_scale_ratio=output_scale / input_scale,
        label=chip_label(model),
        context_id=context_id,
        group_id=model.meta.group_id,
        exposure=exposure_times(model),
    )


#: Prepares chips inside a task, where arrays need not be shared any further.
_IN_TASK = Executor("serial")


@dataclass
class ModelChip:
    """A chip model to be prepared for drizzling (:func:`chip_job`) by the task itself, so the
    sky subtraction, unit conversion and masks run in the worker, one chip at a time, and the
    parent copies nothing: ``model`` is the model itself, inherited by forked workers, or
    opened by the worker from the library's file."""

    model: object  # drizzlepipe.execution.ObjectRef
    output_scale: float
    good_bits: object
    crbit: int | None = None
    with_variance: bool = False
    weight_type: str = "exptime"
    context_id: int | None = None

    def prepare(self):
        """The :class:`ChipJob` of this chip (its pixels are let go again: the job holds what
        it needs)."""
        model = self.model.get()
        job = chip_job(
            model, self.output_scale, _IN_TASK, good_bits=self.good_bits, crbit=self.crbit,
            with_variance=self.with_variance, weight_type=self.weight_type,
            context_id=self.context_id,
        )  # fmt: skip
        release_pixels(model)
        return job


class ChipSources:
    """Hands the chips of a library to drizzle tasks with as little copying as the scheduler
    allows, and returns borrowed models afterwards (a context manager).

    * on-disk library: tasks open their chip from the library's file (no model in the parent);
    * serial, threads, forked processes: the borrowed model itself (inherited by forked
      workers), prepared in the task;
    * a distributed cluster with an in-memory library: the chip is prepared here and its
      arrays go through the executor's scratch files.
    """

    def __init__(self, library, executor):
        self.library, self.executor = library, executor
        self._borrowed = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for index, model in self._borrowed.items():
            self.library.shelve(model, index, modify=False)
        self._borrowed.clear()

    def chip(self, index, output_scale, model=None, **options):
        """A :class:`ModelChip` or a ready :class:`ChipJob` for chip ``index`` (``options``
        as :func:`chip_job`); ``model``: the chip, when the caller has borrowed it already."""
        if model is None and self.library.on_disk:
            return ModelChip(self.library.member_ref(index), output_scale, **options)
        if model is None:
            model = self.library.borrow(index)
            self._borrowed[index] = model
        if self.executor.shares_objects:
            return ModelChip(self.executor.share_object(model), output_scale, **options)
        return chip_job(model, output_scale, self.executor, **options)


@dataclass
class ChipPixels:
    """A chip's data (sky included) and ERR for a task: the chip model itself (in this process
    or inherited by forked workers; its pixels are read where the task runs), or its arrays
    written for the workers of a cluster."""

    model: Any = None  # ObjectRef
    data: ArrayRef | None = None
    err: ArrayRef | None = None

    @classmethod
    def of(cls, model, executor, with_err):
        if executor.shares_objects:
            return cls(model=executor.share_object(model))
        err = executor.share(model.err) if with_err else None
        return cls(data=executor.share(data_with_sky(model)), err=err)

    def arrays(self, with_err):
        """``(data, err or None)``."""
        if self.model is None:
            return self.data.get(), self.err.get() if self.err is not None else None
        model = self.model.get()
        if with_err:
            load_pixels(model)  # both in one reading of the file
        data, err = data_with_sky(model), model.err if with_err else None
        release_pixels(model)  # the arrays above stay as long as the task needs them
        return data, err


@dataclass
class CosmicRayJob:
    """One chip to check for cosmic rays against the median (:func:`find_cosmic_rays`)."""

    chip: ChipPixels
    wcs: Any
    label: str
    median: BlotMedian  # its arrays as ArrayRefs
    scaling: ChipScaling
    test: CosmicRayTest
    keep_blot: bool = False
    no_seed: ArrayRef | None = None  # bit-packed: pixels that cannot seed a cosmic ray


def find_cosmic_rays(job):
    """The task of :func:`check_chips`: :func:`~drizzlepipe.algorithms.blotcr.blot_and_detect`
    on one chip."""
    data, err = job.chip.arrays(with_err=job.test.noise == "err")
    median = job.median
    median = replace(median, **{
        name: getattr(median, name).get()
        for name in ("filled", "holes", "weight") if getattr(median, name) is not None
    })  # fmt: skip
    no_seed = None
    if job.no_seed is not None:
        no_seed = unpack_mask(job.no_seed.get(), data.shape)
    return blot_and_detect(data, job.wcs, median, job.scaling, job.test, err=err,
                           no_seed=no_seed, keep_blot=job.keep_blot, label=job.label)  # fmt: skip


def prepare_median(executor, median, wcs, weight=None):
    """:meth:`BlotMedian.prepare <drizzlepipe.algorithms.blotcr.BlotMedian.prepare>`, in one
    band of rows per worker (:meth:`Executor.map_row_bands`)."""
    preparation = MedianPreparation(median, weight)
    arrays, n_holes = executor.map_row_bands(
        preparation, median.shape, preparation.outputs, label="Median holes"
    )
    return preparation.result(arrays, sum(n_holes), wcs)


def check_chips(executor, library, units, median, plan, *, few):
    """Blot ``median`` onto every chip of ``units`` and find the chips' cosmic rays.

    Parameters
    ----------
    executor : Executor
        Runs the tasks.
    library : ModelLibrary
        The chips.
    units : list of list of int
        Chips in sets whose results the caller uses together (whole files: their copies are
        written once, complete).
    median : BlotMedian
        The median, prepared.
    plan : callable
        ``plan(model) -> (ChipScaling, CosmicRayTest, keep_blot, no_seed)`` for one chip;
        ``no_seed``: boolean mask of the pixels that cannot seed a cosmic ray, or None.
    few : bool
        Keep few chips borrowed at a time (an on-disk library, or blots kept for saving):
        a worker's worth of units per map; else every chip in one map.

    Yields
    ------
    units, models, results
        The units of one map, ``{index: model}`` of their chips (borrowed; shelved as
        modified after the caller's loop body ran) and ``{index: CosmicRayResult}``.
    """
    shared = BlotMedian(
        filled=executor.share(median.filled),
        holes=executor.share(median.holes) if median.holes is not None else None,
        weight=executor.share(median.weight) if median.weight is not None else None,
        holes_in_weight=median.holes_in_weight,
        wcs=executor.portable(median.wcs),
    )
    batch = max(1, executor.n_workers) if few else len(units)
    for start in range(0, len(units), batch):
        group = units[start : start + batch]
        indices = [index for unit in group for index in unit]
        models = {index: library.borrow(index) for index in indices}
        try:
            jobs = []
            for index in indices:
                model = models[index]
                scaling, test, keep_blot, no_seed = plan(model)
                if no_seed is not None:  # 1 bit a pixel while it waits for its task
                    no_seed = executor.share(np.packbits(no_seed, axis=None))
                jobs.append(CosmicRayJob(
                    chip=ChipPixels.of(model, executor, with_err=test.noise == "err"),
                    wcs=executor.portable(model.meta.wcs), label=chip_label(model),
                    median=shared, scaling=scaling, test=test, keep_blot=keep_blot,
                    no_seed=no_seed,
                ))  # fmt: skip
            found = executor.map(find_cosmic_rays, jobs, label="Blot + cosmic rays")
            del jobs
            yield group, models, dict(zip(indices, found))
        finally:
            for index, model in models.items():
                library.shelve(model, index, modify=True)
        log.debug("Files %d/%d checked", start + len(group), len(units))


@dataclass
class CopyJob:
    """Write one input file's chips as a copy with their DQ as now (e.g. ``_crf``)."""

    models: list  # ObjectRefs of the file's chip models, in extension order
    path: str


def write_copy(job):
    """Write ``job.path`` (:func:`~drizzlepipe.datamodels.writers.write_exposure_copy`)."""
    models = [ref.get() for ref in job.models]
    write_exposure_copy(models, job.path)
    for model in models:
        release_pixels(model)
    return job.path


def write_copies_in_workers(executor, writes):
    """Write copies of input files: ``writes`` is a list of ``(chip models, path)``; in the
    workers when they can be given the models (forked processes inherit them), else here."""
    if executor.shares_objects:
        jobs = [CopyJob([executor.share_object(model) for model in models], str(path))
                for models, path in writes]  # fmt: skip
        executor.map(write_copy, jobs, label="Writing copies")
        return
    for models, path in writes:
        write_exposure_copy(models, str(path))


@dataclass
class _CombineBand:
    """Rows of the combined image and of the inputs' total weight (:func:`combine_in_bands`)."""

    combiner: StackCombiner
    weights: ImageStack | None

    def __call__(self, start, stop, arrays):
        n_empty = self.combiner.combine_rows(start, stop, arrays["image"])
        if self.weights is not None:
            sum_rows(self.weights, start, stop, out=arrays["weight"][start:stop])
        return n_empty


def combine_in_bands(executor, combiner, weights=None):
    """Evaluate ``combiner`` (a :class:`~drizzlepipe.algorithms.combine.StackCombiner`) over
    the whole image, and the sum of ``weights`` (an ``ImageStack``, or None) with it.

    The rows are split into one band per worker (:meth:`Executor.map_row_bands`) when the
    inputs are in memory; inputs read from files are combined here, by one reader.

    Returns
    -------
    image : numpy.ndarray
        float32 combined image.
    weight : numpy.ndarray or None
        float32 sum of the weights, in stack order.
    n_empty : int
        Pixels without a good value.
    """
    in_memory = combiner.in_memory and (weights is None or weights.in_memory)
    runner = executor if in_memory else Executor("serial")
    outputs = {"image": np.float32}
    if weights is not None:
        outputs["weight"] = np.float32
    arrays, n_empty = runner.map_row_bands(
        _CombineBand(combiner, weights), combiner.shape, outputs, label="Median"
    )
    return arrays["image"], arrays.get("weight"), sum(n_empty)
