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
each region is sorted once, and sums over value ranges come from cumulative sums anchored at the
region median, so a statistic of any union of regions costs O(regions x log(pixels)).

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
]

#: Statistics :func:`imagestats` can report.
ALL_FIELDS = ("npix", "mean", "stddev", "min", "max", "median", "mode", "midpt")

_FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Histogram bins narrower than this fraction of the data magnitude (about ten float32 ulps) make a
# one-bin histogram; ImageStats used the same number as an absolute width.
_NARROW_BIN_EPS = 10.0 * _FLOAT32_EPS
_SIGN_BIT = np.uint32(0x80000000)
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
    """Map float32 values (no NaN, no -0.0) to uint32 keys with the same order."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits & _SIGN_BIT) != 0
    return np.where(negative, ~bits, bits | _SIGN_BIT)


def _key_to_float32(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float32_to_key`."""
    keys = np.asarray(keys, dtype=np.uint32)
    positive = (keys & _SIGN_BIT) != 0
    return np.where(positive, keys & _LOW_BITS, ~keys).astype(np.uint32).view(np.float32)


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
    _CHUNK = 1 << 18

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
        # float64 deviations from the reference, in chunks so no full-size float64 copy is made
        total = 0.0
        total_squares = 0.0
        buffer = np.empty(min(stop - start, self._CHUNK), dtype=np.float64)
        for first in range(start, stop, self._CHUNK):
            chunk = self.values[first : min(first + self._CHUNK, stop)]
            deviation = buffer[: chunk.size]
            np.subtract(chunk, self._reference, out=deviation, dtype=np.float64)
            total += float(deviation.sum())
            total_squares += float(np.dot(deviation, deviation))
        return total, total_squares

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


