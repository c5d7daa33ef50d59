"""Robust image statistics with the semantics of ``stsci.imagestats.ImageStats``.

AstroDrizzle measures every sky level and every static-mask threshold with ``ImageStats``
(``stsci.imagestats``): an iteratively clipped mean and standard deviation, the median of the
clipped set, and the mode and "midpt" of a histogram whose bins are a fraction of sigma wide.
:func:`imagestats` reproduces those numbers on float32 data, written as vectorised numpy code on
one sorted copy of the valid values.

Semantics reproduced (``stsci/imagestats/__init__.py``, ``src/computeMean.c``,
``src/buildHistogram.c``):

* Values are converted to float32 first, as ``ImageStats`` does.
* Clipping: for ``k = 0 .. nclip`` compute, over the values ``lo <= x <= hi`` (inclusive, limits
  rounded to float32), the mean (float64 sum, result rounded to float32) and the standard deviation
  with ``N - 1``; while ``k < nclip`` the next limits are
  ``lo = max(lower, mean - lsigma * stddev)`` and ``hi = min(upper, mean + usigma * stddev)``.
  The clipping is mean-centred, not median-centred.
* ``median`` is ``numpy.median`` of the final clipped set (mean of the two middle values,
  in float32, for an even count).
* Histogram for ``mode``/``midpt``: ``hwidth = binwidth * stddev``,
  ``nbins = int((max - min) / hwidth) + 1``, bins of ``dz = (max - min) / (nbins - 1)`` starting at
  the clipped minimum, filled with *every* valid value in ``[min, min + nbins * dz)`` with the
  float32 bin index ``int(f * (x - min))``, ``f = 1 / dz`` (so the last bin also holds values just
  above the clipped maximum). The mode is the parabolic peak of that histogram, but placed with bin
  width ``hwidth`` (not ``dz``) as ``ImageStats`` does; this slightly pulls the mode towards the
  clipped minimum (by ``(dz - hwidth) / dz`` of its distance from it) and is kept on purpose so that
  sky values equal AstroDrizzle's. ``midpt`` interpolates the cumulative histogram at one half.

Behaviour that differs from ``ImageStats`` (its bugs, fixed here):

* Non-finite values (NaN, +-inf) and masked values (``mask`` True = bad) are ignored.
  ``ImageStats`` lets a NaN poison the global minimum, which then excludes every pixel.
* No valid value (all masked, all NaN, or nothing inside ``[lower, upper]``) returns a result with
  ``npix == 0`` and NaN statistics instead of raising; callers test ``npix``.
* A clipping iteration that would leave no value keeps the previous iteration's set instead of
  raising. Iterations stop early once the clipped set no longer changes (that is a fixed point, so
  the numbers are the same as running all ``nclip`` iterations).
* One valid value gives ``stddev = 0`` (``ImageStats``: NaN from ``0 / 0``).
* The C code starts its running minimum at ``max(clipmin, x[0])``, so when the *first* array element
  lies below the clip range the reported minimum is the clip limit, not the smallest clipped value
  (and likewise for the maximum). Here ``min``/``max`` are always the extreme clipped values.
* With ``nclip=0`` ``ImageStats`` takes the median of the whole array, ignoring ``lower``/``upper``;
  here it is always the median of the values inside the limits.
* The "single histogram bin" test of ``ImageStats`` compares ``hwidth`` with the *absolute* number
  ``10 * FLT_EPSILON`` (1.2e-6), so data in small units (for example erg/s/cm2/A, ~1e-18) always got
  a one-bin histogram; here the test is relative to the magnitude of the data.
* With a single bin ``ImageStats`` returns the bin *count* as ``midpt`` and may put the mode beyond
  the data range; here both are ``min + 0.5 * min(hwidth, max - min)``.
* The histogram index is clamped to the last bin (the C code could write past the array).

Differences from ``ImageStats`` are at the level of float rounding otherwise: sums are float64
pairwise sums instead of sequential C loops, and the second pass uses the exact squared
deviations instead of float32-rounded ones (relative differences around 1e-7).

:class:`LabelledSample` and :func:`union_imagestats` give the same statistics for unions of
labelled regions (the overlap of one exposure with another, in sky matching) without re-sorting:
each region is sorted once and keeps the sums of its values' deviations from its median; a
union's clipping iterations update those sums with the values that leave or enter the clipping
range (few: outliers, then thin slices between successive limits), and order statistics and
histograms come from binary searches in every region. A statistic of any union costs
O(regions x log(pixels)) plus the values that cross the limits.

Speed: the sort is most of the time, the float64 sums of a full pass a quarter of it (timings
in docs/developer/performance.md, *Timings behind the code*). Rules followed for that:

* one private copy per call, sorted in place; masked values are set to +inf in that copy, so the
  valid values are one slice of the sorted array (no separate finiteness pass, no compressed copy);
* float64 sums over exact deviations from a reference, formed a cache-sized chunk at a time, with
  numpy's reductions rather than ``numpy.dot``: BLAS starts OpenBLAS threads, which made the sums
  of the previous version several times slower whenever the other core was busy;
* no cumulative sums over all values (a full float64 ``cumsum`` costs more than the sort).

Masks are boolean with True = bad, as everywhere in :mod:`drizzlepipe.algorithms`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALL_FIELDS",
    "ImageStatistics",
    "LabelledSample",
    "imagestats",
    "union_imagestats",
    "has_usable_pixel",
]

#: Statistics :func:`imagestats` can report.
ALL_FIELDS = ("npix", "mean", "stddev", "min", "max", "median", "mode", "midpt")

_FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Histogram bins narrower than this fraction of the data magnitude (about ten float32 ulps) make a
# one-bin histogram; ImageStats used the same number as an absolute width.
_NARROW_BIN_EPS = 10.0 * _FLOAT32_EPS
_SIGN_BIT = np.uint32(0x80000000)
_NEGATIVE_ZERO_KEY = 0x7FFFFFFF  # decodes to -0.0; data and queries map -0.0 to +0.0's key
_LOW_BITS = np.uint32(0x7FFFFFFF)


@dataclass(frozen=True)
class ImageStatistics:
    """Result of :func:`imagestats` (all values in the units of the input data).

    Attributes
    ----------
    npix : int
        Number of values in the final clipped set (0 when no value was valid).
    mean, stddev : float
        Mean and standard deviation (``N - 1``) of the final clipped set.
    min, max : float
        Smallest and largest value of the final clipped set.
    median : float or None
        Median of the final clipped set; None when not requested.
    mode, midpt : float or None
        Histogram mode and midpoint (see module docstring); None when not requested.
    clip_lower, clip_upper : float
        Limits (inclusive) of the final clipped set.
    nbins : int
        Number of histogram bins used for ``mode``/``midpt`` (0 when no histogram was built).
        AstroDrizzle's static mask is only applied when ``nbins >= 2``.
    bin_width : float
        ``binwidth * stddev``, the bin width used to place the mode (NaN without histogram).
    """

    npix: int
    mean: float
    stddev: float
    min: float
    max: float
    median: float | None
    mode: float | None
    midpt: float | None
    clip_lower: float
    clip_upper: float
    nbins: int
    bin_width: float

    def __getitem__(self, name: str) -> float | int | None:
        """Value of one statistic by name (``stats["median"]``)."""
        if name not in ALL_FIELDS:
            raise KeyError(f"unknown statistic {name!r}; choose from {', '.join(ALL_FIELDS)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------------------------
# float32 <-> order-preserving unsigned key (used to sort and search regions of values)


def _float32_to_key(values: np.ndarray) -> np.ndarray:
    """Map float32 values (no NaN) to uint32 keys with the same order (-0.0 maps like +0.0).

    Non-negative values get their sign bit set and negative ones have every bit flipped. For
    small arrays (query values); sorted data use :func:`_sorted_keys`.
    """
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    negative = (bits & _SIGN_BIT) != 0
    return np.where(negative, ~bits, bits | _SIGN_BIT)


def _sorted_keys(values: np.ndarray, out: np.ndarray) -> None:
    """:func:`_float32_to_key` of *sorted* float32 values, written to ``out`` (uint32).

    The negative values are a prefix: one pass flips them and sets the sign bit of the rest
    (a -0.0 there gets the key of +0.0).
    """
    bits = values.view(np.uint32)
    split = int(np.searchsorted(values, np.float32(0.0)))
    np.invert(bits[:split], out=out[:split])
    np.bitwise_or(bits[split:], _SIGN_BIT, out=out[split:])


def _key_to_float32(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float32_to_key`."""
    keys = np.asarray(keys, dtype=np.uint32)
    positive = (keys & _SIGN_BIT) != 0
    return np.where(positive, keys & _LOW_BITS, ~keys).astype(np.uint32).view(np.float32)


