"""Drizzle accumulation onto one output grid: science, weight, error and context.

:class:`DrizzleAccumulator` wraps :class:`drizzle.resample.Drizzle` (drizzle 3.0 C kernels) for
one output grid. Chips are added one at a time with a pixel map
(:func:`drizzlepipe.algorithms.pixmap.compute_pixmap`), a weight map and an optional variance
array; :meth:`DrizzleAccumulator.finalize` returns the product arrays. Partial accumulations
(for example one per thread) are combined exactly with :meth:`DrizzleAccumulator.merge`.

Units and scaling (AstroDrizzle spec sections 4, 5 and 9)
---------------------------------------------------------
* What is drizzled is ``data * iscale / t`` with ``t = exptime`` for ``in_units="counts"`` and
  ``t = 1`` for ``"cps"``: the output is a *rate* (input units per second) per output pixel.
* ``iscale`` is the pixel-area ratio ``(output scale / input scale)**2`` for per-pixel quantities
  (HST FLT/FLC counts or rates, see :func:`pixel_area_ratio`) and 1 for surface brightness (JWST
  MJy/sr). For HST use IDCSCALE as the input scale (AstroDrizzle's ``s**2``).
* ``pixel_scale_ratio`` (output / input scale) sizes the turbo, gaussian and lanczos kernels in
  output pixels, as drizzle requires (stcal #418).
* Sky: subtract it from ``data`` before adding (AstroDrizzle drizzles ``SCI - MDRIZSKY``).
* Flux: every kernel conserves the weighted sum ``sum(I * W) = sum(iscale * d / t * w)`` exactly.
  The image sum (what aperture photometry sees) is conserved to 1e-6 by the square kernel and to
  4e-4 by turbo under rotation and scale changes (tests), but only statistically by the point
  kernel, whose output pixels receive 0, 1, 2 ... samples (1-2% for an undersampled star).

Weights (``weight_type``)
-------------------------
``exptime``: ``exptime`` on good pixels (AstroDrizzle ``EXP``); ``err``: inverse variance of the
drizzled values from the ERR array, ``(t / (iscale * ERR))**2`` (AstroDrizzle ``ERR``:
``(EXPTIME/ERR)**2 / s**4``); ``ivm``: an inverse-variance map converted the same way,
``IVM * (t / iscale)**2`` (AstroDrizzle ``IVM``: ``IVM * EXPTIME**2 / s**4``). Bad pixels
(mask True), non-finite data and, for ``err``/``ivm``, non-positive or non-finite ERR/IVM get
weight 0. See :func:`build_weight`.

Error propagation
-----------------
drizzle computes, next to the weighted mean ``I = sum(w d) / sum(w)`` of every output pixel,
``V = sum(w**2 v) / (sum w)**2`` from input variances ``v`` (its squared-weight ``data2`` output).
``sqrt(V)`` is the standard error of the weighted mean, which is what ERR reports. stcal resamples
the *variance* with the ordinary weights and takes the square root, ``sqrt(sum(w v) / sum(w))``:
that is the error of one input pixel, not of the mean, and overestimates the error wherever
several input pixels contribute (twice too large for four equally weighted contributions). The
variance passed in must be that of ``data`` (same units, squared); drizzle applies
``(iscale / t)**2`` itself. Output pixels are correlated by the kernel, so ``ERR`` is the error of
each pixel, not of sums of pixels.

Context
-------
Every chip has a *context id* (0-based; the caller's chip index over the whole product). Output
pixel ``(y, x)`` has bit ``id % 32`` set in plane ``id // 32`` when the chip contributed with a
positive weight. :meth:`DrizzleAccumulator.finalize` returns a 2-D int32 image for ids < 32 and a
``(nplanes, ny, nx)`` int32 cube otherwise; :func:`decode_context`,
:func:`context_contributor_mask` and :func:`context_contributor_count` read it.

Merging partial accumulations
-----------------------------
Accumulators that each drizzled some chips of one product onto the same grid (same kernel and
options) combine exactly: weights add, the science is the weight-weighted mean of the partial
means (i.e. sums of ``data * weight`` and of ``weight`` add), the error combines as
``(V1 W1**2 + V2 W2**2) / (W1 + W2)**2``, and context bits OR. Give every chip its global context
id (``context_id=``); the order in which chips are added does not matter, up to float32 rounding.

Bad input
---------
Errors are :class:`ResampleInputError` subclasses (``ValueError``), named after the chip
(``label``), so a caller can warn and skip the chip: :class:`NoOverlapError` (no input pixel
reaches the grid), :class:`AllPixelsMaskedError` (no pixel with positive weight),
:class:`InvalidExposureTimeError` (zero, negative or non-finite exposure time). NaN/inf in data
(and in variance, ERR, IVM) are bad pixels. Output arrays larger than ``memory_limit`` raise
:class:`~drizzlepipe.algorithms.grid.OutputGridTooLargeError` when the accumulator is created.

Chips crossing the edge of the grid (drizzle 3.0 bug worked around)
-------------------------------------------------------------------
drizzle 3.0 clips a chip's outline with the output grid and then drizzles only the input pixels
inside the clipped outline. For chips that cross the grid's edge this silently drops input pixels
that do land on the grid (130 of 300 random rotated chips lost weight, up to 14 pixels' worth,
sometimes a triangle far from the edge). Such chips go a band of rows at a time (below): a band
on the grid takes the direct path, a band across its edge is drizzled onto a sub-grid that holds
the whole band and the part on the output grid is then combined like a merge, which is exact
(test: total weight equals the exact geometric overlap), and a band off the grid is left out.
A chip given as a whole map takes one sub-grid for the whole chip. Chips lying on the grid, as
with the default grid, take the direct path.

Chips in bands
--------------
A chip's pixel map (two float64 a pixel: 134 MB for a 4096 x 2051 UVIS chip) is the largest
array of a drizzle. Given as a :class:`~drizzlepipe.algorithms.pixmap.PixmapRows` instead of an
array, a chip that lies on the grid is drizzled in bands of about 2**20 pixels (at least 128
rows), each with its map evaluated for the band alone (16 MB) and one more row on either side at
weight 0, so that drizzle finds the corners of the band's pixels from their true neighbours; all
bands carry the chip's context id. Measured on distorted chips: the same science, weight, error
and context as the whole chip for every kernel, except that the square kernel's weight and
variance sums round differently in the last bit (1 part in 1e7). A chip crossing the edge goes
band by band as above (its bands' sub-grids merge: 3e-7 relative from one sub-grid for the
whole chip); its context bit is drizzle's own number when the accumulator has planes for every
input (``n_inputs``), so the bits of its sub-grids go into the same planes.

A partial accumulation may hold only a band of rows of the grid (the final drizzle's runs of
chips at one position): its chips' maps are then given from the band's first row
(``PixmapRows(..., origin=(0, start))``) and :meth:`DrizzleAccumulator.merge` takes it at that
row (``row_offset``).

Differences from AstroDrizzle
-----------------------------
* Output pixels no input reached get ``fillval`` (default NaN, AstroDrizzle's final default);
  AstroDrizzle's [QUIRK] of zero-weight inputs overwriting the science where the weight is still
  0 is fixed in drizzle (PR #79): such pixels are untouched.
* ``pixfrac`` is not silently turned into the point kernel below 0.001; it must be positive.
* The error image is the standard error of the weighted mean (AstroDrizzle writes none).
* Kernel ``lanczos2`` (from drizzle) is accepted in addition to AstroDrizzle's five; gaussian and
  lanczos kernels do not conserve flux (drizzle warns on every call).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from drizzle.resample import Drizzle

from drizzlepipe.algorithms.grid import OutputGridTooLargeError
from drizzlepipe.algorithms.pixmap import (
    PixmapRows,
    pixmap_input_pixel_size,
    pixmap_outline_extent,
)
from drizzlepipe.exceptions import DrizzlepipeInputError

__all__ = [
    "CONTEXT_PLANE_BITS",
    "DEFAULT_MEMORY_LIMIT",
    "FLUX_CONSERVING_KERNELS",
    "SUPPORTED_KERNELS",
    "WEIGHT_TYPES",
    "AllPixelsMaskedError",
    "DrizzleAccumulator",
    "DrizzleProduct",
    "PartialDrizzle",
    "InvalidExposureTimeError",
    "NoOverlapError",
    "ResampleInputError",
    "build_weight",
    "kernel_reach",
    "context_contributor_count",
    "context_contributor_mask",
    "decode_context",
    "err_weight",
    "exptime_weight",
    "ivm_weight",
    "merge_accumulators",
    "pixel_area_ratio",
]

SUPPORTED_KERNELS = ("square", "turbo", "point", "gaussian", "lanczos2", "lanczos3")
FLUX_CONSERVING_KERNELS = ("square", "turbo", "point")
WEIGHT_TYPES = ("exptime", "err", "ivm")
CONTEXT_PLANE_BITS = 32
#: Default largest size in bytes of an accumulator's output arrays (science, weight, error and
#: context): 4 GiB, e.g. 23170 x 23170 pixels without error and context.
DEFAULT_MEMORY_LIMIT = 4 * 2**30

# How far (in input pixels) beyond its centre a kernel drops flux, for the overlap test and the
# context bookkeeping: half the diagonal of a square drop; drizzle's gaussian radius
# max(2.5 sigma, 1.2) with sigma = pixfrac / 2.3548; the lanczos support.
_KERNEL_REACH = {
    "square": lambda pixfrac: 0.75 * pixfrac,
    "turbo": lambda pixfrac: 0.75 * pixfrac,
    "point": lambda pixfrac: 0.0,
    "gaussian": lambda pixfrac: max(2.5 * pixfrac / 2.3548, 1.2),
    "lanczos2": lambda pixfrac: 2.0 * pixfrac,
    "lanczos3": lambda pixfrac: 3.0 * pixfrac,
}
# drizzle takes chips whose outline pokes out of the grid by no more than this (output pixels,
# float rounding of an outline that touches the edge) directly; see DrizzleAccumulator._inside_grid.
_TOUCH_TOLERANCE = 1e-6
# drizzle accumulates squared weights in float32 for the error image (max 3.4e38): weights
# above ~1.8e19 overflow to an infinite error; 1e18 leaves room for sums over many inputs.
_MAX_WEIGHT_WITH_ERR = 1e18
# Pixels per block when combining partial results, so that float64 temporaries stay in cache.
_COMBINE_BLOCK_PIXELS = 2**16
# A chip given as PixmapRows is drizzled in bands of about this many pixels (its map: 16 bytes a
# pixel, 16 MiB a band instead of 134 MiB for a UVIS chip), of at least _BAND_MIN_ROWS rows:
# bands of a few rows lost input pixels in drizzle's polygon scan (measured), 128 rows never.
_BAND_PIXELS = 2**20
_BAND_MIN_ROWS = 128


class ResampleInputError(DrizzlepipeInputError):
    """A chip cannot be drizzled; ``file`` is the chip's label. Callers may warn and skip it."""


