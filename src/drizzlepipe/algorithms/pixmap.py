"""Pixel maps: where every pixel centre of a chip lands on another pixel grid.

A pixel map (``pixmap``) is the array drizzle's kernels and blot take: for a chip of shape
``(ny, nx)`` it has shape ``(ny, nx, 2)``, and ``pixmap[j, i] = (x, y)`` is the 0-based position
on the *other* grid of the centre of chip pixel ``(i, j)``. The same array serves both
directions of the resampling:

* drizzle (chip -> product) takes the map of chip pixels onto the output grid;
* blot (product -> chip) takes the map of chip pixels onto the product grid, which is the
  *same* array when the product lives on that grid.

So the map of a chip onto a grid is computed once and reused by DrizSeparate, blot and (when the
grids coincide) DrizFinal.

Evaluating a WCS at every pixel dominates the cost of drizzling (several times a square-kernel
drizzle of the chip; timings in docs/developer/performance.md, *Timings behind the code*). With
``stepsize > 1`` the map is evaluated exactly on a grid of nodes every ``stepsize`` pixels
(always including the last row and column) and a bicubic spline (not-a-knot) through those nodes
fills in the rest, as AstroDrizzle's ``stepsize`` (which interpolates bilinearly) and JWST's
``pixmap_stepsize``/``pixmap_order``.

Accuracy kept by ``stepsize`` (``bench/resample_kernels.py`` on a real WFC3/UVIS 4096 x 2051
TAN-SIP (order 4) chip onto its 4125 x 2323 default grid; maximum error over all pixels against
the exact map; the time of each is in docs/developer/performance.md, *Timings behind the code*):

==========  ===============
 stepsize    max error (px)
==========  ===============
  1          0 (exact)
  10         9e-9
  25         1.1e-8
  50         1.0e-7
==========  ===============

The cubic spline is that accurate because a SIP polynomial composed with two tangent-plane
projections is smooth on the scale of the node spacing; AstroDrizzle's bilinear interpolation
at ``stepsize=10`` errs by 8e-5 px on the same chip (still negligible). The default here is
``stepsize=1`` (exact); pass 10 for production speed.

Where the WCS is undefined (NaN, e.g. outside a gwcs bounding box) at any node, interpolation
would smear the NaNs, so the map is then evaluated exactly at every pixel and input pixels with
no position keep NaN (drizzle skips them, blot fills them).

Thread safety: nothing here modifies the WCS objects (``drizzle.utils.calc_pixmap`` switches the
output gwcs's bounding box off and on again around the evaluation, a race when threads share the
grid), so sharing a grid WCS between threads is as safe as the WCS library's own evaluation.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS, NoConvergence
from scipy.interpolate import BSpline, make_interp_spline

__all__ = [
    "PixmapRows",
    "chip_rows_on_grid",
    "compute_pixmap",
    "pixmap_extent",
    "pixmap_input_pixel_size",
    "pixmap_outline_extent",
]

# Rows evaluated per block in the exact evaluation, so that temporaries stay ~100 MB whatever
# the chip size (the WCS evaluation allocates several float64 arrays per point).
_EXACT_BLOCK_PIXELS = 2**20
_SPLINE_ORDER = 3


def _is_gwcs(wcs) -> bool:
    return hasattr(wcs, "forward_transform") and hasattr(wcs, "invert")


def _strip_units(values):
    return np.asarray(getattr(values, "value", values), dtype=float)


def _check_axis_order(in_wcs, out_wcs) -> None:
    """Pixel maps pass world values positionally, so (lon, lat) order must agree."""
    if isinstance(in_wcs, WCS) and isinstance(out_wcs, WCS):
        if in_wcs.wcs.lng != out_wcs.wcs.lng or in_wcs.wcs.lat != out_wcs.wcs.lat:
            raise ValueError(
                "the two WCS list longitude and latitude in different axis orders "
                f"(lng axis {in_wcs.wcs.lng} vs {out_wcs.wcs.lng})"
            )


def _world_to_pixel(wcs, lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel position of world values, *ignoring* any bounding box of ``wcs``.

    Input pixels that fall just outside an output gwcs's bounding box must still get positions:
    their drops may partly overlap the grid.
    """
    if _is_gwcs(wcs):
        x, y = wcs.invert(lon, lat, with_bounding_box=False)
        return _strip_units(x), _strip_units(y)
    try:
        x, y = wcs.world_to_pixel_values(lon, lat)
    except NoConvergence as exc:  # iterative inverse of a distorted astropy WCS
        solution = np.array(exc.best_solution, dtype=float)
        if exc.divergent is not None:
            solution[exc.divergent] = np.nan
        x, y = solution[:, 0].reshape(np.shape(lon)), solution[:, 1].reshape(np.shape(lon))
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def _map_points(in_wcs, out_wcs, x, y) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = in_wcs.pixel_to_world_values(x, y)
    return _world_to_pixel(out_wcs, _strip_units(lon), _strip_units(lat))


