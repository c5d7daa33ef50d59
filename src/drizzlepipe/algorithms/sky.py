"""Sky background of dithered exposures, as AstroDrizzle's Sky step (``stsci.skypac.skymatch``).

Units
-----
Sky levels are compared in *brightness* units, per square arcsecond and, for data in counts, per
second: a chip with pixel scale ``p`` (arcsec, the undistorted IDCSCALE in AstroDrizzle) and
exposure time ``t`` has the conversion factor ``c = 1 / p**2`` (count-rate data) or
``c = 1 / (p**2 t)`` (counts), see :func:`brightness_factor` (data already per unit area, such as
JWST's MJy/sr, take ``c = 1``, or ``1 / t`` for counts). Chips with different pixel scales
or exposure times are therefore compared fairly. Every chip's result is given back in that chip's
own data units per pixel (``sky_data = sky_brightness / c``): this is ``MDRIZSKY``. Data are never
modified.

Methods (:data:`SKY_METHODS`), with ``B_k = c_k * stat(chip k)``:

``localmin``
    Each exposure gets the minimum ``B_k`` over its chips; chips of one exposure (same
    ``exposure_id``) share that brightness.
``globalmin``
    Every exposure gets the minimum of the ``localmin`` values.
``match``
    Relative offsets: for every pair of exposures whose footprints overlap, each one's statistic
    is measured inside the common area; the offsets ``d`` minimise
    ``sum_pairs (w_ij (d_i - d_j - (S_i(ij) - S_j(ij))))**2`` with ``w_ij`` the mean pixel count of
    the two measurements (skypac's equation system, solved with ``numpy.linalg.pinv``,
    ``rcond=1e-12``). The lowest offset of each connected set of exposures is zero.
``globalmin+match``
    The matched offsets plus, per connected set, ``min_k (B_k - d_exposure(k))``.
``user``
    Values given per chip in data units, passed through.

The statistic (:class:`SkyStatistic`) is ``stsci.imagestats.ImageStats`` as AstroDrizzle uses it:
``median`` (default), ``mode``, ``mean`` or ``midpt`` after ``nclip`` iterations of mean +-
``lsigma``/``usigma`` sigma clipping, inside optional data limits ``lower``/``upper``.

How overlaps are found (``match``)
----------------------------------
All chip footprints are projected onto **one shared tangent plane** (gnomonic projection about the
mean pointing) and rasterised on a grid of cells about one (finest) input pixel wide. Each
exposure adds a random 64-bit tag to the cells its footprint covers (scan-line filling through a
difference array summed along rows), so equal sums mean "covered by the same set of exposures";
distinct sums are *regions*, decoded to sets of exposures from one representative cell each (two
different sets summing to the same tag has a probability of about regions^2 / 2^64). Every chip
pixel is then given the region of its cell (the chip's WCS is evaluated only on a node grid every
``grid_step`` pixels and interpolated bilinearly), and each chip's valid values are sorted once
per region (:class:`~drizzlepipe.algorithms.stats.LabelledSample`). The statistic of exposure
``i`` inside its overlap with ``j`` is the statistic of the union of ``i``'s regions that ``j``
covers, which costs O(regions x log(pixels)) instead of a pass over the pixels.

Labelling and grouping work block by block of the node grid: a pixel interpolates its cell
position from its block's four corner nodes, so it lies in their bounding box on the grid; when no
two neighbouring cells in that box differ (a summed-area table of label changes answers this in
O(1)), the whole block has that label, exactly as the per-pixel computation would give, and is
copied as one rectangle. Only blocks straddling a region boundary (about 10% of a WFC3/UVIS chip
in a four-exposure dither) are labelled pixel by pixel.

Why a tangent-plane grid rather than spherical polygons: AstroDrizzle intersects every pair of
chip polygons on the sphere (``spherical_geometry``), rasterises each intersection back into both
chips and recomputes the statistic from the pixels, which is O(N^2) in polygon work and pixel
passes, and it fails on identical footprints, on exposures that overlap nothing and on
disconnected sets of exposures (drizzlepac issue #376). One shared grid costs O(N) rasterisations
and O(pixels) labelling, handles any overlap pattern (including exact coincidence) without special
cases, measures both members of a pair on exactly the same cells, and needs only forward WCS
evaluations (``pixel_to_world_values``), so it works for astropy (SIP) and gwcs WCSs alike. Region
boundaries are exact to about one cell, which does not bias the offsets: both exposures of a pair
are measured on the same cells. Fields reaching more than ~78 degrees from their mean pointing are
refused (:class:`SkyMatchError`). Very large fields use coarser cells (``max_grid_cells``).

Cost: O(N) WCS evaluations on node grids and rasterisations, one labelling and one sort per chip
(O(pixels)), and O(N^2 x regions x log(pixels)) for the overlap statistics. One exposure's chips
are held in working memory at a time (about 10 bytes per pixel: the grouped, sorted float32
values of each chip, plus 8 bytes per pixel of search keys when one overlap spans more than a few
dozen regions of a chip). Labelling, grouping and sorting the pixels take most of the time,
the overlap statistics little (timings: docs/developer/performance.md, *Timings behind the code*).

Differences from AstroDrizzle/skypac (fixes)
--------------------------------------------
* ``match`` works for perfectly coincident exposures, for exposures that overlap nothing and for
  several disconnected sets of exposures (skypac crashed, issue #376, or returned NaN offsets).
  Each connected set is solved on its own with its lowest member at zero; an exposure that
  overlaps nothing keeps its own statistic (as with ``localmin``); both are reported in
  :class:`SkyResult`.
* The overlap statistic of an exposure with several chips is the statistic of all its pixels in
  the overlap (skypac averaged per-chip statistics weighted by pixel counts).
* A chip without any valid pixel (all masked, all NaN) is reported; its exposure takes the sky of
  its other chips, or 0 if it has none.
* ``lower``/``upper`` apply to data values in every method (skypac documents electrons).
* Matching raises :class:`SkyMatchError` (not a generic exception) when it cannot be solved, so
  the caller can fall back (``match`` -> ``localmin``, ``globalmin+match`` -> ``globalmin``).

Masks are boolean with True = bad.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drizzlepipe.algorithms.stats import LabelledSample, imagestats, union_imagestats
from drizzlepipe.exceptions import DrizzlepipeError

__all__ = [
    "SKY_METHODS",
    "SKY_STATISTICS",
    "SkyChip",
    "SkyCoverage",
    "SkyMatchError",
    "SkyResult",
    "SkyStatistic",
    "brightness_factor",
    "compute_sky",
    "globalmin_match_sky",
    "globalmin_sky",
    "localmin_sky",
    "match_sky",
    "sky_coverage",
    "user_sky",
    "sky_spread",
    "SKY_SPREAD_FACTOR",
]

SKY_METHODS = ("localmin", "globalmin", "match", "globalmin+match", "user")
SKY_STATISTICS = ("median", "mode", "mean", "midpt")

# Limits of the shared sky grid used to find overlaps.
DEFAULT_GRID_STEP = 64
DEFAULT_MAX_GRID_CELLS = 1 << 22
# Row blocks used when labelling chip pixels (bounds the temporary float arrays).
_LABEL_ROWS = 512
# Points further than ~78 degrees from the tangent point are refused (gnomonic blow-up).
_MIN_COS_FROM_CENTRE = 0.2


class SkyMatchError(DrizzlepipeError):
    """Sky matching cannot be solved; callers fall back to ``localmin``/``globalmin``."""


def brightness_factor(
    pixel_scale: float, exptime: float, in_counts: bool, per_area: bool = False,
    gain: float = 1.0,
) -> float:  # fmt: skip
    """Factor converting data values per pixel into brightness (per arcsec^2 [per s]).

    Parameters
    ----------
    pixel_scale : float
        Pixel scale in arcsec per pixel (AstroDrizzle uses the undistorted IDCSCALE).
    exptime : float
        Exposure time in seconds; used only when ``in_counts``.
    in_counts : bool
        True when data are counts (electrons, DN) per pixel, False for count rates
        (or any already time-normalised unit).
    per_area : bool
        True when data are already per unit sky area (surface brightness such as MJy/sr):
        no pixel-area factor then.
    gain : float
        Electrons per data unit (the gain for data in DN, else 1): chips in DN with different
        gains are compared in electrons.

    Returns
    -------
    float
        ``gain / pixel_scale**2`` (``gain`` when ``per_area``), divided by ``exptime`` when
        ``in_counts``.
    """
    if not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"pixel scale must be a positive number of arcsec, got {pixel_scale!r}")
    if not (math.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of electrons per unit, got {gain!r}")
    factor = gain if per_area else gain / pixel_scale**2
    if in_counts:
        if not (math.isfinite(exptime) and exptime > 0):
            raise ValueError(
                f"counts data need a positive exposure time to compare sky, got {exptime!r}"
            )
        factor /= exptime
    return factor


@dataclass(frozen=True, eq=False)
class SkyChip:
    """One detector chip as the sky algorithms need it.

    Attributes
    ----------
    data : numpy.ndarray
        2-D science array (not sky-subtracted), in counts or count rate per pixel.
    wcs : object
        APE-14 WCS (astropy ``WCS`` with SIP, or gwcs); only ``pixel_to_world_values`` is used,
        with 0-based pixel coordinates, returning longitude and latitude in degrees.
    exposure_id : hashable
        Chips with equal ids belong to one exposure and share one sky brightness.
    pixel_scale : float
        Pixel scale in arcsec per pixel used for the brightness conversion.
    exptime : float
        Exposure time in seconds.
    in_counts : bool
        True for counts per pixel, False for count rate.
    mask : numpy.ndarray of bool, optional
        True = pixel not to be used for the sky (DQ, static mask, user masks combined).
    name : str
        Label used in reports and error messages.
    per_area : bool
        Data are surface brightness (per unit sky area, e.g. MJy/sr): no pixel-area factor.
    gain : float
        Electrons per data unit (the gain of data in DN; 1 for electrons or surface brightness).
    """

    data: np.ndarray
    wcs: Any
    exposure_id: Hashable
    pixel_scale: float
    exptime: float
    in_counts: bool
    mask: np.ndarray | None = None
    name: str = ""
    per_area: bool = False
    gain: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(ny, nx)`` of the data."""
        return tuple(np.shape(self.data))

    @property
    def brightness_factor(self) -> float:
        """Data per pixel -> brightness factor, see :func:`brightness_factor`."""
        return brightness_factor(
            self.pixel_scale, self.exptime, self.in_counts, self.per_area, self.gain
        )

    def label(self, index: int) -> str:
        """Name for messages: ``name`` or the chip's position in the input."""
        return self.name or f"chip {index}"