# ----------------------------------------------------------------------------------------------
# float64 sums of deviations from a reference


# Values are converted to float64 deviations in chunks that stay in the CPU cache.
_CHUNK = 1 << 16


def _deviation_sums(values: np.ndarray, reference: float) -> tuple[float, float]:
    """``sum(x - reference)`` and ``sum((x - reference)**2)`` of float32 values, in float64.

    The deviations are formed exactly in float64, a cache-sized chunk at a time (no full-size
    float64 copy). Reductions use numpy's own loops, not BLAS: ``numpy.dot`` would start
    OpenBLAS threads, which on a busy machine made these sums several times slower.
    """
    total = 0.0
    total_squares = 0.0
    buffer = np.empty(min(values.size, _CHUNK), dtype=np.float64)
    for first in range(0, values.size, _CHUNK):
        chunk = values[first : first + _CHUNK]
        deviation = buffer[: chunk.size]
        np.subtract(chunk, reference, out=deviation, dtype=np.float64)
        total += float(np.add.reduce(deviation))
        total_squares += float(np.einsum("i,i->", deviation, deviation))
    return total, total_squares


# ----------------------------------------------------------------------------------------------
# parameter handling


def _parse_fields(fields: str | Iterable[str] | None) -> frozenset[str]:
    if fields is None:
        return frozenset(ALL_FIELDS)
    if isinstance(fields, str):
        names = [name.strip().lower() for name in fields.split(",") if name.strip()]
    else:
        names = [str(name).strip().lower() for name in fields]
    unknown = sorted(set(names) - set(ALL_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown statistic(s) {', '.join(unknown)}; choose from {', '.join(ALL_FIELDS)}"
        )
    return frozenset(names)


def _check_parameters(nclip, lsigma, usigma, binwidth, lower, upper) -> None:
    if int(nclip) != nclip or nclip < 0:
        raise ValueError(f"nclip must be a non-negative integer, got {nclip!r}")
    if not lsigma > 0 or not usigma > 0:
        raise ValueError(f"lsigma and usigma must be positive, got {lsigma!r}, {usigma!r}")
    if not binwidth > 0:
        raise ValueError(f"binwidth must be positive, got {binwidth!r}")
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"lower limit {lower!r} is larger than upper limit {upper!r}")


def _empty_result() -> ImageStatistics:
    nan = math.nan
    return ImageStatistics(0, nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, nan)


# ----------------------------------------------------------------------------------------------
# histogram with ImageStats' float32 bin arithmetic


def _bin_index(values: np.ndarray, vmin: np.float32, inv_width: np.float32) -> np.ndarray:
    """``(int)(f * (v - min))`` evaluated in float32 exactly as buildHistogram.c does."""
    return np.floor(inv_width * (values - vmin)).astype(np.int64)


def _bin_start_keys(vmin: np.float32, inv_width: np.float32, nbins: int, last_key: int):
    """Order keys of the smallest float32 value falling into each of bins ``1 .. nbins - 1``.

    The float32 bin index is monotonic in the value, so each bin start is found by bisection over
    the (ordered) float32 bit patterns; values below the start of bin ``b`` have index ``< b``.
    """
    targets = np.arange(1, nbins, dtype=np.int64)
    low = np.full(targets.shape, int(_float32_to_key(np.array([vmin]))[0]), dtype=np.int64)
    high = np.full(targets.shape, last_key + 1, dtype=np.int64)
    while np.any(low < high):
        middle = (low + high) // 2
        value = _key_to_float32(np.minimum(middle, 0xFFFFFFFF).astype(np.uint32))
        reached = _bin_index(value, vmin, inv_width) >= targets
        high = np.where(reached, middle, high)
        low = np.where(reached, low, middle + 1)
    return low