def _exact_rows(in_wcs, nx, out_wcs, first, last, out) -> None:
    """Map rows ``first .. last - 1`` exactly into ``out`` (``(last - first, nx, 2)``)."""
    rows_per_block = max(1, _EXACT_BLOCK_PIXELS // nx)
    x_row = np.arange(nx, dtype=np.float64)
    for start in range(first, last, rows_per_block):
        stop = min(last, start + rows_per_block)
        y, x = np.meshgrid(np.arange(start, stop, dtype=np.float64), x_row, indexing="ij")
        out_x, out_y = _map_points(in_wcs, out_wcs, x, y)
        out[start - first : stop - first, :, 0] = out_x
        out[start - first : stop - first, :, 1] = out_y


def _node_positions(n: int, stepsize: int) -> np.ndarray:
    nodes = np.arange(0, n, stepsize, dtype=np.float64)
    if nodes[-1] != n - 1:
        nodes = np.append(nodes, n - 1)
    return nodes


class _RowSpline:
    """The bicubic interpolating spline through ``values`` (nodes ``y_nodes`` x ``x_nodes``),
    evaluated a band of rows at a time.

    The tensor-product spline is ``Dy @ C @ Dx.T`` with sparse B-spline design matrices ``Dy``
    (ny x ncy) and ``Dx`` (nx x ncx) and coefficients ``C``. ``T = (Dx @ C).T`` is small; each
    output row is then a combination of 4 consecutive rows of ``T``, and consecutive output rows
    between two knots share those 4 rows, so every knot interval is one small dense matmul.
    That is some 25 times faster than ``RectBivariateSpline`` on a UVIS chip.
    """

    def __init__(self, values, x_nodes, y_nodes, ny: int, nx: int):
        along_y = make_interp_spline(y_nodes, values, k=_SPLINE_ORDER, axis=0)
        both = make_interp_spline(x_nodes, along_y.c, k=_SPLINE_ORDER, axis=1)
        coefficients = both.c  # (ncx, ncy): B-spline coefficients, x first
        design_x = BSpline.design_matrix(np.arange(nx, dtype=np.float64), both.t, _SPLINE_ORDER)
        design_y = BSpline.design_matrix(
            np.arange(ny, dtype=np.float64), along_y.t, _SPLINE_ORDER
        ).tocsr()
        self._rows_t = np.ascontiguousarray((design_x @ coefficients).T)  # (ncy, nx)
        taps = _SPLINE_ORDER + 1
        counts = np.diff(design_y.indptr)
        indices = design_y.indices.reshape(ny, -1) if np.all(counts == taps) else None
        self._design_y = None
        if indices is None or not np.all(np.diff(indices, axis=1) == 1):
            self._design_y = design_y  # general sparse product; never needed for B-splines
            return
        self._weights = design_y.data.reshape(ny, taps)
        self._first = indices[:, 0]

    def columns(self, cols) -> np.ndarray:
        """The spline at every row of columns ``cols``: ``(ny, len(cols))``."""
        if self._design_y is not None:
            return self._design_y @ self._rows_t[:, cols]
        taps = np.arange(_SPLINE_ORDER + 1)
        nodes = self._rows_t[:, cols][self._first[:, None] + taps]  # (ny, taps, len(cols))
        return np.einsum("jk,jkc->jc", self._weights, nodes)

    def fill(self, first: int, last: int, out) -> None:
        """Evaluate rows ``first .. last - 1`` into ``out`` (``(last - first, nx)``)."""
        if self._design_y is not None:
            out[...] = self._design_y[first:last] @ self._rows_t
            return
        taps = _SPLINE_ORDER + 1
        knot = self._first[first:last]
        starts = np.flatnonzero(np.r_[True, knot[1:] != knot[:-1]])
        stops = np.r_[starts[1:], last - first]
        for start, stop in zip(starts, stops):
            j = knot[start]
            np.matmul(
                self._weights[first + start : first + stop],
                self._rows_t[j : j + taps],
                out=out[start:stop],
            )


class PixmapRows:
    """A chip's pixel map onto another grid, evaluated a band of rows at a time.

    Same arguments and values as :func:`compute_pixmap` (which is ``PixmapRows(...).rows(0,
    ny)``); the WCS is evaluated once, at construction, on the nodes every ``stepsize`` pixels,
    so that a chip can be processed in bands without holding its whole map (16 bytes a pixel).
    Bands are evaluated row by row from the same spline, so they agree with the whole map to
    rounding (measured 2e-13 px; BLAS may group the sums differently).

    Parameters
    ----------
    in_wcs, in_shape, out_wcs, stepsize
        As :func:`compute_pixmap`.
    origin : (float, float)
        Output pixel ``(x, y)`` that positions are given from: ``(0, r0)`` maps onto the band
        of the grid that starts at row ``r0`` (integer offsets keep the positions' fractions).
    """

    def __init__(self, in_wcs, in_shape, out_wcs, stepsize: int = 1, origin=(0.0, 0.0)):
        try:
            ny, nx = (int(n) for n in in_shape)
        except (TypeError, ValueError):
            raise ValueError(f"in_shape must be (ny, nx), got {in_shape!r}") from None
        if ny < 1 or nx < 1:
            raise ValueError(f"in_shape must be positive, got {in_shape!r}")
        if isinstance(stepsize, bool) or int(stepsize) != stepsize or stepsize < 1:
            raise ValueError(f"stepsize must be a positive integer, got {stepsize!r}")
        stepsize = int(stepsize)
        _check_axis_order(in_wcs, out_wcs)
        self.shape = (ny, nx)
        self._in_wcs, self._out_wcs = in_wcs, out_wcs
        self._origin = np.array([float(origin[0]), float(origin[1])])
        self._splines = None  # None: evaluate exactly

        x_nodes = _node_positions(nx, stepsize)
        y_nodes = _node_positions(ny, stepsize)
        if stepsize == 1 or x_nodes.size <= _SPLINE_ORDER or y_nodes.size <= _SPLINE_ORDER:
            return  # exact, or a chip too small for a cubic spline (then exact is cheap anyway)
        y_grid, x_grid = np.meshgrid(y_nodes, x_nodes, indexing="ij")
        node_x, node_y = _map_points(in_wcs, out_wcs, x_grid, y_grid)
        if not (np.all(np.isfinite(node_x)) and np.all(np.isfinite(node_y))):
            return  # undefined somewhere: interpolation would smear the NaN
        self._splines = [_RowSpline(node, x_nodes, y_nodes, ny, nx) for node in (node_x, node_y)]

    def rows(self, first: int, last: int, out=None) -> np.ndarray:
        """The map of chip rows ``first .. last - 1``: float64 ``(last - first, nx, 2)``.

        ``out``: an array of that shape (or larger along the rows) to fill and return instead of
        a new one, e.g. a buffer reused for every band of a chip.
        """
        ny, nx = self.shape
        if not 0 <= first < last <= ny:
            raise ValueError(f"rows {first}..{last} are not within the chip's {ny} rows")
        shape = (last - first, nx, 2)
        if out is None:
            out = np.empty(shape, dtype=np.float64)
        else:
            out = out[: last - first]
            if out.shape != shape or out.dtype != np.float64:
                raise ValueError(f"out must be float64 with shape {shape}, got {out.shape}")
        if self._splines is None:
            _exact_rows(self._in_wcs, nx, self._out_wcs, first, last, out)
        else:
            for axis, spline in enumerate(self._splines):
                spline.fill(first, last, out[..., axis])
        if self._origin.any():
            out -= self._origin
        return out

    def columns(self, cols) -> np.ndarray:
        """The map of chip columns ``cols`` (a sequence of indices), every row: float64
        ``(ny, len(cols), 2)``; the same values as :meth:`rows` gives there, to rounding."""
        ny, _ = self.shape
        cols = np.asarray(cols, dtype=np.intp)
        if self._splines is not None:
            positions = np.stack([spline.columns(cols) for spline in self._splines], axis=-1)
        else:
            y, x = np.meshgrid(
                np.arange(ny, dtype=np.float64), cols.astype(np.float64), indexing="ij"
            )
            positions = np.stack(_map_points(self._in_wcs, self._out_wcs, x, y), axis=-1)
        return positions - self._origin if self._origin.any() else positions

    def outline_extent(self) -> tuple[float, float, float, float] | None:
        """:func:`pixmap_outline_extent` of the whole map, from its two outer rows and columns
        on each side only; None when the chip is under 2 pixels on a side or its border has no
        position (then evaluate the whole map)."""
        ny, nx = self.shape
        if ny < 2 or nx < 2:
            return None
        sides = np.concatenate([self.rows(0, 2), self.rows(ny - 2, ny)])
        ends = self.columns([0, 1, nx - 2, nx - 1])
        if not (np.all(np.isfinite(sides)) and np.all(np.isfinite(ends))):
            return None
        return _outline_of_border(
            (sides[0], sides[1]), (sides[3], sides[2]), (ends[:, 0], ends[:, 1]),
            (ends[:, 3], ends[:, 2]),
        )  # fmt: skip

    def input_pixel_size(self) -> float:
        """:func:`pixmap_input_pixel_size` of the whole map, from the rows it samples."""
        ny, _ = self.shape
        return _pixel_size_at(lambda j: self.rows(j, min(j + 2, ny)), self.shape)


def chip_rows_on_grid(in_wcs, in_shape, out_wcs, step: int = 64):
    """The rows of another grid that a chip's outline spans: the lowest and highest output
    ``y`` (0-based pixel positions) of its border, pixel edges included, sampled every
    ``step`` input pixels (a distorted side bends far less than a pixel between samples).

    Returns
    -------
    tuple of float or None
        ``(y_min, y_max)``; None when the WCS is undefined somewhere on the border.
    """
    ny, nx = (int(n) for n in in_shape)
    xs = np.linspace(-0.5, nx - 0.5, nx // step + 2)
    ys = np.linspace(-0.5, ny - 0.5, ny // step + 2)
    x = np.concatenate([xs, xs, np.full(ys.size, -0.5), np.full(ys.size, nx - 0.5)])
    y = np.concatenate([np.full(xs.size, -0.5), np.full(xs.size, ny - 0.5), ys, ys])
    _, out_y = _map_points(in_wcs, out_wcs, x, y)
    if not np.all(np.isfinite(out_y)):
        return None
    return float(out_y.min()), float(out_y.max())


def compute_pixmap(in_wcs, in_shape, out_wcs, stepsize: int = 1) -> np.ndarray:
    """Map every pixel centre of a chip onto another pixel grid.

    Parameters
    ----------
    in_wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        WCS of the chip whose pixels are mapped (distortion included).
    in_shape : tuple of int
        The chip's array shape ``(ny, nx)``; the map has shape ``(ny, nx, 2)``.
    out_wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        WCS of the grid the pixels are mapped onto. Its bounding box, if any, is ignored, so
        pixels just outside the grid still get positions. Both WCS must give world coordinates
        in the same frame and axis order.
    stepsize : int, optional
        1 (default): evaluate the WCS at every pixel (exact, same values as
        ``drizzle.utils.calc_pixmap``). N > 1: evaluate every N pixels and on the last row and
        column, and interpolate with a bicubic spline (see the module notes for the accuracy:
        9e-9 px at N = 10 on a WFC3/UVIS chip).

    Returns
    -------
    numpy.ndarray
        C-contiguous float64 array of shape ``(ny, nx, 2)``; ``[..., 0]`` is x and ``[..., 1]`` is
        y, 0-based pixel positions on the output grid. NaN where the input WCS is undefined.

    Raises
    ------
    ValueError
        Invalid shape or stepsize, or WCS with different axis orders.
    """
    rows = PixmapRows(in_wcs, in_shape, out_wcs, stepsize)
    return rows.rows(0, rows.shape[0])


def pixmap_extent(pixmap) -> tuple[float, float, float, float] | None:
    """Bounding box of the mapped pixel centres.

    Parameters
    ----------
    pixmap : numpy.ndarray
        Pixel map of shape ``(ny, nx, 2)``.

    Returns
    -------
    tuple of float or None
        ``(x_min, x_max, y_min, y_max)`` over the finite positions (output pixels, 0-based), or
        None when no position is finite.
    """
    x = pixmap[..., 0]
    y = pixmap[..., 1]
    # fmin/fmax skip NaN without the copies nanmin makes.
    x_min = np.fmin.reduce(x, axis=None)
    if not np.isfinite(x_min):
        return None
    return (
        float(x_min),
        float(np.fmax.reduce(x, axis=None)),
        float(np.fmin.reduce(y, axis=None)),
        float(np.fmax.reduce(y, axis=None)),
    )


def pixmap_input_pixel_size(pixmap) -> float:
    """Largest side of an input pixel measured in output pixels.

    Parameters
    ----------
    pixmap : numpy.ndarray
        Pixel map of shape ``(ny, nx, 2)``.

    Returns
    -------
    float
        The longest distance between the mapped centres of two neighbouring input pixels,
        sampled at the four corners and the centre of the chip (the map is smooth, so these
        bound the size well). 1.0 when it cannot be measured (a 1-pixel chip or NaN positions).
    """
    return _pixel_size_at(lambda j: pixmap[j : j + 2], pixmap.shape[:2])


def _pixel_size_at(row_pair, shape) -> float:
    """The sampling of :func:`pixmap_input_pixel_size`; ``row_pair(j)``: map rows ``j, j+1``
    (or only ``j`` on the last row)."""
    ny, nx = shape
    sizes = []
    for j in {0, ny // 2, max(ny - 2, 0)}:
        pair = row_pair(j)
        for i in {0, nx // 2, max(nx - 2, 0)}:
            if i + 1 < nx:
                sizes.append(math.dist(pair[0, i], pair[0, i + 1]))
            if j + 1 < ny:
                sizes.append(math.dist(pair[0, i], pair[1, i]))
    sizes = [s for s in sizes if math.isfinite(s)]
    return max(sizes) if sizes else 1.0


def pixmap_outline_extent(pixmap) -> tuple[float, float, float, float] | None:
    """Bounding box of the chip's outer pixel *edges* on the output grid.

    The outline is the border row and column of the map extrapolated outwards by half a pixel
    (and the corners by half a pixel in both directions), which is exact for a locally affine
    map. When the border holds NaN positions the box of the finite centres is widened by one
    input pixel instead.

    Parameters
    ----------
    pixmap : numpy.ndarray
        Pixel map of shape ``(ny, nx, 2)``.

    Returns
    -------
    tuple of float or None
        ``(x_min, x_max, y_min, y_max)`` in output pixels, or None when no position is finite.
    """
    ny, nx = pixmap.shape[:2]
    border = [pixmap[0], pixmap[-1], pixmap[:, 0], pixmap[:, -1]]
    if ny < 2 or nx < 2 or not all(np.all(np.isfinite(b)) for b in border):
        extent = pixmap_extent(pixmap)
        if extent is None:
            return None
        size = pixmap_input_pixel_size(pixmap)
        return extent[0] - size, extent[1] + size, extent[2] - size, extent[3] + size

    return _outline_of_border(
        (pixmap[0], pixmap[1]), (pixmap[-1], pixmap[-2]), (pixmap[:, 0], pixmap[:, 1]),
        (pixmap[:, -1], pixmap[:, -2]),
    )  # fmt: skip


def _outline_of_border(bottom, top, left, right) -> tuple[float, float, float, float]:
    """The outline box of :func:`pixmap_outline_extent` from the map's four borders, each given
    as ``(edge, the row or column next to it)``, all finite."""

    def outward(edge, inner):
        return edge + 0.5 * (edge - inner)

    bottom, top, left, right = (outward(*pair) for pair in (bottom, top, left, right))
    corners = np.array(
        [
            outward(bottom[0], bottom[1]),
            outward(bottom[-1], bottom[-2]),
            outward(top[0], top[1]),
            outward(top[-1], top[-2]),
        ]
    )
    points = np.concatenate([bottom, top, left, right, corners])
    return (
        float(points[:, 0].min()),
        float(points[:, 0].max()),
        float(points[:, 1].min()),
        float(points[:, 1].max()),
    )