@dataclass(frozen=True)
class SkyStatistic:
    """The ImageStats-like statistic used to measure sky (AstroDrizzle's ``sky*`` parameters).

    Attributes
    ----------
    stat : str
        ``median``, ``mode``, ``mean`` or ``midpt``.
    nclip : int
        Clipping iterations (``skyclip``).
    lsigma, usigma : float
        Clipping limits in sigma (``skylsigma``, ``skyusigma``).
    lower, upper : float or None
        Data limits in data units (``skylower``, ``skyupper``).
    binwidth : float
        Histogram bin width in sigma (``skywidth``; mode and midpt only).
    """

    stat: str = "median"
    nclip: int = 5
    lsigma: float = 4.0
    usigma: float = 4.0
    lower: float | None = None
    upper: float | None = None
    binwidth: float = 0.1

    def __post_init__(self):
        if self.stat not in SKY_STATISTICS:
            raise ValueError(
                f"sky statistic {self.stat!r} is not one of {', '.join(SKY_STATISTICS)}"
            )
        if int(self.nclip) != self.nclip or self.nclip < 0:
            raise ValueError(f"nclip must be a non-negative integer, got {self.nclip!r}")
        if not (self.lsigma > 0 and self.usigma > 0 and self.binwidth > 0):
            raise ValueError("lsigma, usigma and binwidth must be positive")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower sky limit {self.lower} is above upper limit {self.upper}")

    def _clip_parameters(self) -> dict:
        return {
            "nclip": self.nclip,
            "lsigma": self.lsigma,
            "usigma": self.usigma,
            "lower": self.lower,
            "upper": self.upper,
            "binwidth": self.binwidth,
        }

    def measure(self, data, mask=None) -> tuple[float, int]:
        """Statistic of the valid pixels of one array.

        Parameters
        ----------
        data : array_like
            Values in data units.
        mask : array_like of bool, optional
            True = ignore; NaN and inf are always ignored.

        Returns
        -------
        value, npix : float, int
            The statistic in data units (NaN when no pixel is valid) and the number of pixels in
            the final clipped set.
        """
        stats = imagestats(data, mask, fields=("npix", self.stat), **self._clip_parameters())
        if stats.npix == 0:
            return math.nan, 0
        return float(stats[self.stat]), stats.npix

    def measure_union(self, parts) -> tuple[float, int]:
        """Statistic of a union of labelled regions (values already filtered by lower/upper).

        Parameters
        ----------
        parts : iterable of (LabelledSample, array_like of int)
            As :func:`~drizzlepipe.algorithms.stats.union_imagestats`.

        Returns
        -------
        value, npix : float, int
            In the units of the samples (NaN, 0 when empty).
        """
        parameters = self._clip_parameters()
        parameters["lower"] = parameters["upper"] = None
        stats = union_imagestats(parts, fields=("npix", self.stat), **parameters)
        if stats.npix == 0:
            return math.nan, 0
        return float(stats[self.stat]), stats.npix