class NoOverlapError(ResampleInputError):
    """No pixel of the chip reaches the output grid."""


class AllPixelsMaskedError(ResampleInputError):
    """No pixel of the chip has a positive weight (all masked, non-finite or zero weight)."""


class InvalidExposureTimeError(ResampleInputError):
    """The chip's exposure time is zero, negative or not finite."""


# ---------------------------------------------------------------------------------------------
# Scaling and weights
# ---------------------------------------------------------------------------------------------


def pixel_area_ratio(output_scale: float, input_scale: float, *, per_pixel: bool = True) -> float:
    """Intensity scale ``iscale`` for drizzling: the output/input pixel-area ratio.

    Parameters
    ----------
    output_scale, input_scale : float
        Pixel scales in arcsec (input: HST IDCSCALE, or :func:`~.grid.pixel_scale`).
    per_pixel : bool, optional
        True (default) for quantities per pixel (counts, e-/s): values scale with pixel area.
        False for surface brightness (e.g. MJy/sr): returns 1.

    Returns
    -------
    float
        ``(output_scale / input_scale)**2`` or 1.
    """
    if not (np.isfinite(output_scale) and output_scale > 0):
        raise ValueError(f"output_scale must be a positive number, got {output_scale!r}")
    if not (np.isfinite(input_scale) and input_scale > 0):
        raise ValueError(f"input_scale must be a positive number, got {input_scale!r}")
    return (output_scale / input_scale) ** 2 if per_pixel else 1.0


def _drizzled_unit_factor(exptime: float, in_units: str, iscale: float) -> float:
    """Factor from input values to drizzled values: ``iscale / t``."""
    _check_units(in_units)
    return iscale / (exptime if in_units == "counts" else 1.0)


def _check_units(in_units: str) -> None:
    if in_units not in ("counts", "cps"):
        raise ValueError(f"in_units must be 'counts' or 'cps', got {in_units!r}")


def _good_pixels(shape, bad_mask, data) -> np.ndarray:
    good = np.ones(shape, dtype=bool)
    if bad_mask is not None:
        bad_mask = np.asarray(bad_mask, dtype=bool)
        if bad_mask.shape != tuple(shape):
            raise ValueError(f"bad_mask shape {bad_mask.shape} differs from {tuple(shape)}")
        good &= ~bad_mask
    if data is not None:
        data = np.asarray(data)
        if data.shape != tuple(shape):
            raise ValueError(f"data shape {data.shape} differs from {tuple(shape)}")
        good &= np.isfinite(data)
    return good


def exptime_weight(exptime: float, bad_mask=None, *, data=None, shape=None) -> np.ndarray:
    """AstroDrizzle ``EXP`` weights: the exposure time on good pixels, 0 on bad ones.

    Parameters
    ----------
    exptime : float
        Exposure time in seconds (positive).
    bad_mask : array_like of bool, optional
        True = bad pixel.
    data : array_like, optional
        If given, its non-finite pixels are bad too.
    shape : tuple of int, optional
        Chip shape; needed only when neither ``bad_mask`` nor ``data`` is given.

    Returns
    -------
    numpy.ndarray
        float32 weight map.
    """
    if not (np.isfinite(exptime) and exptime > 0):
        raise ValueError(f"exptime must be a positive number of seconds, got {exptime!r}")
    if shape is None:
        reference = bad_mask if bad_mask is not None else data
        if reference is None:
            raise ValueError("give bad_mask, data or shape")
        shape = np.shape(reference)
    good = _good_pixels(tuple(shape), bad_mask, data)
    return np.where(good, np.float32(exptime), np.float32(0.0))