def _histogram_layout(vmin: float, vmax: float, hwidth: float, nbins: int):
    """Bin origin, 1/width, upper limit and inclusivity as histogram1d/buildHistogram use them."""
    dz = (vmax - vmin) / (nbins - 1)
    bin_width = np.float32(dz)
    origin = np.float32(vmin)
    edge = np.float32(origin + bin_width * np.float32(nbins))
    inv_width = np.float32(np.float32(1.0) / bin_width)
    include_edge = int(inv_width * (edge - origin)) == nbins
    if include_edge:
        edge = np.float32(edge * np.float32(1.0 - _FLOAT32_EPS))
    return origin, inv_width, edge, include_edge


def _mode_from_histogram(counts: np.ndarray, vmin: float, hwidth: float) -> float:
    nbins = counts.size
    if nbins == 2:
        if counts[0] > counts[1]:
            return vmin + 0.5 * hwidth
        if counts[0] < counts[1]:
            return vmin + 1.5 * hwidth
        return vmin + hwidth
    peak = int(np.argmax(counts))
    if peak == 0:
        return vmin + 0.5 * hwidth
    if peak == nbins - 1:
        return vmin + (nbins - 0.5) * hwidth
    rise = int(counts[peak]) - int(counts[peak - 1])
    fall = int(counts[peak]) - int(counts[peak + 1])
    if rise + fall == 0:
        return vmin + (peak + 0.5) * hwidth
    # same operation order as ImageStats so the result is bit-identical
    position = peak + 1 + 0.5 * (rise - fall) / (rise + fall)
    return vmin + (position - 0.5) * hwidth


def _midpt_from_histogram(counts: np.ndarray, vmin: float, hwidth: float) -> float:
    # float32 cumulative fractions and numpy-scalar arithmetic, as in ImageStats under numpy 2
    fraction = np.cumsum(counts).astype(np.float32)
    fraction = fraction / fraction[-1]
    lo = int(np.nonzero(fraction >= 0.5)[0][0])
    # ImageStats' bin index is a numpy integer, which makes this start a float64 numpy scalar, so
    # the final sum is done in float64 although the interpolated step is float32
    start = np.float64(vmin + lo * hwidth)
    step = fraction[lo] if lo == 0 else fraction[lo] - fraction[lo - 1]
    if step == 0:
        return float(start)
    if lo == 0:
        return float(start + 0.5 / step * hwidth)
    return float(start + (0.5 - fraction[lo - 1]) / step * hwidth)


# ----------------------------------------------------------------------------------------------
# sample backends: a sorted array (exact ImageStats emulation) and a union of labelled regions


@dataclass(frozen=True)
class _Moments:
    npix: int
    mean: np.float32
    stddev: np.float32
    min: np.float32
    max: np.float32