@dataclass(frozen=True)
class SkyResult:
    """Sky of every chip, with what could not be measured.

    Attributes
    ----------
    method : str
        Method that produced the values.
    sky : tuple of float
        Per input chip, in that chip's data units per pixel (``MDRIZSKY``), input order.
    exposure_sky : dict
        Exposure id -> sky brightness (per arcsec^2, per second for counts data).
    chip_statistic : tuple of float
        Per chip, the statistic of all its valid pixels in data units (NaN when it has none, or
        when the method did not need it).
    empty_chips : tuple of int
        Indices of chips without any valid pixel.
    empty_exposures : tuple
        Exposures none of whose chips has a valid pixel (their sky is 0).
    unmatched_exposures : tuple
        ``match`` methods: exposures that overlap no other exposure; they keep their own
        statistic (``localmin`` value).
    match_groups : tuple of tuple
        ``match`` methods: sets of exposures linked by overlaps, each matched on its own
        (more than one set means their relative levels are unknown).
    overlap_npix : numpy.ndarray or None
        ``match`` methods: ``overlap_npix[i, j]`` = pixels of exposure ``i`` used inside its
        overlap with exposure ``j`` (order of :attr:`exposure_ids`).
    exposure_ids : tuple
        Exposure ids in order of first appearance.
    """

    method: str
    sky: tuple[float, ...]
    exposure_sky: dict
    chip_statistic: tuple[float, ...]
    empty_chips: tuple[int, ...] = ()
    empty_exposures: tuple = ()
    unmatched_exposures: tuple = ()
    match_groups: tuple = ()
    overlap_npix: np.ndarray | None = field(default=None, repr=False)
    exposure_ids: tuple = ()


# ----------------------------------------------------------------------------------------------
# bookkeeping shared by all methods


def _exposure_index(chips: Sequence[SkyChip]) -> tuple[tuple, np.ndarray]:
    ids: dict = {}
    owner = np.empty(len(chips), dtype=np.int64)
    for index, chip in enumerate(chips):
        owner[index] = ids.setdefault(chip.exposure_id, len(ids))
    return tuple(ids), owner


def _validate_chips(chips: Sequence[SkyChip]) -> list[SkyChip]:
    chips = list(chips)
    if not chips:
        raise ValueError("sky computation needs at least one chip")
    for index, chip in enumerate(chips):
        if len(chip.shape) != 2:
            raise ValueError(f"{chip.label(index)}: data must be 2-D, got shape {chip.shape}")
        if chip.mask is not None and np.shape(chip.mask) != chip.shape:
            raise ValueError(
                f"{chip.label(index)}: mask shape {np.shape(chip.mask)} differs from data "
                f"shape {chip.shape}"
            )
        chip.brightness_factor  # noqa: B018 - validates pixel scale and exposure time
    return chips


def _chip_brightness(chip: SkyChip, statistic: SkyStatistic) -> float:
    value, npix = statistic.measure(chip.data, chip.mask)
    return chip.brightness_factor * value if npix > 0 else math.nan


def _chip_brightness_statistics(chips, statistic: SkyStatistic, map_=map) -> np.ndarray:
    """``c_k * stat_k`` per chip (NaN for chips without valid pixels), chips measured by
    ``map_`` (e.g. a thread pool's: the sorts behind the statistics release the GIL)."""
    measure = functools.partial(_chip_brightness, statistic=statistic)
    return np.array(list(map_(measure, chips)), dtype=float).reshape(len(chips))


def _exposure_minimum(chip_values: np.ndarray, owner: np.ndarray, nexposures: int) -> np.ndarray:
    minimum = np.full(nexposures, np.nan)
    for exposure in range(nexposures):
        values = chip_values[(owner == exposure) & np.isfinite(chip_values)]
        if values.size:
            minimum[exposure] = values.min()
    return minimum