def err_weight(
    err, bad_mask=None, *, exptime: float, in_units: str, iscale: float = 1.0, data=None
) -> np.ndarray:
    """AstroDrizzle ``ERR`` weights: inverse variance of the drizzled values from an ERR array.

    Parameters
    ----------
    err : array_like
        1-sigma error of each pixel, in the units of the data.
    bad_mask : array_like of bool, optional
        True = bad pixel.
    exptime : float
        Exposure time in seconds.
    in_units : {"counts", "cps"}
        Units of the data (and of ``err``).
    iscale : float, optional
        Intensity scale applied when drizzling (pixel-area ratio).
    data : array_like, optional
        If given, its non-finite pixels are bad too.

    Returns
    -------
    numpy.ndarray
        float32 ``1 / (err * iscale / t)**2`` (t = exptime for counts, 1 for cps); 0 where bad or
        where ``err`` is not a positive finite number.
    """
    err = np.asarray(err, dtype=np.float64)
    factor = _drizzled_unit_factor(exptime, in_units, iscale)
    good = _good_pixels(err.shape, bad_mask, data) & np.isfinite(err) & (err > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weight = 1.0 / (err * factor) ** 2
    return np.where(good & np.isfinite(weight), weight, 0.0).astype(np.float32)


def ivm_weight(
    ivm, bad_mask=None, *, exptime: float, in_units: str, iscale: float = 1.0, data=None
) -> np.ndarray:
    """AstroDrizzle ``IVM`` weights: an inverse-variance map converted to drizzled units.

    Parameters
    ----------
    ivm : array_like
        Inverse variance of each pixel, in 1 / (data units)**2.
    bad_mask : array_like of bool, optional
        True = bad pixel.
    exptime : float
        Exposure time in seconds.
    in_units : {"counts", "cps"}
        Units of the data.
    iscale : float, optional
        Intensity scale applied when drizzling (pixel-area ratio).
    data : array_like, optional
        If given, its non-finite pixels are bad too.

    Returns
    -------
    numpy.ndarray
        float32 ``ivm * (t / iscale)**2``; 0 where bad or where ``ivm`` is not positive and finite.
    """
    ivm = np.asarray(ivm, dtype=np.float64)
    factor = _drizzled_unit_factor(exptime, in_units, iscale)
    good = _good_pixels(ivm.shape, bad_mask, data) & np.isfinite(ivm) & (ivm > 0)
    with np.errstate(over="ignore", invalid="ignore"):
        weight = ivm / factor**2
    return np.where(good & np.isfinite(weight), weight, 0.0).astype(np.float32)


def build_weight(
    weight_type: str,
    *,
    exptime: float,
    bad_mask=None,
    data=None,
    err=None,
    ivm=None,
    in_units: str = "cps",
    iscale: float = 1.0,
) -> np.ndarray:
    """Weight map of one chip for ``weight_type`` ``exptime`` | ``err`` | ``ivm``.

    Parameters
    ----------
    weight_type : {"exptime", "err", "ivm"}
        Which weighting (see the module notes).
    exptime : float
        Exposure time in seconds.
    bad_mask : array_like of bool, optional
        True = bad pixel.
    data : array_like, optional
        Science array; its non-finite pixels get weight 0.
    err, ivm : array_like, optional
        ERR or IVM array, required for the corresponding weight type.
    in_units : {"counts", "cps"}, optional
        Units of the data.
    iscale : float, optional
        Intensity scale applied when drizzling.

    Returns
    -------
    numpy.ndarray
        float32 weight map, 0 on bad pixels.
    """
    if weight_type == "exptime":
        return exptime_weight(exptime, bad_mask, data=data)
    if weight_type == "err":
        if err is None:
            raise ValueError("weight_type 'err' needs the ERR array")
        return err_weight(
            err, bad_mask, exptime=exptime, in_units=in_units, iscale=iscale, data=data
        )
    if weight_type == "ivm":
        if ivm is None:
            raise ValueError("weight_type 'ivm' needs the IVM array")
        return ivm_weight(
            ivm, bad_mask, exptime=exptime, in_units=in_units, iscale=iscale, data=data
        )
    raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")


# ---------------------------------------------------------------------------------------------
# Context helpers
# ---------------------------------------------------------------------------------------------


def _as_planes(context) -> np.ndarray:
    context = np.asarray(context)
    if context.ndim == 2:
        context = context[np.newaxis]
    if context.ndim != 3 or context.dtype.kind not in "iu":
        raise ValueError("context must be a 2-D or 3-D integer array")
    return context


def context_contributor_mask(context, context_id: int) -> np.ndarray:
    """Boolean image: where the chip with ``context_id`` contributed.

    Parameters
    ----------
    context : array_like
        Context image, 2-D ``(ny, nx)`` or 3-D ``(nplanes, ny, nx)``, int32 bit planes.
    context_id : int
        0-based chip id.

    Returns
    -------
    numpy.ndarray
        bool ``(ny, nx)``; all False if the id is beyond the planes present.
    """
    planes = _as_planes(context)
    plane, bit = divmod(int(context_id), CONTEXT_PLANE_BITS)
    if context_id < 0:
        raise ValueError(f"context_id must be non-negative, got {context_id}")
    if plane >= planes.shape[0]:
        return np.zeros(planes.shape[1:], dtype=bool)
    return (planes[plane].view(np.uint32) >> np.uint32(bit)) & np.uint32(1) == 1


def context_contributor_count(context) -> np.ndarray:
    """Number of chips that contributed to every output pixel (HST ``NCOMBINE`` per pixel).

    Parameters
    ----------
    context : array_like
        Context image, 2-D or 3-D int32 bit planes.

    Returns
    -------
    numpy.ndarray
        int32 ``(ny, nx)``.
    """
    planes = _as_planes(context)
    counts = np.zeros(planes.shape[1:], dtype=np.int32)
    for plane in planes:
        counts += np.bitwise_count(plane.view(np.uint32)).astype(np.int32)
    return counts


def decode_context(context, x, y) -> list[np.ndarray]:
    """0-based ids of the chips that contributed to output pixels ``(x, y)``.

    Parameters
    ----------
    context : array_like
        Context image, 2-D ``(ny, nx)`` or 3-D ``(nplanes, ny, nx)``, int32 bit planes.
    x, y : int or array_like of int
        Pixel coordinates (x = column, y = row), scalars or 1-D arrays of equal length.

    Returns
    -------
    list of numpy.ndarray
        One sorted int array of chip ids per pixel.
    """
    planes = _as_planes(context)
    x = np.atleast_1d(x)
    y = np.atleast_1d(y)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be scalars or 1-D arrays of equal length")
    if x.dtype.kind not in "iu" or y.dtype.kind not in "iu":
        raise ValueError("pixel coordinates must be integers")
    bits = np.arange(CONTEXT_PLANE_BITS, dtype=np.uint32)
    result = []
    for xi, yi in zip(x, y):
        words = planes[:, yi, xi].astype(np.int64) & 0xFFFFFFFF  # each plane as unsigned
        flags = (words[:, np.newaxis] >> bits.astype(np.int64)) & 1
        result.append(np.flatnonzero(flags.ravel()))
    return result


# ---------------------------------------------------------------------------------------------
# Accumulator
# ---------------------------------------------------------------------------------------------


@dataclass
class DrizzleProduct:
    """Arrays of a finished drizzle.

    Attributes
    ----------
    data : numpy.ndarray
        float32 ``(ny, nx)`` weighted mean, in drizzled units (input units x iscale per second
        for counts, x iscale for rates); ``fillval`` where no input contributed (weight 0).
    wht : numpy.ndarray
        float32 ``(ny, nx)`` total weight.
    err : numpy.ndarray or None
        float32 standard error of ``data``; ``fillval`` where the weight is 0. None when disabled.
    context : numpy.ndarray or None
        int32 ``(ny, nx)`` when all ids are < 32, else ``(nplanes, ny, nx)``. None when disabled.
    context_ids : tuple of int
        Ids of all chips that were added, sorted.
    """

    data: np.ndarray
    wht: np.ndarray
    err: np.ndarray | None
    context: np.ndarray | None
    context_ids: tuple[int, ...]


@dataclass
class _Member:
    context_id: int
    local_id: int | None  # bit of this chip in the Drizzle object's own context (None: flushed)
    box: tuple[slice, slice] | None  # output region the chip can touch (only when remapping)


@dataclass
class PartialDrizzle:
    """The sums of a partial accumulation (:meth:`DrizzleAccumulator.partial`).

    ``img``/``wht``/``var``: running weighted mean, total weight, squared-weight variance sum
    (None without error propagation); ``context``: ``(nplanes, ny, nx)`` int32 bits by context
    id (None without context); ``context_ids``: the chips added.
    """

    img: np.ndarray
    wht: np.ndarray
    var: np.ndarray | None
    context: np.ndarray | None
    context_ids: tuple[int, ...]


def _check_out_arrays(out_arrays, shape, n_planes):
    """Validate caller-supplied output arrays: zero-filled, C-contiguous, right shape/dtype."""
    given = dict(out_arrays or {})
    unknown = set(given) - {"img", "wht", "var", "ctx"}
    if unknown:
        raise ValueError(f"unknown output arrays {sorted(unknown)}")
    for name, array in given.items():
        dtype = np.int32 if name == "ctx" else np.float32
        expected = (n_planes, *shape) if name == "ctx" else shape
        if array.dtype != dtype or array.shape != expected or not array.flags.c_contiguous:
            raise ValueError(
                f"out_arrays[{name!r}] must be a C-contiguous {np.dtype(dtype)} array of shape "
                f"{expected}, got {array.dtype} {array.shape}"
            )
    return given


class DrizzleAccumulator:
    """Drizzle chips onto one output grid; merge partial results; finalize.

    Parameters
    ----------
    out_shape : tuple of int
        Output array shape ``(ny, nx)``.
    kernel : str, optional
        One of :data:`SUPPORTED_KERNELS` (default ``"square"``); fixed for the accumulator.
    fillval : float, optional
        Value of output science and error pixels that no input reached (weight 0). Default NaN.
    enable_context : bool, optional
        Keep the context image (4 bytes per pixel per 32 chips). Default True.
    enable_err : bool, optional
        Propagate variances into an error image (4 bytes per pixel); every chip must then come
        with a variance array. Default True.
    n_inputs : int or None, optional
        Expected largest context id + 1, to allocate all context planes at once (the context
        grows, with a copy, when more chips come).
    memory_limit : int, optional
        Largest allowed size in bytes of the output arrays (default :data:`DEFAULT_MEMORY_LIMIT`).
    out_arrays : mapping, optional
        Zero-filled arrays to accumulate into instead of new ones (e.g. memory shared with
        other processes): ``img``, ``wht``, ``var`` float32 ``(ny, nx)``, ``ctx`` int32
        ``(nplanes, ny, nx)`` with nplanes from ``n_inputs``; any subset.
    first_context_id : int, optional
        Context id of the first chip to be added (a run of a larger set). With ``n_inputs``
        every chip's bit is drizzle's own number, its id, in any order; without, chips added
        with consecutive ids from this one need no remapping. Default 0.

    Raises
    ------
    OutputGridTooLargeError
        The output arrays would exceed ``memory_limit``.

    Notes
    -----
    An accumulator is not thread-safe: give every thread its own and :meth:`merge` them.
    """

    def __init__(
        self,
        out_shape,
        *,
        kernel: str = "square",
        fillval: float = np.nan,
        enable_context: bool = True,
        enable_err: bool = True,
        n_inputs: int | None = None,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        out_arrays: Mapping[str, np.ndarray] | None = None,
        first_context_id: int = 0,
    ):
        try:
            ny, nx = (int(n) for n in out_shape)
        except (TypeError, ValueError):
            raise ValueError(f"out_shape must be (ny, nx), got {out_shape!r}") from None
        if ny < 1 or nx < 1:
            raise ValueError(f"out_shape must be positive, got {out_shape!r}")
        if kernel not in SUPPORTED_KERNELS:
            raise ValueError(f"kernel must be one of {SUPPORTED_KERNELS}, got {kernel!r}")
        if n_inputs is not None and int(n_inputs) < 1:
            raise ValueError(f"n_inputs must be positive, got {n_inputs!r}")
        self._shape = (ny, nx)
        self._kernel = kernel
        self._fillval = float(fillval)
        self._enable_context = bool(enable_context)
        self._enable_err = bool(enable_err)

        n_planes = 1 if n_inputs is None else (int(n_inputs) - 1) // CONTEXT_PLANE_BITS + 1
        bytes_per_pixel = 8 + 4 * self._enable_err + 4 * n_planes * self._enable_context
        needed = ny * nx * bytes_per_pixel
        if needed > memory_limit:
            raise OutputGridTooLargeError(
                f"drizzling onto {ny} x {nx} pixels needs {needed / 2**30:.2f} GiB for the output "
                f"arrays, more than the limit of {memory_limit / 2**30:.2f} GiB; disable the "
                "context or error image, use a smaller grid, or raise memory_limit"
            )

        given = _check_out_arrays(out_arrays, self._shape, n_planes)
        self._img = given.get("img", np.zeros(self._shape, dtype=np.float32))
        self._wht = given.get("wht", np.zeros(self._shape, dtype=np.float32))
        self._var = None
        if self._enable_err:
            self._var = given.get("var", np.zeros(self._shape, dtype=np.float32))
        if int(first_context_id) < 0:
            raise ValueError(f"first_context_id must be >= 0, got {first_context_id!r}")
        # Arrays are zero-filled, so fillval=None tells drizzle not to fill anything after
        # each chip (a pass over the whole output per chip); fillval is applied once in
        # finalize(). Chips added in order from first_context_id get drizzle's own context
        # bits equal to their context ids (no remapping).
        self._max_ctx_id = max(n_planes * CONTEXT_PLANE_BITS - 1, int(first_context_id))
        self._planes_for_every_input = n_inputs is not None
        self._driz = Drizzle(
            kernel=kernel,
            fillval=None,
            fillval2=None,
            out_img=self._img,
            out_wht=self._wht,
            out_img2=[self._var] if self._enable_err else None,
            out_ctx=given.get("ctx") if self._enable_context else None,
            begin_ctx_id=int(first_context_id),
            max_ctx_id=self._max_ctx_id,
            disable_ctx=not self._enable_context,
        )
        self._members: list[_Member] = []
        self._ids: set[int] = set()
        self._global_context: np.ndarray | None = None
        self._finalized = False

    # -- properties --------------------------------------------------------------------------

    @property
    def out_shape(self) -> tuple[int, int]:
        """Output array shape ``(ny, nx)``."""
        return self._shape

    @property
    def kernel(self) -> str:
        """The drizzle kernel."""
        return self._kernel

    @property
    def context_ids(self) -> tuple[int, ...]:
        """Sorted ids of the chips added so far (including merged ones)."""
        return tuple(sorted(self._ids))

    @property
    def n_chips(self) -> int:
        """Number of chips added so far (including merged ones)."""
        return len(self._ids)

    # -- adding ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._finalized:
            raise RuntimeError("this accumulator has been finalized; create a new one")

    def add_chip(
        self,
        data,
        pixmap,
        *,
        exptime: float,
        weight=None,
        bad_mask=None,
        variance=None,
        in_units: str = "cps",
        iscale: float = 1.0,
        pixel_scale_ratio: float = 1.0,
        pixfrac: float = 1.0,
        context_id: int | None = None,
        label: str | None = None,
    ) -> int:
        """Drizzle one chip onto the output grid.

        Parameters
        ----------
        data : array_like
            2-D science array (sky already subtracted), in ``in_units``. NaN/inf are bad pixels.
        pixmap : numpy.ndarray or PixmapRows
            ``(ny, nx, 2)`` output pixel positions of the chip's pixel centres
            (:func:`~drizzlepipe.algorithms.pixmap.compute_pixmap`), or the
            :class:`~drizzlepipe.algorithms.pixmap.PixmapRows` that evaluates them: a chip on
            the grid is then drizzled in bands of rows without its whole map in memory (see
            the module notes).
        exptime : float
            Exposure time in seconds; must be positive. Divides counts data into rates.
        weight : array_like, optional
            Weight map (:func:`build_weight`); default ``exptime`` on every good pixel.
        bad_mask : array_like of bool, optional
            True = bad pixel (weight 0).
        variance : array_like, optional
            Variance of ``data`` (data units squared); required when the error image is enabled,
            ignored otherwise. Negative or non-finite values are bad pixels.
        in_units : {"counts", "cps"}, optional
            Units of ``data``: per exposure or per second. Default ``"cps"``.
        iscale : float, optional
            Intensity scale (:func:`pixel_area_ratio`). Default 1.
        pixel_scale_ratio : float, optional
            Output/input pixel scale ratio, sizes the turbo/gaussian/lanczos kernels.
        pixfrac : float, optional
            Linear drop size as a fraction of the input pixel (positive). Default 1.
        context_id : int or None, optional
            0-based id of the chip in the whole product (its context bit). None: one more than
            the largest id used so far. Must be unique across merged accumulators.
        label : str or None, optional
            Name of the chip used in error messages (e.g. ``"j8bt06nyq_flt.fits[SCI,1]"``).

        Returns
        -------
        int
            The chip's context id.

        Raises
        ------
        InvalidExposureTimeError, AllPixelsMaskedError, NoOverlapError
            The chip cannot be drizzled (see the module notes); nothing was added.
        ValueError
            Inconsistent shapes, invalid options or a context id used before.
        """
        self._check_open()
        if self._driz is None:
            raise RuntimeError("a received partial accumulation takes no more chips: merge it")
        if exptime is None or not np.isfinite(exptime) or exptime <= 0:
            raise InvalidExposureTimeError(
                label, f"exposure time must be a positive number of seconds, got {exptime!r}"
            )
        _check_units(in_units)
        for name, value in (("iscale", iscale), ("pixel_scale_ratio", pixel_scale_ratio)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (np.isfinite(pixfrac) and pixfrac > 0):
            raise ValueError(f"pixfrac must be a positive number, got {pixfrac!r}")

        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"data must be 2-D, got shape {data.shape}")
        shape = data.shape
        bands = pixmap if isinstance(pixmap, PixmapRows) else None
        if bands is None:
            pixmap = np.asarray(pixmap, dtype=np.float64)
        if (tuple(bands.shape) != shape) if bands is not None else pixmap.shape != (*shape, 2):
            raise ValueError(f"pixmap shape {pixmap.shape} does not match data shape {shape}")
        if self._enable_err and variance is None:
            raise ValueError(
                "the error image is enabled, so every chip needs a variance array "
                "(or create the accumulator with enable_err=False)"
            )

        context_id = self._next_context_id(context_id)

        # Bad pixels: weight 0 (their data and variance are replaced in the rows drizzle is
        # given, _ChipRows.rows). Only this mask covers the whole chip.
        finite = np.isfinite(data)
        good = finite if bad_mask is None else _good_pixels(shape, bad_mask, None) & finite
        del finite
        if self._enable_err:
            variance = np.asarray(variance, dtype=np.float32)
            if variance.shape != shape:
                raise ValueError(f"variance shape {variance.shape} differs from data {shape}")
            good &= np.isfinite(variance) & (variance >= 0)
        if weight is None:
            max_weight = float(exptime) if good.any() else 0.0
        else:
            weight = np.asarray(weight, dtype=np.float32)
            if weight.shape != shape:
                raise ValueError(f"weight shape {weight.shape} differs from data {shape}")
            if not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError("weights must be finite and non-negative")
            max_weight = float(np.max(weight, where=good, initial=0.0))
        if not max_weight > 0:
            raise AllPixelsMaskedError(
                label, "no pixel has a positive weight (all masked, non-finite or zero weight)"
            )
        if self._enable_err and max_weight > _MAX_WEIGHT_WITH_ERR:
            raise ValueError(
                f"weights up to {max_weight:.3g} overflow drizzle's float32 squared-weight sums "
                f"(limit {_MAX_WEIGHT_WITH_ERR:.0e}); weights only matter relative to each "
                "other, so scale them down by the same factor for every chip"
            )
        chip = _ChipRows(data, variance if self._enable_err else None, weight, good, exptime)

        drizzle_args = {
            "exptime": float(exptime),
            "iscale": float(iscale),
            "pixel_scale_ratio": float(pixel_scale_ratio),
            "pixfrac": float(pixfrac),
            "in_units": in_units,
        }
        if bands is not None:
            size = max(bands.input_pixel_size(), 1.0 / pixel_scale_ratio)
            reach = _KERNEL_REACH[self._kernel](pixfrac) * size  # output pixels beyond a centre
            outline = bands.outline_extent()
            # bands for a chip on the grid (all straight to drizzle), and for a chip across its
            # edge whose context bit drizzle numbers as its id (each band takes the path it
            # needs); other chips take the paths below with their whole map
            if outline is not None and _can_band(self) and self._inside_grid(outline, reach):
                member = self._new_member(context_id, outline, reach)
                self._add_in_bands(chip, bands, drizzle_args)
                self._members.append(member)
                self._ids.add(context_id)
                return context_id
            if outline is not None and self._aligns_context(context_id):
                if not self._add_crossing_in_bands(chip, bands, reach, context_id, drizzle_args):
                    raise NoOverlapError(label, "no pixel of the chip falls on the output grid")
                self._ids.add(context_id)
                return context_id
            pixmap, bands = bands.rows(0, shape[0]), None
        if bands is None:
            size = max(pixmap_input_pixel_size(pixmap), 1.0 / pixel_scale_ratio)
            reach = _KERNEL_REACH[self._kernel](pixfrac) * size
            if not self._overlaps(pixmap, 0.5 + reach):
                raise NoOverlapError(label, "no pixel of the chip falls on the output grid")
            outline = pixmap_outline_extent(pixmap)

        if self._inside_grid(outline, reach):
            member = self._new_member(context_id, outline, reach)
            data, variance, weight = chip.rows(0, shape[0])
            self._driz.add_image(
                data, pixmap=pixmap, data2=variance, weight_map=weight, **drizzle_args
            )
            self._members.append(member)
        else:
            aligned = self._enable_context and self._aligns_context(context_id)
            data, variance, weight = chip.rows(0, shape[0])
            self._add_on_subgrid(
                data, pixmap, weight, variance, outline, reach, context_id, drizzle_args
            )
            if aligned:  # its bits went into drizzle's planes, at its id
                self._members.append(_Member(context_id, context_id, None))
        self._ids.add(context_id)
        return context_id

    def _add_in_bands(self, chip, bands, drizzle_args) -> None:
        """Drizzle a chip on the grid a band of rows at a time (see the module notes): each
        band with one more row on either side at weight 0, so that drizzle finds the edges of
        the band's pixels from their true neighbours, all under the chip's context id."""
        context_id = self._driz.ctx_id
        for band, (data, variance, weight, pixmap) in enumerate(_chip_bands(chip, bands)):
            if band > 0:
                _reuse_context_id(self._driz, context_id)
            self._driz.add_image(
                data, pixmap=pixmap, data2=variance, weight_map=weight, **drizzle_args
            )

    def _add_crossing_in_bands(self, chip, bands, reach, context_id, drizzle_args) -> bool:
        """Drizzle a chip that crosses the edge of the grid a band of rows at a time: bands
        on the grid straight onto it, bands across its edge onto a sub-grid of their own
        (:meth:`_add_on_subgrid`: drizzle 3.0 drops pixels of images that cross the edge),
        bands off it not at all. Returns whether any band reached the grid."""
        reached = False
        for data, variance, weight, pixmap in _chip_bands(chip, bands):
            if not self._overlaps(pixmap, 0.5 + reach):
                continue
            reached = True
            outline = pixmap_outline_extent(pixmap)
            if outline is not None and self._inside_grid(outline, reach):
                _reuse_context_id(self._driz, context_id)
                self._driz.add_image(
                    data, pixmap=pixmap, data2=variance, weight_map=weight, **drizzle_args
                )
            else:
                self._add_on_subgrid(
                    data, pixmap, weight, variance, outline, reach, context_id, drizzle_args
                )
        if reached:
            self._members.append(_Member(context_id, context_id, None))
        return reached

    def _aligns_context(self, context_id) -> bool:
        """Whether the chip can take its context id as drizzle's own number: drizzle's context
        planes are then indexed by context id, and every bit, from drizzle or from a sub-grid,
        goes straight into them. Needs planes for every input (``n_inputs``) and every chip
        so far numbered alike."""
        if not _can_band(self):
            return False
        if not self._enable_context:
            return True
        return (
            self._planes_for_every_input
            and context_id <= self._max_ctx_id
            and self._global_context is None
            and all(m.local_id == m.context_id for m in self._members)
        )

    def _new_member(self, context_id, outline, reach) -> _Member:
        """The record of a chip about to go straight to drizzle: drizzle numbers it as its
        context id when it can (:meth:`_aligns_context`), else the next number of its own and
        the bit is moved to the id afterwards, within the box the chip can touch."""
        if self._aligns_context(context_id):
            _reuse_context_id(self._driz, context_id)
        elif self._enable_context and _can_band(self):
            # numbers set to ids before may lie ahead of drizzle's counter: go past them all
            used = [m.local_id for m in self._members if m.local_id is not None]
            if used and self._driz.ctx_id <= max(used):
                _reuse_context_id(self._driz, max(used) + 1)
        member = _Member(context_id=context_id, local_id=None, box=None)
        if self._enable_context:
            member.local_id = self._driz.ctx_id
            if member.local_id != context_id:
                member.box = self._output_box(outline, reach)
        return member

    def _inside_grid(self, outline, reach: float) -> bool:
        """Whether drizzle can take the chip directly onto the output arrays.

        drizzle 3.0 clips the chip's outline polygon with the output grid and scans the input
        pixels inside the clipped polygon; for chips that cross the edge of the grid this drops
        input pixels that do fall on it (measured: 130 of 300 random rotated chips crossing the
        edge lost weight, up to 14 pixels' worth, sometimes a whole triangle far from the edge).
        Chips whose outline lies on the grid, even touching its edge, come out exactly as on a
        padded grid for the square, turbo and point kernels (1000 random distorted chips with
        pixfrac 0.5-1.5); the gaussian and lanczos kernels are given one pixel plus their reach
        of room.
        """
        ny, nx = self._shape
        x_min, x_max, y_min, y_max = outline
        room = -_TOUCH_TOLERANCE if self._kernel in FLUX_CONSERVING_KERNELS else 1.0 + reach
        return (
            x_min - room >= -0.5
            and y_min - room >= -0.5
            and x_max + room <= nx - 0.5
            and y_max + room <= ny - 0.5
        )

    def _add_on_subgrid(
        self, data, pixmap, weight, variance, outline, reach, context_id, drizzle_args
    ) -> None:
        """Drizzle a chip onto its own grid holding the whole chip, then add the overlap.

        This avoids drizzle's clipping at the edge of the grid (see :meth:`_inside_grid`).
        Kernel overlaps depend only on positions relative to pixel boundaries, and the offset
        is an integer, so the sub-grid holds exactly the values drizzle would have added; they
        are combined like a merge (weighted mean, squared-weight variance, context OR).
        """
        pad = 2.0 + reach
        x0 = math.floor(outline[0] - pad)
        x1 = math.ceil(outline[1] + pad) + 1
        y0 = math.floor(outline[2] - pad)
        y1 = math.ceil(outline[3] + pad) + 1
        sub_shape = (y1 - y0, x1 - x0)
        sub_img = np.zeros(sub_shape, dtype=np.float32)
        sub_wht = np.zeros(sub_shape, dtype=np.float32)
        sub_var = np.zeros(sub_shape, dtype=np.float32) if self._enable_err else None
        sub = Drizzle(
            kernel=self._kernel,
            fillval=None,
            fillval2=None,
            out_img=sub_img,
            out_wht=sub_wht,
            out_img2=[sub_var] if self._enable_err else None,
            disable_ctx=True,
        )
        shifted = pixmap - np.array([x0, y0], dtype=np.float64)
        sub.add_image(
            data,
            pixmap=shifted,
            data2=variance if self._enable_err else None,
            weight_map=weight,
            **drizzle_args,
        )
        del shifted

        ny, nx = self._shape
        oy0, oy1 = max(y0, 0), min(y1, ny)
        ox0, ox1 = max(x0, 0), min(x1, nx)
        if oy0 >= oy1 or ox0 >= ox1:
            return
        main = (slice(oy0, oy1), slice(ox0, ox1))
        part = (slice(oy0 - y0, oy1 - y0), slice(ox0 - x0, ox1 - x0))
        self._combine(
            main,
            sub_img[part],
            sub_wht[part],
            None if sub_var is None else sub_var[part],
        )
        if self._enable_context:
            # drizzle sets a bit where a contribution has positive weight; with non-negative
            # weights that is where the chip's total weight is positive (lanczos lobes aside)
            self._set_context_bit(context_id, main, sub_wht[part] > 0)

    def _combine(self, region, img, wht, var) -> None:
        """Combine a partial (mean, weight, variance) into ``region`` of the output, exactly,
        in blocks of rows so that the float64 temporaries stay in cache."""
        rows, cols = region
        n_rows = rows.stop - rows.start
        step = max(1, _COMBINE_BLOCK_PIXELS // max(1, cols.stop - cols.start))
        for first in range(0, n_rows, step):
            self._combine_block(rows, cols, first, min(n_rows, first + step), img, wht, var)

    def _combine_block(self, rows, cols, first, last, img, wht, var) -> None:
        """Rows ``first:last`` of the region (see :meth:`_combine`)."""
        out = (slice(rows.start + first, rows.start + last), cols)
        w1 = self._wht[out].astype(np.float64)
        w2 = wht[first:last].astype(np.float64)
        total = w1 + w2
        nonzero = total != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_total = np.where(nonzero, 1.0 / total, 0.0)
            mean = (self._img[out] * w1 + img[first:last] * w2) * inv_total
            self._img[out] = np.where(nonzero, mean, self._img[out])
            if self._enable_err:
                combined = (self._var[out] * w1**2 + var[first:last] * w2**2) * inv_total**2
                self._var[out] = np.where(nonzero, combined, 0.0)
        self._wht[out] = total

    def _global_planes(self, n_planes: int) -> np.ndarray:
        """Context bits already in global numbering, with at least ``n_planes`` planes."""
        current = self._global_context
        if current is None or current.shape[0] < n_planes:
            grown = np.zeros((n_planes, *self._shape), dtype=np.int32)
            if current is not None:
                grown[: current.shape[0]] = current
            self._global_context = grown
        return self._global_context

    def _set_context_bit(self, context_id: int, region, contributed) -> None:
        plane, bit = divmod(context_id, CONTEXT_PLANE_BITS)
        if self._aligns_context(context_id) and self._driz.out_ctx is not None:
            planes = self._driz.out_ctx  # indexed by context id (see _aligns_context)
        else:
            planes = self._global_planes(plane + 1)
        flag = np.uint32(1 << bit).view(np.int32)
        target = planes[(plane, *region)]
        target |= np.where(contributed, flag, np.int32(0))

    def _next_context_id(self, context_id) -> int:
        if context_id is None:
            return max(self._ids) + 1 if self._ids else 0
        if isinstance(context_id, bool) or int(context_id) != context_id or context_id < 0:
            raise ValueError(f"context_id must be a non-negative integer, got {context_id!r}")
        context_id = int(context_id)
        if context_id in self._ids:
            raise ValueError(f"context id {context_id} is already used by another chip")
        return context_id

    def _overlaps(self, pixmap, margin: float) -> bool:
        """Whether any mapped pixel centre lies within ``margin`` of the output grid."""
        ny, nx = self._shape
        lo = -0.5 - margin
        x_hi = nx - 0.5 + margin
        y_hi = ny - 0.5 + margin

        def any_inside(points) -> bool:
            x = points[..., 0]
            y = points[..., 1]
            with np.errstate(invalid="ignore"):
                return bool(np.any((x >= lo) & (x <= x_hi) & (y >= lo) & (y <= y_hi)))

        # A sparse sample answers "yes" at once for the usual, overlapping chip.
        return any_inside(pixmap[::16, ::16]) or any_inside(pixmap)

    def _output_box(self, outline, reach: float) -> tuple[slice, slice] | None:
        """Region of the output a chip with this outline can touch (for context remapping)."""
        ny, nx = self._shape
        x_min, x_max, y_min, y_max = outline
        pad = 1.0 + reach
        x0 = max(0, math.floor(x_min - pad))
        x1 = min(nx, math.ceil(x_max + pad) + 1)
        y0 = max(0, math.floor(y_min - pad))
        y1 = min(ny, math.ceil(y_max + pad) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    # -- context bookkeeping -----------------------------------------------------------------

    def _context_as_is(self) -> np.ndarray | None:
        """The context array, with all its planes, when its bits are already in global
        numbering (a received partial, or chips numbered as drizzle numbers them); else None."""
        if not self._enable_context:
            return None
        if self._driz is None:
            return None if self._members else self._global_context
        if self._global_context is None and all(m.local_id == m.context_id for m in self._members):
            return self._driz.out_ctx
        return None

    def _context_in_global_ids(self) -> np.ndarray | None:
        """Context planes indexed by context id (a view of drizzle's array when possible).

        drizzle numbers chips 0, 1, 2, ... in the order they are added to one ``Drizzle``
        object; chips given other ids (partial accumulations) are moved to their own bit here,
        within the output box they can touch.
        """
        n_planes = (max(self._ids) // CONTEXT_PLANE_BITS + 1) if self._ids else 1
        whole = self._context_as_is()
        if whole is not None and whole.shape[0] >= n_planes:
            return whole[:n_planes]
        if not self._enable_context:
            return None
        local = self._driz.out_ctx if self._driz is not None else None

        result = np.zeros((n_planes, *self._shape), dtype=np.int32)
        if self._global_context is not None:
            result[: self._global_context.shape[0]] |= self._global_context
        identity_bits: dict[int, int] = {}
        for m in self._members:
            if m.local_id == m.context_id:
                plane, bit = divmod(m.local_id, CONTEXT_PLANE_BITS)
                identity_bits[plane] = identity_bits.get(plane, 0) | (1 << bit)
        for plane, bits in identity_bits.items():
            result[plane] |= local[plane] & np.uint32(bits).view(np.int32)
        for m in self._members:
            if m.local_id == m.context_id or m.box is None:
                continue
            local_plane, local_bit = divmod(m.local_id, CONTEXT_PLANE_BITS)
            plane, bit = divmod(m.context_id, CONTEXT_PLANE_BITS)
            box = (plane, *m.box)
            words = local[(local_plane, *m.box)].view(np.uint32)
            flags = (words >> np.uint32(local_bit)) & np.uint32(1)
            result[box] |= (flags << np.uint32(bit)).view(np.int32)
        return result

    # -- partial results ---------------------------------------------------------------------

    def partial(self) -> PartialDrizzle:
        """The sums so far (the accumulator's own arrays, no copies), for :meth:`from_partial`
        elsewhere: how a worker hands its accumulation back."""
        self._check_open()
        # all the planes of an array already in global numbering (a worker's output buffer is
        # sized for every input): received partials then merge into their own planes
        context = self._context_as_is()
        return PartialDrizzle(
            img=self._img,
            wht=self._wht,
            var=self._var,
            context=context if context is not None else self._context_in_global_ids(),
            context_ids=self.context_ids,
        )

    @classmethod
    def from_partial(cls, partial: PartialDrizzle, *, kernel: str, fillval: float = np.nan):
        """An accumulator holding ``partial`` (its arrays, not copies), to merge or finalize."""
        if kernel not in SUPPORTED_KERNELS:
            raise ValueError(f"kernel must be one of {SUPPORTED_KERNELS}, got {kernel!r}")
        self = cls.__new__(cls)
        self._shape = tuple(partial.img.shape)
        self._kernel = kernel
        self._fillval = float(fillval)
        self._enable_context = partial.context is not None
        self._enable_err = partial.var is not None
        self._img, self._wht, self._var = partial.img, partial.wht, partial.var
        # No drizzle object: nothing more is added to a received partial (it is merged or
        # finalized), and its context is all in _global_context.
        self._driz = None
        self._members = []
        self._ids = set(partial.context_ids)
        self._global_context = partial.context
        self._finalized = False
        return self

    # -- merging -----------------------------------------------------------------------------

    def merge(self, other: DrizzleAccumulator, *, row_offset: int = 0) -> DrizzleAccumulator:
        """Add another accumulator's chips to this one, exactly (``other`` is not modified).

        Parameters
        ----------
        other : DrizzleAccumulator
            Same kernel, error/context switches and width; disjoint context ids. Its rows are
            this one's rows ``row_offset`` onwards (an accumulation on the band of the grid
            its chips reach: pixel maps with ``origin=(0, row_offset)``).
        row_offset : int
            Row of this accumulator where ``other``'s first row lies.

        Returns
        -------
        DrizzleAccumulator
            ``self``, now holding the chips of both.
        """
        if not isinstance(other, DrizzleAccumulator):
            raise TypeError("can only merge another DrizzleAccumulator")
        self._check_open()
        other._check_open()
        if other is self:
            raise ValueError("cannot merge an accumulator with itself")
        ny, nx = self._shape
        first, last = int(row_offset), int(row_offset) + other._shape[0]
        if other._kernel != self._kernel or other._shape[1] != nx or not 0 <= first < last <= ny:
            raise ValueError(
                f"cannot merge a {other._kernel} drizzle on {other._shape} at row {row_offset} "
                f"into a {self._kernel} drizzle on {self._shape}"
            )
        if (other._enable_err, other._enable_context) != (self._enable_err, self._enable_context):
            raise ValueError("cannot merge accumulators with different error/context switches")
        shared = self._ids & other._ids
        if shared:
            raise ValueError(f"context ids {sorted(shared)} were added to both accumulators")

        mine = self._context_in_global_ids()
        theirs = other._context_in_global_ids()

        rows = slice(first, last)
        self._combine(
            (rows, slice(0, nx)),
            other._img,
            other._wht,
            other._var if self._enable_err else None,
        )

        if self._enable_context and self._driz is None:
            # a received partial: OR the other's bits into its own planes (no new array)
            self._global_planes(theirs.shape[0])[: theirs.shape[0], rows] |= theirs
        elif self._enable_context:
            n_planes = max(mine.shape[0], theirs.shape[0])
            combined = np.zeros((n_planes, ny, nx), dtype=np.int32)
            combined[: mine.shape[0]] |= mine
            combined[: theirs.shape[0], rows] |= theirs
            self._global_context = combined
            # drizzle's own planes now hold nothing that is not in the flushed context.
            if self._driz is not None:
                self._driz.out_ctx[...] = 0
            self._members = []
        self._ids |= other._ids
        return self

    # -- finishing ---------------------------------------------------------------------------

    def finalize(self) -> DrizzleProduct:
        """Apply ``fillval``, turn the variance into an error and return the arrays.

        The arrays are the accumulator's own (no copies); it cannot be used afterwards.

        Returns
        -------
        DrizzleProduct
            Science, weight, error (or None), context (or None) and the sorted context ids.
        """
        self._check_open()
        context = self._context_in_global_ids()
        if context is not None and context.shape[0] == 1:
            context = context[0]
        no_data = self._wht == 0
        self._img[no_data] = self._fillval
        err = None
        if self._enable_err:
            err = np.sqrt(self._var, out=self._var)
            err[no_data] = self._fillval
        self._finalized = True
        return DrizzleProduct(
            data=self._img,
            wht=self._wht,
            err=err,
            context=context,
            context_ids=self.context_ids,
        )


@dataclass
class _ChipRows:
    """A chip's arrays as :meth:`DrizzleAccumulator.add_chip` checked them, handed to drizzle
    a band of rows at a time (:meth:`rows`), so that the cleaned copies are never made for the
    whole chip at once."""

    data: np.ndarray
    variance: np.ndarray | None  # None: no error image
    weight: np.ndarray | None  # None: exptime on every good pixel
    good: np.ndarray  # bool, False where the pixel gets weight 0
    exptime: float

    @property
    def shape(self):
        return self.data.shape

    def rows(self, first, last):
        """``(data, variance or None, weight)`` of rows ``first .. last - 1``: the weight (a new
        array) 0 at bad pixels, whose non-finite data and variance become 0 (0 * NaN is
        NaN)."""
        good = self.good[first:last]
        data = self.data[first:last]
        if not np.isfinite(data).all():
            data = np.where(np.isfinite(data), data, np.float32(0.0))
        variance = None
        if self.variance is not None:
            variance = self.variance[first:last]
            usable = np.isfinite(variance) & (variance >= 0)
            if not usable.all():
                variance = np.where(usable, variance, np.float32(0.0))
        value = np.float32(self.exptime) if self.weight is None else self.weight[first:last]
        return data, variance, np.where(good, value, np.float32(0.0))


def kernel_reach(kernel: str, pixfrac: float, input_pixel_size: float = 1.0) -> float:
    """How far beyond an input pixel's centre its drop reaches [output pixels]: half the drop
    for square and turbo, the lobes of the gaussian and lanczos kernels; ``input_pixel_size``
    is the input pixel's side in output pixels (drops are at least an output pixel wide)."""
    if kernel not in SUPPORTED_KERNELS:
        raise ValueError(f"kernel must be one of {SUPPORTED_KERNELS}, got {kernel!r}")
    return _KERNEL_REACH[kernel](pixfrac) * max(float(input_pixel_size), 1.0)


def _chip_bands(chip, bands):
    """``(data, variance, weight, pixmap)`` of a chip a band of rows at a time, each band with
    one more row on either side at weight 0 (the pixel map is one buffer, reused)."""
    ny, nx = chip.shape
    n_bands = max(1, min(round(ny * nx / _BAND_PIXELS), ny // _BAND_MIN_ROWS))
    edges = np.linspace(0, ny, n_bands + 1).round().astype(int)
    pixmap = np.empty((int(np.diff(edges).max()) + 2, nx, 2))
    for first, last in zip(edges[:-1], edges[1:]):
        low, high = max(first - 1, 0), min(last + 1, ny)
        data, variance, weight = chip.rows(low, high)
        weight[: first - low] = 0
        weight[weight.shape[0] - (high - last) :] = 0
        yield data, variance, weight, bands.rows(low, high, out=pixmap)


def _can_band(accumulator) -> bool:
    """Whether chips can be drizzled in bands: every band must reuse the chip's context id
    (:func:`_reuse_context_id`), which needs drizzle's id counter."""
    driz = accumulator._driz
    return driz is not None and (driz.ctx_id is None or hasattr(driz, "_ctx_id"))


def _reuse_context_id(driz, context_id) -> None:
    """Make ``driz`` give its next image the context id ``context_id`` again.

    drizzle numbers every ``add_image`` call as a new image; the bands of one chip are one image.
    drizzle 3.0 keeps the next id in ``_ctx_id`` and has no public setter (a new ``Drizzle`` per
    band would check the whole output at every construction, which costs more than the
    band), so it
    is set here; :func:`_can_band` falls back to the whole map when the counter is not there.
    """
    if driz.ctx_id is not None:
        driz._ctx_id = context_id


def merge_accumulators(accumulators: Iterable[DrizzleAccumulator]) -> DrizzleAccumulator:
    """Merge partial accumulations into the first one (see :meth:`DrizzleAccumulator.merge`).

    Parameters
    ----------
    accumulators : iterable of DrizzleAccumulator
        At least one; all on the same grid with the same kernel and switches.

    Returns
    -------
    DrizzleAccumulator
        The first accumulator, holding every chip.
    """
    accumulators = list(accumulators)
    if not accumulators:
        raise ValueError("no accumulators to merge")
    first = accumulators[0]
    for other in accumulators[1:]:
        first.merge(other)
    return first