class _SortedValues:
    """All valid values of one array, sorted once; clipped sets are contiguous slices."""

    # Recompute sums from scratch when removing values cancelled more than this fraction.
    _CANCELLATION_LIMIT = 1.0e6

    def __init__(self, sorted_values: np.ndarray):
        self.values = sorted_values
        self._slice = None
        self._reference = 0.0
        self._sum = 0.0
        self._sum_squares = 0.0

    @property
    def size(self) -> int:
        return self.values.size

    def select(self, lo: np.float32, hi: np.float32):
        start = int(np.searchsorted(self.values, lo, side="left"))
        stop = int(np.searchsorted(self.values, hi, side="right"))
        return (start, stop)

    @staticmethod
    def count(selection) -> int:
        return max(selection[1] - selection[0], 0)

    @staticmethod
    def same(first, second) -> bool:
        return first == second

    def _direct_sums(self, start: int, stop: int) -> tuple[float, float]:
        return _deviation_sums(self.values[start:stop], self._reference)

    def _piece_sums(self, start: int, stop: int) -> tuple[float, float]:
        if stop <= start:
            return 0.0, 0.0
        return self._direct_sums(start, stop)

    def _update_sums(self, start: int, stop: int) -> None:
        """Running sums about a fixed reference, updated with the values that entered or left."""
        previous = self._slice
        if previous is None or max(previous[0], start) >= min(previous[1], stop):
            self._reference = float(self.values[(start + stop - 1) // 2])
            self._sum, self._sum_squares = self._direct_sums(start, stop)
            self._slice = (start, stop)
            return
        sign_sum = 0.0
        sign_squares = 0.0
        removed_squares = 0.0
        for a, b, sign in (
            (start, previous[0], 1.0),  # values entering at the low end
            (previous[0], start, -1.0),  # values leaving at the low end
            (previous[1], stop, 1.0),  # values entering at the high end
            (stop, previous[1], -1.0),  # values leaving at the high end
        ):
            piece_sum, piece_squares = self._piece_sums(a, b)
            sign_sum += sign * piece_sum
            sign_squares += sign * piece_squares
            if sign < 0:
                removed_squares += piece_squares
        new_squares = self._sum_squares + sign_squares
        if removed_squares > self._CANCELLATION_LIMIT * max(new_squares, 0.0):
            # Outliers dominated the old sums: subtracting them would lose the small remainder.
            self._reference = float(self.values[(start + stop - 1) // 2])
            self._sum, self._sum_squares = self._direct_sums(start, stop)
        else:
            self._sum += sign_sum
            self._sum_squares = new_squares
        self._slice = (start, stop)

    def moments(self, selection) -> _Moments:
        start, stop = selection
        npix = stop - start
        self._update_sums(start, stop)
        mean = np.float32((npix * self._reference + self._sum) / npix)
        offset = float(mean) - self._reference
        squares = self._sum_squares - 2.0 * offset * self._sum + npix * offset * offset
        stddev = np.float32(math.sqrt(max(squares, 0.0) / (npix - 1))) if npix > 1 else 0.0
        return _Moments(npix, mean, np.float32(stddev), self.values[start], self.values[stop - 1])

    def order_statistics(self, selection, ranks) -> list[np.float32]:
        return [self.values[selection[0] + rank] for rank in ranks]

    def histogram(self, origin, inv_width, edge, include_edge, nbins) -> np.ndarray:
        start = int(np.searchsorted(self.values, origin, side="left"))
        stop = int(np.searchsorted(self.values, edge, side="right" if include_edge else "left"))
        if stop <= start:
            return np.zeros(nbins, dtype=np.int64)
        last_key = int(_float32_to_key(self.values[stop - 1 : stop])[0])
        starts = _key_to_float32(_bin_start_keys(origin, inv_width, nbins, last_key))
        positions = np.searchsorted(self.values[start:stop], starts, side="left")
        bounds = np.concatenate(([0], positions, [stop - start]))
        return np.diff(bounds)


# Labels that change less often than once per this many values (regions of an image, which come
# in long runs along rows) are grouped by moving whole runs instead of sorting every label.
_MIN_MEAN_RUN = 64
# Searches over at most this many regions loop over them; more use composite 64-bit keys.
_SEARCH_LOOP_REGIONS = 16
# Intervals longer than this are summed one at a time; shorter ones are gathered and summed
# together (one numpy call for all of them).
_GATHER_LIMIT = 4096


def _group_by_label(arrays: Sequence[np.ndarray], labels: np.ndarray):
    """Copies of 1-D ``arrays`` with each label's elements contiguous, in ascending label order.

    Returns the reordered copies, the distinct labels and the number of elements of each. Runs
    of equal labels are moved whole (one slice each); scattered labels fall back to a stable sort
    of the labels (numpy's radix sort for labels below 65536). Negative labels raise ValueError.
    """
    count = labels.size
    boundaries = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    if boundaries.size < max(count // _MIN_MEAN_RUN, 1):
        run_starts = np.concatenate(([0], boundaries))
        run_stops = np.concatenate((boundaries, [count]))
        distinct, run_codes = np.unique(labels[run_starts], return_inverse=True)
        if distinct[0] < 0:
            raise ValueError("region labels must be non-negative")
        sizes = np.bincount(run_codes, weights=run_stops - run_starts, minlength=distinct.size)
        order = np.argsort(run_codes, kind="stable")
        runs = list(zip(run_starts[order].tolist(), run_stops[order].tolist()))
        grouped = [np.concatenate([array[first:last] for first, last in runs]) for array in arrays]
        return grouped, distinct, sizes.astype(np.int64)
    if labels.min() < 0:
        raise ValueError("region labels must be non-negative")
    largest = int(labels.max())
    if largest < 65536:
        sizes = np.bincount(labels.astype(np.intp, copy=False), minlength=largest + 1)
        distinct = np.flatnonzero(sizes)
        order = np.argsort(labels.astype(np.uint16), kind="stable")
        return [array[order] for array in arrays], distinct, sizes[distinct]
    distinct, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(codes, kind="stable")
    return [array[order] for array in arrays], distinct, sizes


def _composite_keys(values: np.ndarray, firsts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint64 search keys: region code in the high word, order key of the value in the low one.

    Region ``code`` occupies ``values[firsts[code]:ends[code]]``, sorted; the keys are therefore
    sorted as a whole.
    """
    low = np.empty(values.size, dtype=np.uint32)
    bounds = list(zip(firsts.tolist(), ends.tolist()))
    for first, end in bounds:
        _sorted_keys(values[first:end], low[first:end])
    keys = low.astype(np.uint64)
    for code, (first, end) in enumerate(bounds):
        if code:
            keys[first:end] |= np.uint64(code << 32)
    return keys


def _interval_deviation_sums(values, firsts, lasts, anchors) -> tuple[np.ndarray, np.ndarray]:
    """Per interval ``[first, last)`` of ``values``: sums of ``x - anchor`` and of its square."""
    sums = np.zeros(firsts.size)
    squares = np.zeros(firsts.size)
    lengths = lasts - firsts
    long = lengths > _GATHER_LIMIT
    for index in np.flatnonzero(long).tolist():
        piece = values[int(firsts[index]) : int(lasts[index])]
        sums[index], squares[index] = _deviation_sums(piece, float(anchors[index]))
    short = np.flatnonzero((lengths > 0) & ~long)
    if short.size:
        size = lengths[short]
        offsets = np.cumsum(size) - size
        index = np.repeat(firsts[short] - offsets, size) + np.arange(int(size.sum()))
        deviation = values[index].astype(np.float64)
        deviation -= np.repeat(anchors[short], size)
        sums[short] = np.add.reduceat(deviation, offsets)
        np.multiply(deviation, deviation, out=deviation)
        squares[short] = np.add.reduceat(deviation, offsets)
    return sums, squares


class LabelledSample:
    """Valid values of one chip grouped by an integer region label, each region sorted once.

    Built once per chip, it answers :func:`union_imagestats` for any union of its regions in
    O(regions x log(values)) time plus a pass over the values that enter or leave the clipping
    range, which is what makes sky matching of many exposures cheap: the overlap of one exposure
    with each other exposure is a different union of the same regions.

    Parameters
    ----------
    values : array_like
        Values of any shape, converted to float32. Every value not masked must be finite.
    labels : array_like of int
        Region label (>= 0) of each value, same shape as ``values``.
    mask : array_like of bool, optional
        Same shape; True = leave the value out (for example NaN or flagged pixels).
    scale : float, optional
        Positive factor for statistics in other units than the data's: the float32 values are
        multiplied by ``numpy.float32(scale)`` in float32 (no full-size temporary is made).

    Attributes
    ----------
    region_labels : numpy.ndarray
        Labels that have at least one valid value, ascending.
    values : numpy.ndarray
        The grouped float32 copy: region ``r`` (see :meth:`region_codes`) has its valid values,
        sorted, in ``values[starts[r]:stops[r]]``, followed by its excluded ones set to +inf.
    starts, stops : numpy.ndarray
        Limits of each region's valid values in ``values``.
    anchors : numpy.ndarray
        Median of each region's valid values (the reference of its float64 sums).

    Notes
    -----
    Memory is 4 bytes per value (one grouped, sorted copy), plus 8 bytes per value for search
    keys when a single search spans many regions. Build one chip at a time. Grouping is fastest
    when labels come in long runs, as the regions of an image do along its rows.
    """

    def __init__(self, values, labels, mask=None, scale=None):
        values = np.asarray(values)
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"region labels must be integers, got {labels.dtype}")
        if values.shape != labels.shape:
            raise ValueError("values and labels must have the same shape")
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        arrays = [values.ravel()]
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != values.shape:
                raise ValueError("mask and values must have the same shape")
            arrays.append(mask.ravel())
        if values.size:
            arrays, group_labels, sizes = _group_by_label(arrays, labels.ravel())
        else:
            arrays = [np.zeros(0, dtype=np.float32)] + arrays[1:]
            group_labels = np.zeros(0, dtype=np.int64)
            sizes = np.zeros(0, dtype=np.int64)
        self._build(arrays[0], arrays[1] if mask is not None else None, group_labels, sizes, scale)

    @classmethod
    def from_groups(cls, values, labels, sizes, mask=None, scale=None) -> LabelledSample:
        """A sample from values already grouped by region (no grouping pass).

        Parameters
        ----------
        values : numpy.ndarray
            1-D; the first ``sizes[0]`` values have label ``labels[0]``, the next ``sizes[1]``
            label ``labels[1]``, and so on. The array is taken over and modified in place (pass
            a private copy).
        labels : array_like of int
            Distinct region labels (>= 0), strictly increasing.
        sizes : array_like of int
            Number of values of each label.
        mask : numpy.ndarray of bool, optional
            1-D, grouped like ``values``; True = leave the value out.
        scale : float, optional
            As for the constructor.

        Returns
        -------
        LabelledSample
        """
        labels = np.asarray(labels, dtype=np.int64).ravel()
        sizes = np.asarray(sizes, dtype=np.int64).ravel()
        values = np.asarray(values)
        if labels.shape != sizes.shape or int(sizes.sum()) != values.size or values.ndim != 1:
            raise ValueError("labels, sizes and values do not describe the same groups")
        if labels.size and (labels[0] < 0 or np.any(np.diff(labels) <= 0)):
            raise ValueError("group labels must be non-negative and strictly increasing")
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != values.shape:
                raise ValueError("mask and values must have the same shape")
        sample = cls.__new__(cls)
        sample._build(values, mask, labels, sizes, scale)
        return sample

    def _build(self, grouped, excluded, group_labels, sizes, scale) -> None:
        """Scale, mask and sort the grouped values (in place) and summarise every region."""
        if grouped.dtype != np.float32:
            grouped = grouped.astype(np.float32)
        if scale is not None:
            grouped *= np.float32(scale)
        self._group_labels = group_labels
        # Region code r (an index into the grouped labels) owns grouped[first:first + size]; its
        # valid values, sorted, are [starts[r], stops[r]) and excluded ones (+inf) follow them.
        firsts = np.cumsum(sizes) - sizes
        valid = sizes.copy()
        if excluded is not None:
            np.copyto(grouped, np.float32(np.inf), where=excluded)
            for code, (first, size) in enumerate(zip(firsts.tolist(), sizes.tolist())):
                valid[code] -= np.count_nonzero(excluded[first : first + size])
        self.starts = firsts
        self.stops = firsts + valid
        self.region_labels = group_labels[valid > 0]
        # Per region: its median (the anchor) and the sums of deviations from it of all its values;
        # unions start from these and update them with the values the clipping removes.
        ncodes = sizes.size
        self.anchors = np.zeros(ncodes)
        self._region_sums = np.zeros(ncodes)
        self._region_squares = np.zeros(ncodes)
        for code, (first, size, count) in enumerate(
            zip(firsts.tolist(), sizes.tolist(), valid.tolist())
        ):
            region = grouped[first : first + size]
            region.sort()  # NaN and inf sort last, -inf first
            if count == 0:
                continue
            if not (region[0] > -np.inf and region[count - 1] < np.inf):
                raise ValueError("LabelledSample needs finite values; mask NaN and inf")
            region = region[:count]
            anchor = float(region[count // 2])
            self.anchors[code] = anchor
            self._region_sums[code], self._region_squares[code] = _deviation_sums(region, anchor)
        self.values = grouped
        self._bounds = list(zip(self.starts.tolist(), self.stops.tolist()))
        self._region_ends = firsts + sizes
        self._keys = None  # composite search keys, built on the first search over many regions

    @property
    def size(self) -> int:
        """Number of valid values."""
        return int((self.stops - self.starts).sum())

    def search(self, codes: np.ndarray, queries, side: str) -> np.ndarray:
        """Flat positions of float32 ``queries`` in each region of ``codes`` (``searchsorted``).

        Returns an array of shape ``(len(codes), len(queries))``, each row within its region's
        ``[start, stop]``. Few regions are searched one by one, many at once through 64-bit keys
        (region code, value order) built on first use.
        """
        queries = np.asarray(queries, dtype=np.float32).ravel()
        if codes.size <= _SEARCH_LOOP_REGIONS:
            positions = np.empty((codes.size, queries.size), dtype=np.int64)
            for row, code in enumerate(codes.tolist()):
                start, stop = self._bounds[code]
                positions[row] = np.searchsorted(self.values[start:stop], queries, side=side)
                positions[row] += start
            return positions
        if self._keys is None:
            self._keys = _composite_keys(self.values, self.starts, self._region_ends)
        query_keys = (codes.astype(np.uint64)[:, None] << np.uint64(32)) | _float32_to_key(
            queries
        ).astype(np.uint64)
        positions = np.searchsorted(self._keys, query_keys.ravel(), side=side)
        positions = positions.reshape(query_keys.shape)
        # excluded values (+inf) follow each region's valid ones: a search for +inf stops there
        return np.minimum(positions, self.stops[codes][:, None])

    def region_codes(self, labels) -> np.ndarray:
        """Internal codes of those of ``labels`` that have valid values here."""
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if self._group_labels.size == 0 or labels.size == 0:
            return np.zeros(0, dtype=np.int64)
        codes = np.searchsorted(self._group_labels, labels)
        codes = np.minimum(codes, self._group_labels.size - 1)
        codes = np.unique(codes[self._group_labels[codes] == labels])
        return codes[self.stops[codes] > self.starts[codes]]


class _RegionUnion:
    """Backend of :func:`union_imagestats`: a union of regions of one or more samples."""

    # Order statistics are selected exactly from a gathered band of at most this many values.
    _BAND = 1 << 16
    # Sums are recomputed from scratch when removing values cancelled more than this fraction.
    _CANCELLATION_LIMIT = 1.0e6

    def __init__(self, parts: Sequence[tuple[LabelledSample, np.ndarray]]):
        self.parts = [(sample, codes.astype(np.int64)) for sample, codes in parts if codes.size]
        self.size = int(
            sum((sample.stops[codes] - sample.starts[codes]).sum() for sample, codes in self.parts)
        )
        # Running sums of the current selection, per part and region, about the region anchors:
        # every region starts out whole.
        self._state = [
            (
                sample.starts[codes],
                sample.stops[codes],
                sample._region_sums[codes],
                sample._region_squares[codes],
            )
            for sample, codes in self.parts
        ]

    def select(self, lo: np.float32, hi: np.float32):
        # values <= hi are the values < the next float32 above hi: one search finds both ends
        above_hi = np.nextafter(np.float32(hi), np.float32(np.inf))
        selection = []
        for sample, codes in self.parts:
            positions = sample.search(codes, [lo, above_hi], "left")
            selection.append((positions[:, 0], positions[:, 1]))
        return selection

    @staticmethod
    def count(selection) -> int:
        return int(sum(np.maximum(stop - start, 0).sum() for start, stop in selection))

    @staticmethod
    def same(first, second) -> bool:
        return all(
            np.array_equal(a0, b0) and np.array_equal(a1, b1)
            for (a0, a1), (b0, b1) in zip(first, second)
        )

    def _region_sums(self, part: int, start: np.ndarray, stop: np.ndarray):
        """Sums about the anchors over each region's ``[start, stop)``, for one part.

        Updated from the previous selection with the values that entered or left it at either
        end; a region whose new selection is smaller than that change is summed afresh, and so
        is one where the removed values outweighed the remainder by more than the cancellation
        limit (far outliers leaving).
        """
        sample, codes = self.parts[part]
        old_start, old_stop, old_sums, old_squares = self._state[part]
        anchors = sample.anchors[codes]
        fresh = stop - start <= np.abs(start - old_start) + np.abs(stop - old_stop)
        update = ~fresh
        region = np.arange(codes.size)
        firsts = np.concatenate(
            [np.minimum(start, old_start)[update], np.minimum(stop, old_stop)[update], start[fresh]]
        )
        lasts = np.concatenate(
            [np.maximum(start, old_start)[update], np.maximum(stop, old_stop)[update], stop[fresh]]
        )
        owners = np.concatenate([region[update], region[update], region[fresh]])
        signs = np.concatenate(
            [
                np.where(start > old_start, -1.0, 1.0)[update],  # values below a raised start leave
                np.where(stop > old_stop, 1.0, -1.0)[update],  # values up to a raised stop enter
                np.ones(int(fresh.sum())),
            ]
        )
        piece_sums, piece_squares = _interval_deviation_sums(
            sample.values, firsts, lasts, anchors[owners]
        )
        sums = np.where(fresh, 0.0, old_sums)
        sums += np.bincount(owners, weights=signs * piece_sums, minlength=codes.size)
        squares = np.where(fresh, 0.0, old_squares)
        squares += np.bincount(owners, weights=signs * piece_squares, minlength=codes.size)
        removed = np.bincount(
            owners, weights=np.where(signs < 0, piece_squares, 0.0), minlength=codes.size
        )
        lost = np.flatnonzero(removed > self._CANCELLATION_LIMIT * np.maximum(squares, 0.0))
        if lost.size:
            sums[lost], squares[lost] = _interval_deviation_sums(
                sample.values, start[lost], stop[lost], anchors[lost]
            )
        self._state[part] = (start, stop, sums, squares)
        return sums, squares

    def moments(self, selection) -> _Moments:
        counts, sums, squares, anchors = [], [], [], []
        lows, highs = [], []
        for part, ((sample, codes), (start, stop)) in enumerate(zip(self.parts, selection)):
            stop = np.maximum(stop, start)
            region_sums, region_squares = self._region_sums(part, start, stop)
            counts.append(stop - start)
            sums.append(region_sums)
            squares.append(region_squares)
            anchors.append(sample.anchors[codes])
            filled = stop > start
            lows.append(sample.values[start[filled]])
            highs.append(sample.values[stop[filled] - 1])
        count = np.concatenate(counts).astype(np.float64)
        region_sum = np.concatenate(sums)
        region_squares = np.concatenate(squares)
        anchor = np.concatenate(anchors)
        npix = int(count.sum())
        # Combine regions about one common reference (the anchor of the largest region).
        reference = float(anchor[int(np.argmax(count))])
        shift = anchor - reference
        total = float(np.sum(region_sum + count * shift))
        mean = np.float32(reference + total / npix)
        offset = anchor - float(mean)
        squares = float(
            np.sum(region_squares + 2.0 * offset * region_sum + count * offset * offset)
        )
        stddev = np.float32(math.sqrt(max(squares, 0.0) / (npix - 1))) if npix > 1 else 0.0
        return _Moments(
            npix,
            mean,
            np.float32(stddev),
            np.float32(np.concatenate(lows).min()),
            np.float32(np.concatenate(highs).max()),
        )

    def _extreme_keys(self, selection) -> tuple[int, int]:
        lows, highs = [], []
        for (sample, _), (start, stop) in zip(self.parts, selection):
            filled = stop > start
            lows.append(sample.values[start[filled]])
            highs.append(sample.values[stop[filled] - 1])
        low = np.float32(np.concatenate(lows).min())
        high = np.float32(np.concatenate(highs).max())
        keys = _float32_to_key(np.array([low, high], dtype=np.float32))
        return int(keys[0]), int(keys[1])

    def _positions_at_or_below(self, selection, key: int):
        """Per part, per region: end of the selected values whose key is <= ``key``."""
        ends = []
        # Values with keys <= key are those <= its float, except for the key just below +0.0,
        # which decodes to -0.0 (equal to +0.0 as a float); no value has that key, so step over it.
        if key == _NEGATIVE_ZERO_KEY:
            key -= 1
        value = _key_to_float32(np.array([key], dtype=np.uint32))
        for (sample, codes), (start, stop) in zip(self.parts, selection):
            position = sample.search(codes, value, "right")[:, 0]
            ends.append(np.clip(position, start, np.maximum(stop, start)))
        return ends

    def _band_values(self, selection, low_ends, high_ends) -> np.ndarray:
        """Selected values with keys in (low, high], from per-region position limits."""
        pieces = []
        for (sample, _), first, last in zip(self.parts, low_ends, high_ends):
            lengths = last - first
            total = int(lengths.sum())
            if total == 0:
                continue
            offsets = np.cumsum(lengths) - lengths
            index = np.repeat(first - offsets, lengths) + np.arange(total)
            pieces.append(sample.values[index])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    @staticmethod
    def _secant_key(a: int, b: int, count_a: int, count_b: int, rank: int) -> int:
        """Key where the count of values reaches ``rank``, interpolated linearly in value
        between ``(a, count_a)`` and ``(b, count_b)``; strictly between ``a`` and ``b``."""
        value_a, value_b = _key_to_float32(np.array([a, b], dtype=np.uint32)).astype(np.float64)
        fraction = (rank + 0.5 - count_a) / (count_b - count_a)
        target = np.float32(value_a + fraction * (value_b - value_a))
        key = int(_float32_to_key(np.array([target]))[0])
        return min(max(key, a + 1), b - 1)

    def order_statistics(self, selection, ranks) -> list[np.float32]:
        # Narrow a key interval around the wanted rank until its values are few, then gather
        # them and select exactly. The next key comes from interpolating the counts linearly in
        # value (a secant step: a few steps on the smooth distributions of sky data); a step that
        # does not halve the count in the interval is followed by a bisection step, so the search
        # never takes more than twice the 32 steps of a plain bisection.
        low, high = self._extreme_keys(selection)
        low -= 1  # count(<= low) = 0
        below_low = 0
        results = []
        for rank in ranks:
            a, b, count_a = low, high, below_low
            count_b = self.count(selection)
            secant = True
            while count_b - count_a > self._BAND and b - a > 1:
                if secant:
                    middle = self._secant_key(a, b, count_a, count_b, rank)
                else:
                    middle = (a + b) // 2
                width = count_b - count_a
                count = self._count(self._positions_at_or_below(selection, middle), selection)
                if count <= rank:
                    a, count_a = middle, count
                else:
                    b, count_b = middle, count
                secant = not secant or 2 * (count_b - count_a) <= width
            band = self._band_values(
                selection,
                self._positions_at_or_below(selection, a),
                self._positions_at_or_below(selection, b),
            )
            results.append(np.partition(band, rank - count_a)[rank - count_a])
            low, below_low = a, count_a  # the next (larger) rank is above this band's start
        return results

    @staticmethod
    def _count(ends, selection) -> int:
        return int(sum((end - start).sum() for end, (start, _) in zip(ends, selection)))

    def histogram(self, origin, inv_width, edge, include_edge, nbins) -> np.ndarray:
        last_key = int(_float32_to_key(np.array([edge], dtype=np.float32))[0])
        starts = _bin_start_keys(origin, inv_width, nbins, last_key).astype(np.uint64)
        first = int(_float32_to_key(np.array([origin], dtype=np.float32))[0])
        stop_key = last_key + 1 if include_edge else last_key
        starts = np.minimum(starts, np.uint64(stop_key))
        boundaries = np.concatenate(([first], starts, [stop_key])).astype(np.uint32)
        # values below each boundary: keys below a key are exactly the values below its float
        boundary_values = _key_to_float32(boundaries)
        counts = np.zeros(nbins, dtype=np.int64)
        for sample, codes in self.parts:
            positions = sample.search(codes, boundary_values, "left")
            counts += np.diff(positions, axis=1).sum(axis=0)
        return counts


# ----------------------------------------------------------------------------------------------
# the shared clipping driver


def _clipped_statistics(
    sample, *, lower, upper, nclip, lsigma, usigma, binwidth, wanted: frozenset[str]
) -> ImageStatistics:
    if sample.size == 0:
        return _empty_result()
    lower_limit = -math.inf if lower is None else float(lower)
    upper_limit = math.inf if upper is None else float(upper)
    lo, hi = np.float32(lower_limit), np.float32(upper_limit)
    selection = sample.select(lo, hi)
    if sample.count(selection) == 0:
        return _empty_result()
    moments = sample.moments(selection)
    for _ in range(int(nclip)):
        new_lo = np.float32(max(lower_limit, float(moments.mean) - lsigma * float(moments.stddev)))
        new_hi = np.float32(min(upper_limit, float(moments.mean) + usigma * float(moments.stddev)))
        new_selection = sample.select(new_lo, new_hi)
        if sample.same(new_selection, selection):
            lo, hi = new_lo, new_hi
            break  # fixed point: later iterations would select the same set again
        if sample.count(new_selection) == 0:
            break  # ImageStats raises here; keep the last non-empty set
        lo, hi, selection = new_lo, new_hi, new_selection
        moments = sample.moments(selection)

    npix = moments.npix
    median = None
    if "median" in wanted:
        if npix % 2:
            median = float(sample.order_statistics(selection, [npix // 2])[0])
        else:  # numpy.median: float32 mean of the two middle values
            pair = sample.order_statistics(selection, [npix // 2 - 1, npix // 2])
            median = float(np.mean(np.array(pair, dtype=np.float32)))

    vmin, vmax = float(moments.min), float(moments.max)
    stddev = float(moments.stddev)
    mode = midpt = None
    nbins = 0
    hwidth = math.nan
    if "mode" in wanted or "midpt" in wanted:
        hwidth = binwidth * stddev
        drange = vmax - vmin
        narrow = _NARROW_BIN_EPS * max(abs(vmin), abs(vmax))
        if hwidth <= narrow or drange <= narrow or hwidth > drange:
            nbins = 1
            single = vmin + 0.5 * min(hwidth, drange)
            mode = single if "mode" in wanted else None
            midpt = single if "midpt" in wanted else None
        else:
            nbins = int(drange / hwidth) + 1
            layout = _histogram_layout(vmin, vmax, hwidth, nbins)
            counts = sample.histogram(*layout, nbins)
            if "mode" in wanted:
                mode = _mode_from_histogram(counts, vmin, hwidth)
            if "midpt" in wanted:
                midpt = _midpt_from_histogram(counts, vmin, hwidth)

    return ImageStatistics(
        npix=npix,
        mean=float(moments.mean),
        stddev=stddev,
        min=vmin,
        max=vmax,
        median=median,
        mode=mode,
        midpt=midpt,
        clip_lower=float(lo),
        clip_upper=float(hi),
        nbins=nbins,
        bin_width=hwidth,
    )


# ----------------------------------------------------------------------------------------------
# public functions


def _sorted_valid_values(values, mask) -> np.ndarray:
    """Finite, unmasked values as a sorted float32 copy (the input is never modified).

    One private copy is made; masked values become +inf and, after sorting, the valid values
    are the slice between the -inf at the start and the +inf and NaN at the end. This costs no
    separate finiteness pass and no compressed copy.
    """
    data = np.asarray(values)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
    work = np.array(data, dtype=np.float32, order="C").ravel()  # always a fresh copy
    if mask is not None:
        np.copyto(work, np.float32(np.inf), where=mask.ravel())
    work.sort()  # -inf first; +inf, then NaN, last
    first = int(np.searchsorted(work, np.float32(-np.inf), side="right"))
    last = int(np.searchsorted(work, np.float32(np.inf), side="left"))
    return work[first:last]


def imagestats(
    values,
    mask=None,
    *,
    nclip: int = 0,
    lsigma: float = 3.0,
    usigma: float = 3.0,
    lower: float | None = None,
    upper: float | None = None,
    binwidth: float = 0.1,
    fields: str | Iterable[str] | None = None,
) -> ImageStatistics:
    """Clipped statistics of an array with the semantics of ``stsci.imagestats.ImageStats``.

    Parameters
    ----------
    values : array_like
        Data of any shape, in any units; computed in float32 (as ``ImageStats`` does).
    mask : array_like of bool, optional
        Same shape as ``values``; True marks values to ignore. NaN and +-inf are always ignored.
    nclip : int
        Number of clipping iterations (0: no clipping).
    lsigma, usigma : float
        Lower and upper clipping limits in units of the standard deviation, around the mean.
    lower, upper : float, optional
        Hard limits in data units (inclusive); None means no limit.
    binwidth : float
        Histogram bin width in units of the standard deviation (``mode`` and ``midpt`` only).
    fields : str or iterable of str, optional
        Statistics to compute, as a comma-separated string (``"mode,median"``) or names; the
        others are None. Moments (npix, mean, stddev, min, max) are always computed.
        Default: all of :data:`ALL_FIELDS`.

    Returns
    -------
    ImageStatistics
        With ``npix == 0`` and NaN values when no value is valid.

    Raises
    ------
    ValueError
        For invalid parameters (negative ``nclip``, non-positive ``lsigma``/``usigma``/``binwidth``,
        ``lower > upper``, unknown field name, mask of another shape).
    """
    _check_parameters(nclip, lsigma, usigma, binwidth, lower, upper)
    wanted = _parse_fields(fields)
    sample = _SortedValues(_sorted_valid_values(values, mask))
    return _clipped_statistics(
        sample,
        lower=lower,
        upper=upper,
        nclip=nclip,
        lsigma=lsigma,
        usigma=usigma,
        binwidth=binwidth,
        wanted=wanted,
    )


def union_imagestats(
    parts: Iterable[tuple[LabelledSample, np.ndarray | Sequence[int]]],
    *,
    nclip: int = 0,
    lsigma: float = 3.0,
    usigma: float = 3.0,
    lower: float | None = None,
    upper: float | None = None,
    binwidth: float = 0.1,
    fields: str | Iterable[str] | None = None,
) -> ImageStatistics:
    """:func:`imagestats` of the union of labelled regions of one or more samples.

    Parameters
    ----------
    parts : iterable of (LabelledSample, array_like of int)
        For each sample, the region labels whose values belong to the union (labels absent from
        the sample are ignored).
    nclip, lsigma, usigma, lower, upper, binwidth, fields
        As in :func:`imagestats`, in the units of the samples' values.

    Returns
    -------
    ImageStatistics
        Equal to :func:`imagestats` of the concatenated values up to float rounding
        (sums are combined per region instead of over one array); ``npix == 0`` when empty.
    """
    _check_parameters(nclip, lsigma, usigma, binwidth, lower, upper)
    wanted = _parse_fields(fields)
    selected = [(sample, sample.region_codes(labels)) for sample, labels in parts]
    backend = _RegionUnion(selected)
    return _clipped_statistics(
        backend,
        lower=lower,
        upper=upper,
        nclip=nclip,
        lsigma=lsigma,
        usigma=usigma,
        binwidth=binwidth,
        wanted=wanted,
    )


def has_usable_pixel(data: np.ndarray, dq: np.ndarray | None = None, bad_bits: int = 0,
                     block_rows: int = 64) -> bool:  # fmt: skip
    """True if some pixel is finite and has none of ``bad_bits`` set in ``dq``.

    Rows are examined a block at a time and the search stops at the first usable pixel, so a
    normal chip costs one block, not a pass over the whole array.

    Parameters
    ----------
    data : ndarray
        2-D image (any units).
    dq : ndarray of int, optional
        Data-quality flags, same shape as ``data``.
    bad_bits : int
        DQ bits that make a pixel unusable (0: DQ is not looked at).
    block_rows : int
        Rows per block.

    Returns
    -------
    bool
    """
    bad = np.uint32(int(bad_bits) & 0xFFFFFFFF)
    for start in range(0, data.shape[0], block_rows):
        rows = slice(start, start + block_rows)
        usable = np.isfinite(data[rows])
        if dq is not None and bad:
            usable &= (dq[rows] & bad) == 0
        if usable.any():
            return True
    return False