def _result(method, chips, ids, owner, exposure_brightness, chip_brightness, **extra) -> SkyResult:
    """Turn per-exposure brightness into per-chip data values (empty exposures -> 0)."""
    factors = np.array([chip.brightness_factor for chip in chips])
    filled = np.where(np.isfinite(exposure_brightness), exposure_brightness, 0.0)
    sky = tuple(float(filled[owner[k]] / factors[k]) for k in range(len(chips)))
    chip_statistic = tuple(float(v) for v in chip_brightness / factors)
    empty_chips = tuple(int(k) for k in np.nonzero(~np.isfinite(chip_brightness))[0])
    empty_exposures = tuple(
        ids[e] for e in range(len(ids)) if not np.isfinite(chip_brightness[owner == e]).any()
    )
    return SkyResult(
        method=method,
        sky=sky,
        exposure_sky={ids[e]: float(filled[e]) for e in range(len(ids))},
        chip_statistic=chip_statistic,
        empty_chips=empty_chips,
        empty_exposures=empty_exposures,
        exposure_ids=ids,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# localmin / globalmin / user


def localmin_sky(
    chips: Sequence[SkyChip], statistic: SkyStatistic | None = None, *, map_=map
) -> SkyResult:
    """Sky of each exposure = minimum brightness statistic over its chips.

    Parameters
    ----------
    chips : sequence of SkyChip
        All chips of all exposures.
    statistic : SkyStatistic, optional
        How to measure a chip (default: clipped median, AstroDrizzle defaults).
    map_ : callable, optional
        ``map``-like function that measures the chips (default: the built-in, one after the
        other; a thread pool's ``map`` measures several at once).

    Returns
    -------
    SkyResult
        ``sky[k]`` in chip ``k``'s data units per pixel.
    """
    chips = _validate_chips(chips)
    statistic = statistic or SkyStatistic()
    ids, owner = _exposure_index(chips)
    chip_brightness = _chip_brightness_statistics(chips, statistic, map_)
    exposure_brightness = _exposure_minimum(chip_brightness, owner, len(ids))
    return _result("localmin", chips, ids, owner, exposure_brightness, chip_brightness)


def globalmin_sky(
    chips: Sequence[SkyChip], statistic: SkyStatistic | None = None, *, map_=map
) -> SkyResult:
    """One sky brightness for all exposures: the minimum of the ``localmin`` values.

    Parameters
    ----------
    chips : sequence of SkyChip
        All chips of all exposures.
    statistic : SkyStatistic, optional
        How to measure a chip.
    map_ : callable, optional
        As :func:`localmin_sky`.

    Returns
    -------
    SkyResult
        ``sky[k] = B_min / c_k`` in chip ``k``'s data units per pixel (0 everywhere when no chip
        has a valid pixel).
    """
    chips = _validate_chips(chips)
    statistic = statistic or SkyStatistic()
    ids, owner = _exposure_index(chips)
    chip_brightness = _chip_brightness_statistics(chips, statistic, map_)
    exposure_minimum = _exposure_minimum(chip_brightness, owner, len(ids))
    measured = exposure_minimum[np.isfinite(exposure_minimum)]
    overall = measured.min() if measured.size else math.nan
    exposure_brightness = np.where(np.isfinite(exposure_minimum), overall, np.nan)
    return _result("globalmin", chips, ids, owner, exposure_brightness, chip_brightness)


def user_sky(chips: Sequence[SkyChip], values: Sequence[float]) -> SkyResult:
    """Sky values given by the user, one per chip in data units per pixel, passed through.

    Parameters
    ----------
    chips : sequence of SkyChip
        All chips (data are not read).
    values : sequence of float
        Sky per chip, in that chip's data units per pixel.

    Returns
    -------
    SkyResult
        ``sky`` equal to ``values``; ``exposure_sky`` is the brightness of each exposure's first
        chip.
    """
    chips = list(chips)
    values = [float(v) for v in values]
    if len(values) != len(chips):
        raise ValueError(f"{len(values)} user sky values given for {len(chips)} chips")
    bad = [chips[k].label(k) for k, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"user sky values must be finite; not for {', '.join(bad)}")
    ids, owner = _exposure_index(chips)
    exposure_sky = {}
    for index, chip in enumerate(chips):
        exposure_sky.setdefault(chip.exposure_id, chip.brightness_factor * values[index])
    return SkyResult(
        method="user",
        sky=tuple(values),
        exposure_sky=exposure_sky,
        chip_statistic=tuple(math.nan for _ in chips),
        exposure_ids=ids,
    )


# ----------------------------------------------------------------------------------------------
# footprints on a shared tangent plane


def _unit_vectors(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    lon = np.radians(lon_deg)
    lat = np.radians(lat_deg)
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def _node_positions(length: int, step: int) -> np.ndarray:
    """Node coordinates spanning the pixel edges ``-0.5 .. length - 0.5`` about every ``step``.

    The outermost nodes sit a hair inside the edges so that WCSs with an inclusive or exclusive
    bounding box both evaluate there.
    """
    count = max(int(math.ceil(length / step)), 1) + 1
    return np.linspace(-0.5 + 1e-6, length - 0.5 - 1e-6, count)


def _node_intervals(length: int, nodes: np.ndarray) -> np.ndarray:
    """Index of the node interval holding each pixel centre ``0 .. length - 1``."""
    centres = np.arange(length, dtype=np.float64)
    return np.clip(np.searchsorted(nodes, centres, side="right") - 1, 0, nodes.size - 2)


def _interpolate_rows(grid: np.ndarray, nodes: np.ndarray, length: int) -> np.ndarray:
    """Each row of a node grid interpolated linearly to the pixel centres ``0 .. length - 1``.

    Computed in float64 and rounded to float32. (A float32 matrix product with a sparse
    interpolation matrix did this before: BLAS ran it in two threads, some 50 times slower, and
    much slower still when the other core was busy.)
    """
    centres = np.arange(length, dtype=np.float64)
    interval = _node_intervals(length, nodes)
    fraction = (centres - nodes[interval]) / (nodes[interval + 1] - nodes[interval])
    interpolated = grid[:, interval] * (1.0 - fraction) + grid[:, interval + 1] * fraction
    return interpolated.astype(np.float32)


def _border(grid: np.ndarray) -> np.ndarray:
    """Border of a node grid (ny, nx) as a closed ring (last vertex not repeated)."""
    return np.concatenate([grid[0, :], grid[1:, -1], grid[-1, -2::-1], grid[-2:0:-1, 0]])


def _row_crossings(poly_u: np.ndarray, poly_v: np.ndarray, row_centres: np.ndarray):
    """Sorted x of the crossings of each horizontal line with a closed polygon (+inf padded).

    An edge crosses the line ``v = y`` when ``min(v0, v1) <= y < max(v0, v1)``; the half-open
    rule gives an even number of crossings per line and makes the scan fill and the point test
    of :meth:`SkyCoverage` agree exactly.
    """
    u0, v0 = poly_u[None, :], poly_v[None, :]
    u1, v1 = np.roll(poly_u, -1)[None, :], np.roll(poly_v, -1)[None, :]
    y = np.asarray(row_centres, dtype=np.float64)[:, None]
    crosses = (y >= np.minimum(v0, v1)) & (y < np.maximum(v0, v1))
    height = np.where(v1 != v0, v1 - v0, 1.0)
    x = np.where(crosses, u0 + (y - v0) * (u1 - u0) / height, np.inf)
    x.sort(axis=1)
    width = int(crosses.sum(axis=1).max(initial=0))
    width += width % 2
    return x[:, : max(width, 2)]


class SkyCoverage:
    """Which exposures cover each part of the sky, on a grid in one tangent plane.

    Built by :func:`sky_coverage`. ``region_covers[r, e]`` tells whether exposure ``e`` covers
    region ``r``; :meth:`pixel_labels` gives the region of every pixel of a chip.
    """

    def __init__(self, chips, exposure_ids, owner, grid_step, max_grid_cells):
        self.exposure_ids = exposure_ids
        self.owner = owner
        self.grid_step = int(grid_step)
        self._shapes = [chip.shape for chip in chips]
        self._change_table = None
        self._nodes_x, self._nodes_y, self._grids = [], [], []
        vectors = []
        for index, chip in enumerate(chips):
            ny, nx = chip.shape
            nodes_x = _node_positions(nx, self.grid_step)
            nodes_y = _node_positions(ny, self.grid_step)
            grid_x, grid_y = np.meshgrid(nodes_x, nodes_y)
            try:
                world = chip.wcs.pixel_to_world_values(grid_x, grid_y)
            except Exception as error:  # any WCS failure means we cannot match
                raise SkyMatchError(
                    f"{chip.label(index)}: cannot evaluate the WCS for its footprint ({error})"
                ) from error
            lon, lat = (np.asarray(w, dtype=np.float64) for w in world[:2])
            if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
                raise SkyMatchError(
                    f"{chip.label(index)}: the WCS gives non-finite sky coordinates inside the chip"
                )
            self._nodes_x.append(nodes_x)
            self._nodes_y.append(nodes_y)
            vectors.append(_unit_vectors(lon, lat))
        self._project(vectors)
        self._choose_grid(max_grid_cells)
        self._rasterise()

    # -- geometry -------------------------------------------------------------------------------

    def _project(self, vectors) -> None:
        centre = sum(v.reshape(-1, 3).sum(axis=0) for v in vectors)
        centre = centre / np.linalg.norm(centre)
        lon0 = math.atan2(centre[1], centre[0])
        lat0 = math.asin(max(-1.0, min(1.0, centre[2])))
        east = np.array([-math.sin(lon0), math.cos(lon0), 0.0])
        north = np.array(
            [-math.sin(lat0) * math.cos(lon0), -math.sin(lat0) * math.sin(lon0), math.cos(lat0)]
        )
        arcsec = 180.0 / math.pi * 3600.0
        self._planes = []
        for vector in vectors:
            cosine = vector @ centre
            if np.any(cosine < _MIN_COS_FROM_CENTRE):
                raise SkyMatchError(
                    "the exposures span too much of the sky for one tangent plane (> ~78 degrees "
                    "from their mean pointing)"
                )
            self._planes.append(
                ((vector @ east) / cosine * arcsec, (vector @ north) / cosine * arcsec)
            )

    def _choose_grid(self, max_grid_cells: int) -> None:
        scales = []
        for (xi, eta), (ny, nx) in zip(self._planes, self._shapes):
            ring_x, ring_y = _border(xi), _border(eta)
            area = 0.5 * abs(
                np.dot(ring_x, np.roll(ring_y, -1)) - np.dot(ring_y, np.roll(ring_x, -1))
            )
            scales.append(math.sqrt(area / (nx * ny)))
        cell = min(scales)
        if not cell > 0:
            raise SkyMatchError("a chip footprint has zero area on the sky; check its WCS")
        xi_min = min(p[0].min() for p in self._planes)
        xi_max = max(p[0].max() for p in self._planes)
        eta_min = min(p[1].min() for p in self._planes)
        eta_max = max(p[1].max() for p in self._planes)
        while True:
            ncols = int(math.ceil((xi_max - xi_min) / cell)) + 3
            nrows = int(math.ceil((eta_max - eta_min) / cell)) + 3
            if ncols * nrows <= max_grid_cells:
                break
            cell *= math.sqrt(ncols * nrows / max_grid_cells) * 1.001
        self.cell_arcsec = cell
        self.grid_shape = (nrows, ncols)
        # one empty cell of margin on each side
        self._origin = (xi_min - cell, eta_min - cell)

    def _cell_coordinates(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        xi, eta = self._planes[index]
        return (xi - self._origin[0]) / self.cell_arcsec, (eta - self._origin[1]) / self.cell_arcsec

    def _rasterise(self) -> None:
        nrows, ncols = self.grid_shape
        generator = np.random.default_rng(0x5C1A7C4)  # fixed tags: reproducible labels
        tags = generator.integers(1, np.iinfo(np.uint64).max, len(self.exposure_ids), np.uint64)
        difference = np.zeros((nrows, ncols + 1), dtype=np.uint64)
        self._polygons = []
        for index in range(len(self._shapes)):
            grid_u, grid_v = self._cell_coordinates(index)
            poly_u, poly_v = _border(grid_u), _border(grid_v)
            self._polygons.append((poly_u, poly_v))
            first = max(int(math.floor(poly_v.min())), 0)
            last = min(int(math.ceil(poly_v.max())), nrows - 1)
            rows = np.arange(first, last + 1)
            crossings = _row_crossings(poly_u, poly_v, rows + 0.5)
            start = np.clip(np.ceil(crossings[:, 0::2] - 0.5), 0, ncols)
            stop = np.clip(np.ceil(crossings[:, 1::2] - 0.5), 0, ncols)
            filled = stop > start
            row_index = np.broadcast_to(rows[:, None], start.shape)[filled]
            tag = tags[self.owner[index]]
            np.add.at(difference, (row_index, start[filled].astype(np.int64)), tag)
            np.add.at(
                difference,
                (row_index, stop[filled].astype(np.int64)),
                np.uint64((1 << 64) - int(tag)),
            )
        signature = np.cumsum(difference, axis=1, dtype=np.uint64)[:, :ncols]
        del difference
        signature = signature.ravel()
        # Distinct signatures are few and cells come in long runs along rows: find the distinct
        # values among the run starts, label whole runs and expand them (a np.unique or binary
        # search over millions of cells took most of this method's time).
        run_starts = np.concatenate(([0], np.flatnonzero(signature[1:] != signature[:-1]) + 1))
        distinct, run_labels = np.unique(signature[run_starts], return_inverse=True)
        run_lengths = np.diff(np.append(run_starts, signature.size))
        self.label_grid = np.repeat(run_labels.astype(np.int32), run_lengths).reshape(nrows, ncols)
        representative = np.empty(distinct.size, dtype=np.int64)
        representative[run_labels] = run_starts  # any cell of each region will do
        rep_rows, rep_cols = np.divmod(representative, ncols)
        # decode each region's set of exposures from one representative cell
        self.region_covers = np.zeros((distinct.size, len(self.exposure_ids)), dtype=bool)
        for index, (poly_u, poly_v) in enumerate(self._polygons):
            crossings = _row_crossings(poly_u, poly_v, rep_rows + 0.5)
            inside = (crossings <= (rep_cols + 0.5)[:, None]).sum(axis=1) % 2 == 1
            self.region_covers[:, self.owner[index]] |= inside

    # -- queries --------------------------------------------------------------------------------

    @property
    def nregions(self) -> int:
        """Number of distinct regions (sets of covering exposures) on the grid."""
        return self.region_covers.shape[0]

    def _label_change_table(self) -> np.ndarray:
        """Summed-area table (one row and column of zeros in front) of the grid cells whose
        label differs from that of their right or lower neighbour."""
        if self._change_table is None:
            grid = self.label_grid
            change = np.zeros(grid.shape, dtype=bool)
            np.not_equal(grid[:, 1:], grid[:, :-1], out=change[:, :-1])
            change[:-1, :] |= grid[1:, :] != grid[:-1, :]
            counter = np.int32 if grid.size < 2**31 else np.int64
            table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), dtype=counter)
            np.cumsum(change, axis=0, dtype=counter, out=table[1:, 1:])
            np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
            self._change_table = table
        return self._change_table

    def _uniform_blocks(self, grid_u: np.ndarray, grid_v: np.ndarray):
        """Label of every node-grid block of a chip whose cells all carry one label, else -1.

        A pixel inside a block interpolates its cell position bilinearly from the block's four
        corner nodes, so it lies in their bounding box (widened by a margin for float32 rounding);
        when no two neighbouring cells in that box differ, every pixel of the block gets that
        box's label, which is exactly what the per-pixel computation would give.
        """
        nrows, ncols = self.grid_shape
        corners_u = np.stack([grid_u[:-1, :-1], grid_u[:-1, 1:], grid_u[1:, :-1], grid_u[1:, 1:]])
        corners_v = np.stack([grid_v[:-1, :-1], grid_v[:-1, 1:], grid_v[1:, :-1], grid_v[1:, 1:]])
        margin = 1e-2 + 1e-6 * max(np.abs(grid_u).max(), np.abs(grid_v).max())
        col_lo = np.clip(np.floor(corners_u.min(axis=0) - margin), 0, ncols - 1).astype(np.int64)
        col_hi = np.clip(np.floor(corners_u.max(axis=0) + margin), 0, ncols - 1).astype(np.int64)
        row_lo = np.clip(np.floor(corners_v.min(axis=0) - margin), 0, nrows - 1).astype(np.int64)
        row_hi = np.clip(np.floor(corners_v.max(axis=0) + margin), 0, nrows - 1).astype(np.int64)
        table = self._label_change_table()
        changes = (
            table[row_hi + 1, col_hi + 1]
            - table[row_lo, col_hi + 1]
            - table[row_hi + 1, col_lo]
            + table[row_lo, col_lo]
        )
        return np.where(changes == 0, self.label_grid[row_lo, col_lo], -1)

    def _label_bands(self, index: int):
        """Labels of chip ``index``, one band of pixel rows (between two node rows) at a time.

        Yields ``(first, last, column_labels, columns, pixel_labels)``: rows ``first:last`` have
        label ``column_labels[x]`` in every column ``x`` whose block lies inside one region,
        -1 elsewhere; the remaining ``columns`` (block straddling a region boundary) have the
        per-pixel ``pixel_labels`` (rows x columns, int32), or None when there are none.

        The pixel positions on the grid come from a bilinear interpolation of the node grid,
        done separably: along x once for every node row, then along y for the pixel rows
        between two node rows, only where a block straddles a region boundary.
        """
        ny, nx = self._shapes[index]
        grid_u, grid_v = self._cell_coordinates(index)
        block_labels = self._uniform_blocks(grid_u, grid_v)
        nodes_x = self._nodes_x[index]
        column_block = _node_intervals(nx, nodes_x)
        u_rows = _interpolate_rows(grid_u, nodes_x, nx)
        v_rows = _interpolate_rows(grid_v, nodes_x, nx)
        nodes_y = self._nodes_y[index]
        centres = np.arange(ny, dtype=np.float64)
        nrows, ncols = self.grid_shape
        flat_grid = self.label_grid.ravel()
        for node in range(nodes_y.size - 1):
            first = max(int(math.ceil(nodes_y[node])), 0)
            last = ny if node == nodes_y.size - 2 else int(math.ceil(nodes_y[node + 1]))
            if last <= first:
                continue
            column_labels = block_labels[node][column_block]
            columns = np.flatnonzero(column_labels < 0)
            if columns.size == 0:
                yield first, last, column_labels, columns, None
                continue
            step = nodes_y[node + 1] - nodes_y[node]
            t = ((centres[first:last] - nodes_y[node]) / step).astype(np.float32)[:, None]
            u_top, v_top = u_rows[node, columns], v_rows[node, columns]
            u = u_top + t * (u_rows[node + 1, columns] - u_top)
            v = v_top + t * (v_rows[node + 1, columns] - v_top)
            # cell indices; the grid has a margin of empty cells, the limits are only a guard
            np.clip(u, 0, ncols - 1, out=u)
            np.clip(v, 0, nrows - 1, out=v)
            cell = v.astype(np.int32)
            cell *= np.int32(ncols)
            cell += u.astype(np.int32)
            yield first, last, column_labels, columns, np.take(flat_grid, cell)

    def pixel_labels(self, index: int) -> np.ndarray:
        """Region label (int32) of every pixel of chip ``index``, shape of the chip."""
        labels = np.empty(self._shapes[index], dtype=np.int32)
        for first, last, column_labels, columns, pixel_labels in self._label_bands(index):
            labels[first:last] = column_labels
            if pixel_labels is not None:
                labels[first:last, columns] = pixel_labels
        return labels

    def group_pixels(self, index: int, arrays) -> tuple[list, np.ndarray, np.ndarray]:
        """Chip ``index``'s pixels grouped by region, without a per-pixel label image.

        Parameters
        ----------
        index : int
            Chip index.
        arrays : sequence of numpy.ndarray
            Arrays of the chip's shape (data, mask, ...).

        Returns
        -------
        grouped, labels, sizes
            For each input array a new 1-D array holding the pixels of region ``labels[0]``
            first (``sizes[0]`` of them), then ``labels[1]``, ... (labels ascending); the
            grouping of :meth:`pixel_labels`, in another order inside each region.
        """
        # Pieces of the chip lying in one region: whole rectangles (runs of columns of blocks
        # inside one region, times the rows of a band), and the pixels of blocks straddling
        # region boundaries, gathered from all bands and grouped by a stable sort of their labels.
        rectangles, bands = [], []
        for first, last, column_labels, columns, pixel_labels in self._label_bands(index):
            edges = np.flatnonzero(np.diff(column_labels)) + 1
            run_starts = np.concatenate(([0], edges))
            run_stops = np.concatenate((edges, [column_labels.size]))
            run_labels = column_labels[run_starts]
            for start, stop, label in zip(
                run_starts.tolist(), run_stops.tolist(), run_labels.tolist()
            ):
                if label >= 0:
                    rectangles.append(
                        (label, (last - first) * (stop - start), first, last, start, stop)
                    )
            if pixel_labels is not None:
                bands.append((first, last, columns, pixel_labels.ravel()))
        scattered_labels = np.concatenate([band[3] for band in bands] + [np.zeros(0, np.int32)])
        # numpy's stable sort is a radix sort for 16-bit keys
        sort_key = (
            scattered_labels.astype(np.uint16) if self.nregions <= 1 << 16 else scattered_labels
        )
        scattered_order = np.argsort(sort_key, kind="stable")
        scattered_counts = np.bincount(scattered_labels, minlength=self.nregions)
        scattered_present = np.flatnonzero(scattered_counts)
        scattered_sizes = scattered_counts[scattered_present]
        # one piece per rectangle and one per label among the scattered pixels
        piece_labels = np.array(
            [piece[0] for piece in rectangles] + scattered_present.tolist(), dtype=np.int64
        )
        piece_sizes = np.array(
            [piece[1] for piece in rectangles] + scattered_sizes.tolist(), dtype=np.int64
        )
        labels, piece_codes = np.unique(piece_labels, return_inverse=True)
        sizes = np.bincount(piece_codes, weights=piece_sizes, minlength=labels.size)
        sizes = sizes.astype(np.int64)
        # every piece goes after the earlier pieces of its region
        order = np.argsort(piece_codes, kind="stable")
        offsets = np.empty(piece_sizes.size, dtype=np.int64)
        offsets[order] = np.cumsum(piece_sizes[order]) - piece_sizes[order]
        rectangle_offsets = offsets[: len(rectangles)].tolist()
        scattered_pieces = list(
            zip(
                offsets[len(rectangles) :].tolist(),
                (np.cumsum(scattered_sizes) - scattered_sizes).tolist(),
                scattered_sizes.tolist(),
            )
        )
        grouped = []
        for array in arrays:
            out = np.empty(int(sizes.sum()), dtype=array.dtype)
            for (_, size, first, last, start, stop), offset in zip(rectangles, rectangle_offsets):
                piece = out[offset : offset + size].reshape(last - first, stop - start)
                piece[...] = array[first:last, start:stop]
            if bands:
                gathered = np.concatenate(
                    [array[first:last, columns].ravel() for first, last, columns, _ in bands]
                )[scattered_order]
                for offset, start, size in scattered_pieces:
                    out[offset : offset + size] = gathered[start : start + size]
            grouped.append(out)
        return grouped, labels, sizes

    def overlapping_exposures(self) -> np.ndarray:
        """Boolean (E, E) matrix: exposures whose footprints share at least one grid cell."""
        covers = self.region_covers.astype(np.int64)
        return (covers.T @ covers) > 0


def sky_coverage(
    chips: Sequence[SkyChip],
    *,
    grid_step: int = DEFAULT_GRID_STEP,
    max_grid_cells: int = DEFAULT_MAX_GRID_CELLS,
) -> SkyCoverage:
    """Find which exposures cover which part of the sky (see module docstring).

    Parameters
    ----------
    chips : sequence of SkyChip
        Only ``wcs``, ``exposure_id`` and the data shape are used.
    grid_step : int
        Spacing in pixels of the nodes where each chip's WCS is evaluated.
    max_grid_cells : int
        Upper limit of the shared grid size; the cell grows beyond the finest pixel scale for
        very large fields.

    Returns
    -------
    SkyCoverage
    """
    if grid_step < 1:
        raise ValueError(f"grid_step must be a positive number of pixels, got {grid_step!r}")
    if max_grid_cells < 16:
        raise ValueError(f"max_grid_cells is too small: {max_grid_cells!r}")
    chips = list(chips)
    ids, owner = _exposure_index(chips)
    return SkyCoverage(chips, ids, owner, grid_step, max_grid_cells)


# ----------------------------------------------------------------------------------------------
# match


def _invalid_pixels(chip: SkyChip, statistic: SkyStatistic) -> np.ndarray:
    """True where a pixel cannot be used: masked, not finite, or outside ``lower``/``upper``."""
    data = np.asarray(chip.data)
    invalid = np.isfinite(data)
    np.logical_not(invalid, out=invalid)
    if chip.mask is not None:
        invalid |= np.asarray(chip.mask, dtype=bool)
    if statistic.lower is not None:
        invalid |= data < np.float32(statistic.lower)
    if statistic.upper is not None:
        invalid |= data > np.float32(statistic.upper)
    return invalid


def _measure_exposure(exposure: int, chips, coverage: SkyCoverage, statistic: SkyStatistic):
    """Statistic of each chip of ``exposure`` and of the exposure inside its overlap with every
    other one (brightness units): ``({chip index: value}, {other exposure: (value, npix)})``.

    The exposure's chips are labelled and sorted once, then every overlap is a union of
    regions; memory holds this exposure's chips' samples only.
    """
    chip_values, overlaps, samples = {}, {}, []
    for index in np.nonzero(coverage.owner == exposure)[0]:
        chip = chips[index]
        invalid = _invalid_pixels(chip, statistic)
        if invalid.all():
            continue
        (values, excluded), labels, sizes = coverage.group_pixels(
            index, [np.asarray(chip.data), invalid]
        )
        del invalid
        # statistics in brightness units: values times the factor, rounded to float32
        sample = LabelledSample.from_groups(
            values, labels, sizes, excluded, scale=chip.brightness_factor
        )
        del values, excluded
        value, count = statistic.measure_union([(sample, sample.region_labels)])
        if count:
            chip_values[int(index)] = value
        samples.append(sample)
    if not samples:
        return chip_values, overlaps
    present = np.unique(np.concatenate([s.region_labels for s in samples]))
    partners = coverage.region_covers[present].any(axis=0)
    partners[exposure] = False
    for other in np.nonzero(partners)[0]:
        parts = [
            (s, s.region_labels[coverage.region_covers[s.region_labels, other]]) for s in samples
        ]
        value, count = statistic.measure_union(parts)
        if count:
            overlaps[int(other)] = (value, count)
    return chip_values, overlaps


def _measure_overlaps(chips, coverage: SkyCoverage, statistic: SkyStatistic, map_=map):
    """:func:`_measure_exposure` of every exposure, run by ``map_``, gathered into the (E, E)
    ``levels`` and ``npix`` of the overlaps and the chips' own brightness. Memory holds the
    samples of as many exposures as ``map_`` measures at once."""
    nexp = len(coverage.exposure_ids)
    levels = np.full((nexp, nexp), np.nan)
    npix = np.zeros((nexp, nexp))
    chip_brightness = np.full(len(chips), np.nan)
    measure = functools.partial(
        _measure_exposure, chips=chips, coverage=coverage, statistic=statistic
    )
    coverage._label_change_table()  # built once here, not by several threads at once
    for exposure, (chip_values, overlaps) in enumerate(map_(measure, range(nexp))):
        for index, value in chip_values.items():
            chip_brightness[index] = value
        for other, (value, count) in overlaps.items():
            levels[exposure, other] = value
            npix[exposure, other] = count
    return levels, npix, chip_brightness


def _connected_groups(linked: np.ndarray, members: np.ndarray) -> list[list[int]]:
    """Connected components (lists of indices) among ``members`` of a symmetric link matrix."""
    groups, seen = [], set()
    for start in members:
        if start in seen:
            continue
        group, frontier = [], [start]
        seen.add(start)
        while frontier:
            node = frontier.pop()
            group.append(int(node))
            for neighbour in np.nonzero(linked[node])[0]:
                if neighbour not in seen:
                    seen.add(neighbour)
                    frontier.append(neighbour)
        groups.append(sorted(group))
    return groups


def _solve_offsets(levels: np.ndarray, npix: np.ndarray, group: list[int]) -> np.ndarray:
    """skypac's weighted equations for one connected group; lowest offset set to zero."""
    weights = 0.5 * (npix + npix.T)
    rows, rhs = [], []
    position = {e: k for k, e in enumerate(group)}
    for a, i in enumerate(group):
        for j in group[a + 1 :]:
            if npix[i, j] > 0 and npix[j, i] > 0:
                row = np.zeros(len(group))
                row[position[i]] = weights[i, j]
                row[position[j]] = -weights[i, j]
                rows.append(row)
                rhs.append(weights[i, j] * (levels[i, j] - levels[j, i]))
    design = np.array(rows)
    offsets = np.linalg.pinv(design, rcond=1.0e-12) @ np.array(rhs)
    if not np.all(np.isfinite(offsets)):
        raise SkyMatchError("the sky matching equations have no finite solution")
    return offsets - offsets.min()


def _match(
    chips, statistic, grid_step, max_grid_cells, add_global_minimum: bool, map_=map
) -> SkyResult:
    chips = _validate_chips(chips)
    statistic = statistic or SkyStatistic()
    coverage = sky_coverage(chips, grid_step=grid_step, max_grid_cells=max_grid_cells)
    ids, owner = coverage.exposure_ids, coverage.owner
    levels, npix, chip_brightness = _measure_overlaps(chips, coverage, statistic, map_)
    own = _exposure_minimum(chip_brightness, owner, len(ids))
    with_data = np.nonzero(np.isfinite(own))[0]
    if with_data.size < 2:
        raise SkyMatchError(
            f"sky matching needs at least two exposures with valid pixels, found {with_data.size}"
        )
    linked = (npix > 0) & (npix.T > 0) & np.isfinite(levels) & np.isfinite(levels.T)
    groups = _connected_groups(linked, with_data)
    offsets = np.full(len(ids), np.nan)
    for group in groups:
        if len(group) == 1:
            offsets[group[0]] = own[group[0]]  # overlaps nothing: keep its own statistic
            continue
        offsets[group] = _solve_offsets(levels, npix, group)
        if add_global_minimum:
            in_group = np.isin(owner, group) & np.isfinite(chip_brightness)
            offsets[group] += np.min(chip_brightness[in_group] - offsets[owner[in_group]])
    method = "globalmin+match" if add_global_minimum else "match"
    return _result(
        method,
        chips,
        ids,
        owner,
        offsets,
        chip_brightness,
        unmatched_exposures=tuple(ids[g[0]] for g in groups if len(g) == 1),
        match_groups=tuple(tuple(ids[e] for e in g) for g in groups if len(g) > 1),
        overlap_npix=npix,
    )


def match_sky(
    chips: Sequence[SkyChip],
    statistic: SkyStatistic | None = None,
    *,
    grid_step: int = DEFAULT_GRID_STEP,
    max_grid_cells: int = DEFAULT_MAX_GRID_CELLS,
    map_=map,
) -> SkyResult:
    """Relative sky offsets that make overlapping exposures agree (lowest = 0 per linked set).

    Parameters
    ----------
    chips : sequence of SkyChip
        All chips of all exposures.
    statistic : SkyStatistic, optional
        How to measure sky inside overlaps.
    grid_step, max_grid_cells : int
        See :func:`sky_coverage`.
    map_ : callable, optional
        ``map``-like function that measures the exposures (default: the built-in, one after the
        other; a thread pool's ``map`` measures several at once, holding their samples).

    Returns
    -------
    SkyResult
        With ``unmatched_exposures`` (own statistic kept) and ``match_groups`` filled.

    Raises
    ------
    SkyMatchError
        Fewer than two exposures with valid pixels, WCS failure, or no finite solution.
    """
    return _match(chips, statistic, grid_step, max_grid_cells, add_global_minimum=False, map_=map_)


def globalmin_match_sky(
    chips: Sequence[SkyChip],
    statistic: SkyStatistic | None = None,
    *,
    grid_step: int = DEFAULT_GRID_STEP,
    max_grid_cells: int = DEFAULT_MAX_GRID_CELLS,
    map_=map,
) -> SkyResult:
    """Matched offsets raised by each linked set's minimum of ``B_k - offset``.

    Parameters
    ----------
    chips : sequence of SkyChip
        All chips of all exposures.
    statistic : SkyStatistic, optional
        How to measure sky.
    grid_step, max_grid_cells, map_
        See :func:`match_sky`.

    Returns
    -------
    SkyResult

    Raises
    ------
    SkyMatchError
        As :func:`match_sky`.
    """
    return _match(chips, statistic, grid_step, max_grid_cells, add_global_minimum=True, map_=map_)


def compute_sky(
    chips: Sequence[SkyChip],
    method: str = "localmin",
    statistic: SkyStatistic | None = None,
    *,
    user_values: Sequence[float] | None = None,
    grid_step: int = DEFAULT_GRID_STEP,
    max_grid_cells: int = DEFAULT_MAX_GRID_CELLS,
    map_=map,
) -> SkyResult:
    """Sky of every chip with one of :data:`SKY_METHODS`.

    Parameters
    ----------
    chips : sequence of SkyChip
        All chips of all exposures.
    method : str
        ``localmin``, ``globalmin``, ``match``, ``globalmin+match`` or ``user``.
    statistic : SkyStatistic, optional
        How to measure sky (not used by ``user``).
    user_values : sequence of float, optional
        Per-chip sky in data units, required by ``user``.
    grid_step, max_grid_cells : int
        Overlap grid parameters of the ``match`` methods, see :func:`sky_coverage`.
    map_ : callable, optional
        ``map``-like function that measures chips (``localmin``, ``globalmin``) or exposures
        (``match`` methods); e.g. a thread pool's. Results do not depend on it.

    Returns
    -------
    SkyResult

    Raises
    ------
    SkyMatchError
        From the ``match`` methods when matching cannot be solved; the caller falls back to
        ``localmin`` (for ``match``) or ``globalmin`` (for ``globalmin+match``).
    """
    if method not in SKY_METHODS:
        raise ValueError(f"sky method {method!r} is not one of {', '.join(SKY_METHODS)}")
    if method == "user":
        if user_values is None:
            raise ValueError("sky method 'user' needs user_values (one per chip)")
        return user_sky(chips, user_values)
    if method == "localmin":
        return localmin_sky(chips, statistic, map_=map_)
    if method == "globalmin":
        return globalmin_sky(chips, statistic, map_=map_)
    grid = {"grid_step": grid_step, "max_grid_cells": max_grid_cells, "map_": map_}
    if method == "match":
        return match_sky(chips, statistic, **grid)
    return globalmin_match_sky(chips, statistic, **grid)


#: Exposures whose sky brightness differs by more than this factor are worth a warning: skies of
#: dithered exposures of one target differ by tens of percent (Earthshine, zodiacal light).
SKY_SPREAD_FACTOR = 5.0


def sky_spread(result: SkyResult, factor: float = SKY_SPREAD_FACTOR):
    """Whether the exposures' skies differ wildly: ``(how, which)`` strings, or None.

    Parameters
    ----------
    result : SkyResult
        A result of a method that measures each exposure's absolute level (``localmin``,
        ``globalmin+match``); others (``globalmin`` gives every exposure one level, ``match``
        only relative ones) give None.
    factor : float
        Brightest over faintest positive sky beyond which they differ wildly; a negative sky
        beside a positive one always does.

    Returns
    -------
    tuple of str or None
        ``("a factor of 6.2", "a: 1.1e-3, b: 6.8e-3")`` (the faintest and brightest exposure,
        sky brightness per arcsec^2 [per s]) or ``("sign", ...)``.
    """
    if result.method not in ("localmin", "globalmin+match"):
        return None
    skies = {k: v for k, v in result.exposure_sky.items() if math.isfinite(v)}
    if len(skies) < 2:
        return None
    faintest = min(skies, key=skies.get)
    brightest = max(skies, key=skies.get)
    low, high = skies[faintest], skies[brightest]
    if low > 0 and high > factor * low:
        how = f"a factor of {high / low:.1f}"
    elif low < 0 < high:
        how = "sign"
    else:
        return None
    return how, f"{faintest}: {low:.3g}, {brightest}: {high:.3g}"