def _region_codes(labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Region code of every value (uint64) and the size of every region.

    Labels are normally small non-negative integers (region numbers of a grid) and are used as
    codes directly; only sparse, huge labels are compacted (returned as the sorted distinct
    labels, else None).
    """
    if labels.size == 0:
        return None, np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    largest = int(labels.max())
    if largest > 4 * labels.size + 1024:  # a table this sparse would waste memory
        distinct, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        return distinct, codes.astype(np.uint64), sizes
    sizes = np.bincount(labels, minlength=largest + 1)
    return None, labels.astype(np.uint64), sizes


class LabelledSample:
    """Valid values of one chip grouped by an integer region label, each region sorted once.

    Built once per chip, it answers :func:`union_imagestats` for any union of its regions in
    O(regions x log(values)) time, which is what makes sky matching of many exposures cheap: the
    overlap of one exposure with each other exposure is a different union of the same regions.

    Parameters
    ----------
    values : array_like
        1-D finite values (converted to float32; use the units the statistics should be in).
    labels : array_like of int
        Region label (>= 0) of each value, same length as ``values``.

    Notes
    -----
    Memory is about 28 bytes per value (sorted values, 64-bit search keys and two float64
    cumulative sums); build one chip at a time.
    """

    def __init__(self, values, labels):
        values = np.asarray(values, dtype=np.float32).ravel()
        labels = np.asarray(labels).ravel()
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"region labels must be integers, got {labels.dtype}")
        if values.shape != labels.shape:
            raise ValueError("values and labels must have the same length")
        if values.size and not np.all(np.isfinite(values)):
            raise ValueError("LabelledSample needs finite values; drop NaN/inf first")
        if labels.size and labels.min() < 0:
            raise ValueError("region labels must be non-negative")
        values = values + np.float32(0.0)  # turns -0.0 into +0.0 so bit keys order like values
        self._sparse_labels, codes, sizes = _region_codes(labels)
        if self._sparse_labels is None:
            self.region_labels = np.nonzero(sizes)[0]
        else:
            self.region_labels = self._sparse_labels
        keys = codes  # reuse the buffer: keys = region code in the high word, value in the low
        keys <<= np.uint64(32)
        keys |= _float32_to_key(values)
        keys.sort()
        self._keys = keys
        self.values = _key_to_float32(keys.astype(np.uint32))  # the low word
        self.stops = np.cumsum(sizes)
        self.starts = self.stops - sizes
        self._build_anchored_sums()

    @property
    def size(self) -> int:
        """Number of values."""
        return self.values.size

    def region_codes(self, labels) -> np.ndarray:
        """Internal codes of those of ``labels`` that have values in this sample."""
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if self.starts.size == 0 or labels.size == 0:
            return np.zeros(0, dtype=np.int64)
        if self._sparse_labels is None:
            codes = labels[(labels >= 0) & (labels < self.starts.size)]
        else:
            codes = np.searchsorted(self._sparse_labels, labels)
            codes = np.minimum(codes, self._sparse_labels.size - 1)
            codes = codes[self._sparse_labels[codes] == labels]
        codes = np.unique(codes)
        return codes[self.stops[codes] > self.starts[codes]]

    def _build_anchored_sums(self) -> None:
        # For region r stored at flat positions [start, stop) the cumulative sums live at
        # [start + r, stop + r] (one extra slot per region) and are anchored at the region median:
        # G[i] = sum(y[anchor:i]) for i >= anchor and -sum(y[i:anchor]) below it, y = x - x_anchor.
        # A range sum is G[b] - G[a]; it only ever accumulates values between the region median
        # and the range, so far outliers cannot wreck the precision of sky-level sums.
        nregions = self.starts.size
        total = self.values.size + nregions
        self._cum = np.zeros(total, dtype=np.float64)
        self._cum_sq = np.zeros(total, dtype=np.float64)
        self.anchors = np.zeros(nregions, dtype=np.float64)
        for code in np.nonzero(self.stops > self.starts)[0]:
            start, stop = int(self.starts[code]), int(self.stops[code])
            middle = start + (stop - start) // 2
            anchor = float(self.values[middle])
            self.anchors[code] = anchor
            deviation = np.subtract(self.values[start:stop], anchor, dtype=np.float64)
            squares = deviation * deviation
            base, end, split = middle + code, stop + code, middle - start
            np.cumsum(deviation[split:], out=self._cum[base + 1 : end + 1])
            np.cumsum(squares[split:], out=self._cum_sq[base + 1 : end + 1])
            if split:
                for source, target in ((deviation, self._cum), (squares, self._cum_sq)):
                    below = target[start + code : base][::-1]
                    np.cumsum(source[:split][::-1], out=below)
                    np.negative(below, out=below)


class _RegionUnion:
    """Backend of :func:`union_imagestats`: a union of regions of one or more samples."""

    # Order statistics are selected exactly from a gathered band of at most this many values.
    _BAND = 1 << 16

    def __init__(self, parts: Sequence[tuple[LabelledSample, np.ndarray]]):
        self.parts = [(sample, codes.astype(np.int64)) for sample, codes in parts if codes.size]
        self.size = int(
            sum((sample.stops[codes] - sample.starts[codes]).sum() for sample, codes in self.parts)
        )

    @staticmethod
    def _query_keys(codes: np.ndarray, value_keys) -> np.ndarray:
        return (codes.astype(np.uint64) << np.uint64(32)) | np.uint64(value_keys)

    def _positions(self, sample, codes, value: np.float32, side: str) -> np.ndarray:
        key = int(_float32_to_key(np.array([value], dtype=np.float32))[0])
        return np.searchsorted(sample._keys, self._query_keys(codes, key), side=side)

    def select(self, lo: np.float32, hi: np.float32):
        return [
            (self._positions(s, c, lo, "left"), self._positions(s, c, hi, "right"))
            for s, c in self.parts
        ]

    @staticmethod
    def count(selection) -> int:
        return int(sum(np.maximum(stop - start, 0).sum() for start, stop in selection))

    @staticmethod
    def same(first, second) -> bool:
        return all(
            np.array_equal(a0, b0) and np.array_equal(a1, b1)
            for (a0, a1), (b0, b1) in zip(first, second)
        )

    def moments(self, selection) -> _Moments:
        counts, sums, squares, anchors = [], [], [], []
        lows, highs = [], []
        for (sample, codes), (start, stop) in zip(self.parts, selection):
            stop = np.maximum(stop, start)
            counts.append(stop - start)
            sums.append(sample._cum[stop + codes] - sample._cum[start + codes])
            squares.append(sample._cum_sq[stop + codes] - sample._cum_sq[start + codes])
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
        for (sample, codes), (start, stop) in zip(self.parts, selection):
            position = np.searchsorted(sample._keys, self._query_keys(codes, key), side="right")
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

    def order_statistics(self, selection, ranks) -> list[np.float32]:
        # Bisect over float32 keys only until the value band around the wanted rank holds few
        # values, then gather that band and select exactly: a few searches instead of 32.
        low, high = self._extreme_keys(selection)
        low -= 1  # count(<= low) = 0
        below_low = 0
        results = []
        for rank in ranks:
            a, b, count_a = low, high, below_low
            count_b = self.count(selection)
            while count_b - count_a > self._BAND and b - a > 1:
                middle = (a + b) // 2
                count = self._count(self._positions_at_or_below(selection, middle), selection)
                if count <= rank:
                    a, count_a = middle, count
                else:
                    b, count_b = middle, count
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
        boundaries = np.concatenate(([first], starts, [stop_key])).astype(np.uint64)
        counts = np.zeros(nbins, dtype=np.int64)
        for sample, codes in self.parts:
            queries = (codes.astype(np.uint64)[:, None] << np.uint64(32)) | boundaries[None, :]
            positions = np.searchsorted(sample._keys, queries.ravel(), side="left")
            positions = positions.reshape(codes.size, nbins + 1)
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


def _valid_values(values, mask) -> np.ndarray:
    data = np.asarray(values)
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    if mask is None:
        finite = np.isfinite(data)
        return data.ravel() if finite.all() else data[finite]
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape:
        raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
    good = np.isfinite(data)
    good &= ~mask
    return data[good]


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
    valid = _valid_values(values, mask)
    if valid.base is None:
        valid.sort()  # a private copy already: sort it in place
    else:
        valid = np.sort(valid)
    sample = _SortedValues(valid)
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
