"""Output grids for drizzling: chip footprints, local pixel scale and orientation, the default grid.

An output grid is a celestial WCS plus an array shape. :func:`default_output_grid` builds the
grid AstroDrizzle builds by default (``drizzlepac.wcs_functions.make_outputwcs`` with
``perfect=True`` and ``stwcs.distortion.utils.output_wcs``), and applies the same user
customisations (``rot``, ``scale``, ``outnx/outny``, ``ra/dec``, ``crpix1/crpix2``);
:func:`grid_from_reference` takes the grid of an existing image (``refimage``).

Conventions
-----------
* Pixel coordinates are 0-based with the centre of the first pixel at (0, 0); a chip of shape
  ``(ny, nx)`` covers ``[-0.5, nx - 0.5] x [-0.5, ny - 0.5]``. ``crpix`` values are FITS 1-based,
  as written in headers. Shapes are numpy order ``(ny, nx)``.
* Angles are degrees. ``orientation`` is the position angle of the chip's +Y axis, measured from
  north through east (HST's ``ORIENTAT``). Pixel scales are arcseconds per pixel.
* A WCS may be an :class:`astropy.wcs.WCS` (with SIP/lookup-table distortion, which is always
  applied) or a :class:`gwcs.wcs.WCS`; only the shared low-level API
  (``pixel_to_world_values``/``world_to_pixel_values``) is used, so both work everywhere.

The default grid (AstroDrizzle spec section 3)
----------------------------------------------
1. Footprints of all chips, distortion included.
2. Tangent point (CRVAL): the mean of the unit vectors of all chip corners, normalised back to
   (RA, Dec) (``computeFootprintCenter``).
3. Pixel scale: the first chip's undistorted scale (HST ``IDCSCALE``, passed as
   ``reference_scale``; without it the local scale :func:`pixel_scale` of the first chip),
   times ``pixel_scale_ratio``, or ``pixel_scale`` when given.
4. Orientation: the first chip's +Y axis (HST ``ORIENTAT``), or ``rotation`` when given.
   Square orthogonal CD matrix with east to the left (``perfect=True``), TAN projection.
5. Shape: the smallest array covering every chip; CRPIX places the footprint inside it.

Where we differ from AstroDrizzle, and why
------------------------------------------
* **Footprint at pixel edges, sampled along the sides.** AstroDrizzle bounds the grid with the
  four corner pixel *centres* and ``naxis = ceil(max - min)``, so the outer half pixel of the
  inputs falls off the grid (a single undistorted 100 x 100 chip gives a 99 x 99 grid), and a
  side that bows outwards under distortion can stick out of it. We bound the grid with the pixel
  *edges*, sampled every 64 pixels along every side, so every input pixel lands on
  the grid and an undistorted chip maps onto a grid of its own shape, pixel for pixel.
* **Footprint centred, CRPIX shifted.** AstroDrizzle moves CRVAL (re-solving it at a shifted
  CRPIX) so that the minimum corner lands on pixel 0; we keep the tangent point at the footprint
  centre and shift CRPIX instead, which is an exact translation in the tangent plane, and we
  centre the footprint in the array (the sub-pixel slack of ``ceil`` is split on both sides).
* **Parity [QUIRK fixed].** AstroDrizzle measures the shape with the parity of the first chip
  (``make_orthogonal_cd``: sign of det CD) and then replaces the CD matrix with an east-left one
  (``make_perfect_cd``) without re-measuring. For mirrored inputs (det CD > 0) the footprint is
  then reflected about CRPIX and no longer fits (with stwcs, a mirrored 60 x 100 chip's first
  column lands at x = -1, off the grid). We build the east-left CD matrix first and measure the
  shape with it, so every grid is east-left (det CD < 0, the FITS display convention) and holds
  the whole footprint.
* **Rotation.** With ``rot`` AstroDrizzle rotates the *rectangle* of the default grid and takes
  the bounding box of its corners, which can be much larger than the data; we bound the chip
  footprints in the rotated frame, which gives the smallest grid covering every input.
* **Explicit CRVAL.** With ``ra``/``dec`` and no explicit shape, AstroDrizzle keeps the default
  shape and CRPIX, so the data may leave the grid; we keep CRVAL as the tangent point and choose
  CRPIX and shape so the footprint is covered.
* **Local pixel scale.** Without ``reference_scale`` the scale is :func:`pixel_scale`, the local
  scale at the chip centre with distortion included (what JWST's resample uses). For HST data
  this is *not* IDCSCALE: ACS/HRC's centre pixel is 0.0265" (``sqrt(|det CD|)``) while IDCSCALE
  is 0.025".
  Flat-fielded HST data are normalised to IDCSCALE, so the caller should pass IDCSCALE as
  ``reference_scale`` to reproduce AstroDrizzle's grid and photometry.

Memory guard
------------
Grids with more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_OUTPUT_PIXELS` = 2**29,
e.g. 23170 x 23170) raise :class:`OutputGridTooLargeError`: the science and weight arrays alone
need 8 bytes per pixel (4 GiB at the limit), plus 4 per pixel for the error array and 4 per pixel
and per 32 inputs for the context. A typo in ``pixel_scale`` (arcsec given as degrees or mas)
would otherwise try to allocate terabytes. Pass a larger ``max_pixels`` for genuinely large
mosaics.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.wcs import WCS

from drizzlepipe.exceptions import DrizzlepipeError

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "OutputGrid",
    "OutputGridTooLargeError",
    "chip_footprint",
    "default_output_grid",
    "footprint_center",
    "grid_from_reference",
    "orientation",
    "pixel_scale",
    "position_runs",
]

#: Largest number of output pixels a grid may have unless the caller raises the limit
#: (2**29 pixels: 4 GiB for the float32 science and weight arrays alone).
DEFAULT_MAX_OUTPUT_PIXELS = 2**29

_ARCSEC_PER_DEG = 3600.0
# Spacing (input pixels) of the points sampled along each chip side when bounding the grid: the
# side of a distorted chip is a smooth curve whose sagitta between samples 64 px apart is far
# below a pixel even for ACS/WFC's strong distortion.
_BORDER_STEP = 64
# Tolerance (output pixels) absorbing rounding in "ceil(extent)" so that an extent of exactly
# N pixels computed as N + 1e-10 still gives N pixels.
_EXTENT_TOLERANCE = 1e-6


class OutputGridTooLargeError(DrizzlepipeError, ValueError):
    """The requested output grid (or the arrays to drizzle onto it) exceed the memory limit."""


@dataclass(frozen=True)
class OutputGrid:
    """A celestial WCS and the array shape of a resampled product.

    Attributes
    ----------
    wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The grid's WCS; :func:`default_output_grid` builds a TAN WCS with a CD matrix and no
        distortion, which is representable in a FITS header. Its ``pixel_shape`` is set.
    shape : tuple of int
        Array shape ``(ny, nx)``.
    """

    wcs: Any
    shape: tuple[int, int]

    @property
    def pixel_scale(self) -> float:
        """Pixel scale at the grid centre in arcsec (see :func:`pixel_scale`)."""
        return pixel_scale(self.wcs, self.shape)

    @property
    def orientation(self) -> float:
        """Position angle of the grid's +Y axis in degrees (see :func:`orientation`)."""
        return orientation(self.wcs, self.shape)

    def footprint(self) -> np.ndarray:
        """(RA, Dec) in degrees of the grid's four outer corners, shape (4, 2)."""
        return chip_footprint(self.wcs, self.shape)

    def to_fits_header(self):
        """The WCS as an :class:`astropy.io.fits.Header` (only for astropy WCS grids).

        Raises
        ------
        TypeError
            If the grid's WCS is a gwcs without a FITS representation.
        """
        if not isinstance(self.wcs, WCS):
            raise TypeError("only grids with an astropy.wcs.WCS can be written as a FITS header")
        header = self.wcs.to_header(relax=True)
        header["NAXIS"] = 2
        header["NAXIS1"] = self.shape[1]
        header["NAXIS2"] = self.shape[0]
        return header


# ---------------------------------------------------------------------------------------------
# Low-level helpers
# ---------------------------------------------------------------------------------------------


def _validate_shape(shape, what="shape") -> tuple[int, int]:
    try:
        ny, nx = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a pair of integers (ny, nx), got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"{what} must be positive, got {shape!r}")
    return ny, nx


def _pixel_to_world(wcs, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(RA, Dec) in degrees of 0-based pixel positions, distortion included."""
    ra, dec = wcs.pixel_to_world_values(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def _unit_vectors(ra, dec) -> np.ndarray:
    ra_rad = np.deg2rad(ra)
    dec_rad = np.deg2rad(dec)
    return np.stack(
        [np.cos(dec_rad) * np.cos(ra_rad), np.cos(dec_rad) * np.sin(ra_rad), np.sin(dec_rad)],
        axis=-1,
    )


def _gnomonic(ra0, dec0, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (xi east, eta north) in degrees about the tangent point (ra0, dec0)."""
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    dra = np.deg2rad(np.asarray(ra, dtype=float)) - ra0r
    decr = np.deg2rad(np.asarray(dec, dtype=float))
    cos_c = math.sin(dec0r) * np.sin(decr) + math.cos(dec0r) * np.cos(decr) * np.cos(dra)
    xi = np.cos(decr) * np.sin(dra) / cos_c
    eta = (math.cos(dec0r) * np.sin(decr) - math.sin(dec0r) * np.cos(decr) * np.cos(dra)) / cos_c
    return np.rad2deg(xi), np.rad2deg(eta)


def _local_jacobian(wcs, x0: float, y0: float, delta: float = 0.5) -> np.ndarray:
    """d(xi, eta)/d(x, y) in degrees per pixel at pixel (x0, y0), by central differences.

    The tangent plane is centred on the sky position of (x0, y0), so the result does not
    depend on cos(Dec) and stays correct at the poles. ``delta`` = half a pixel keeps the
    differences inside the pixel whose scale is measured.
    """
    x = np.array([x0, x0 + delta, x0 - delta, x0, x0])
    y = np.array([y0, y0, y0, y0 + delta, y0 - delta])
    ra, dec = _pixel_to_world(wcs, x, y)
    if not np.all(np.isfinite(ra) & np.isfinite(dec)):
        raise ValueError(f"the WCS is undefined near pixel ({x0}, {y0})")
    xi, eta = _gnomonic(ra[0], dec[0], ra, dec)
    return np.array(
        [
            [(xi[1] - xi[2]) / (2 * delta), (xi[3] - xi[4]) / (2 * delta)],
            [(eta[1] - eta[2]) / (2 * delta), (eta[3] - eta[4]) / (2 * delta)],
        ]
    )


def _border_pixels(shape, step: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions on the outer edge of a chip, counter-clockwise from (-0.5, -0.5)."""
    ny, nx = shape
    x_lo, x_hi, y_lo, y_hi = -0.5, nx - 0.5, -0.5, ny - 0.5
    if step is None:
        return np.array([x_lo, x_hi, x_hi, x_lo]), np.array([y_lo, y_lo, y_hi, y_hi])

    def side(lo, hi):
        n = max(1, math.ceil(abs(hi - lo) / step))
        return np.linspace(lo, hi, n + 1)[:-1]  # end point is the start of the next side

    xs_bottom = side(x_lo, x_hi)
    ys_right = side(y_lo, y_hi)
    xs_top = side(x_hi, x_lo)
    ys_left = side(y_hi, y_lo)
    x = np.concatenate(
        [xs_bottom, np.full(ys_right.size, x_hi), xs_top, np.full(ys_left.size, x_lo)]
    )
    y = np.concatenate(
        [np.full(xs_bottom.size, y_lo), ys_right, np.full(xs_top.size, y_hi), ys_left]
    )
    return x, y


# ---------------------------------------------------------------------------------------------
# Public per-chip geometry
# ---------------------------------------------------------------------------------------------


def chip_footprint(wcs, shape, *, border_step: int | None = None) -> np.ndarray:
    """Sky outline of a chip, distortion included.

    Parameters
    ----------
    wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The chip's WCS (0-based pixels).
    shape : tuple of int
        Chip array shape ``(ny, nx)``.
    border_step : int or None, optional
        None (default): the four outer corners. An integer: also points every ``border_step``
        pixels along each side, which follows sides that distortion bends.

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` array of (RA, Dec) in degrees, counter-clockwise in pixel space starting at
        the outer corner of pixel (0, 0), i.e. at pixel position (-0.5, -0.5). Unlike
        astropy's ``calc_footprint`` (and AstroDrizzle) the corners are the pixel *edges*, so the
        outline encloses every pixel of the chip.

    Raises
    ------
    ValueError
        If the WCS is undefined (NaN) anywhere on the outline.
    """
    shape = _validate_shape(shape)
    if border_step is not None and int(border_step) < 1:
        raise ValueError(f"border_step must be a positive integer, got {border_step!r}")
    x, y = _border_pixels(shape, None if border_step is None else int(border_step))
    ra, dec = _pixel_to_world(wcs, x, y)
    if not np.all(np.isfinite(ra) & np.isfinite(dec)):
        raise ValueError("the WCS is undefined (NaN) on part of the chip outline")
    return np.column_stack([ra, dec])


def footprint_center(footprints) -> tuple[float, float]:
    """Mean direction of a set of sky positions (AstroDrizzle's ``computeFootprintCenter``).

    Parameters
    ----------
    footprints : array_like or sequence of array_like
        One ``(N, 2)`` array of (RA, Dec) in degrees, or a sequence of them.

    Returns
    -------
    tuple of float
        (RA, Dec) in degrees of the normalised mean of the unit vectors; RA in [0, 360).
        Robust at the poles and across RA = 0.
    """
    if isinstance(footprints, np.ndarray):
        points = footprints.reshape(-1, 2)
    else:
        points = np.vstack([np.asarray(f, dtype=float).reshape(-1, 2) for f in footprints])
    mean = _unit_vectors(points[:, 0], points[:, 1]).mean(axis=0)
    ra = math.degrees(math.atan2(mean[1], mean[0])) % 360.0
    dec = math.degrees(math.atan2(mean[2], math.hypot(mean[0], mean[1])))
    return ra, dec


def pixel_scale(wcs, shape) -> float:
    """Local pixel scale at the chip centre, distortion included.

    Parameters
    ----------
    wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The chip's WCS.
    shape : tuple of int
        Chip array shape ``(ny, nx)``; the scale is measured at pixel ((nx-1)/2, (ny-1)/2).

    Returns
    -------
    float
        ``sqrt(|det J|)`` in arcsec per pixel, where J is the Jacobian of the mapping from pixels
        to the tangent plane at the chip centre: the side of a square with the pixel's sky area.
        For an undistorted WCS this is ``sqrt(|det CD|)``; for a SIP WCS whose CRPIX is at the
        centre (HST) it is ``sqrt(|det CD|)`` too, since SIP polynomials start at second order. It
        differs from HST's ``IDCSCALE`` (see the module notes).
    """
    return _local_scale(wcs, shape)


def _local_scale(wcs, shape) -> float:
    # Separate from ``pixel_scale`` because ``default_output_grid`` has a keyword of that name.
    ny, nx = _validate_shape(shape)
    jac = _local_jacobian(wcs, (nx - 1) / 2.0, (ny - 1) / 2.0)
    return math.sqrt(abs(np.linalg.det(jac))) * _ARCSEC_PER_DEG


def orientation(wcs, shape) -> float:
    """Position angle of the chip's +Y axis at its centre (HST ``ORIENTAT``).

    Parameters
    ----------
    wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The chip's WCS.
    shape : tuple of int
        Chip array shape ``(ny, nx)``.

    Returns
    -------
    float
        Degrees from north through east, in (-180, 180]; 0 means +Y points north. For a FITS WCS
        without distortion this is ``atan2(CD1_2, CD2_2)``.
    """
    ny, nx = _validate_shape(shape)
    jac = _local_jacobian(wcs, (nx - 1) / 2.0, (ny - 1) / 2.0)
    angle = math.degrees(math.atan2(jac[0, 1], jac[1, 1]))
    return 180.0 if angle == -180.0 else angle


# ---------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------


def _east_left_cd(scale_arcsec: float, rotation_deg: float) -> np.ndarray:
    """Square orthogonal CD matrix (deg/px), east left, +Y at position angle ``rotation_deg``."""
    theta = math.radians(rotation_deg)
    scale = scale_arcsec / _ARCSEC_PER_DEG
    return scale * np.array(
        [[-math.cos(theta), math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )


def _celestial_frame_of(wcs) -> tuple[str | None, float | None]:
    """RADESYS and EQUINOX of an astropy WCS (None for gwcs), so the grid uses the same frame.

    Pixel maps compare world coordinate *values*, so input and output WCS must share a frame.
    """
    if isinstance(wcs, WCS):
        radesys = wcs.wcs.radesys or None
        equinox = wcs.wcs.equinox
        if equinox is None or not np.isfinite(equinox):
            equinox = None
        return radesys, equinox
    return None, None


def _check_size(shape, max_pixels: int) -> None:
    npix = int(shape[0]) * int(shape[1])
    if npix > max_pixels:
        raise OutputGridTooLargeError(
            f"output grid of {shape[0]} x {shape[1]} pixels ({npix:,} pixels) exceeds the limit of "
            f"{max_pixels:,} pixels (about {8 * npix / 2**30:.1f} GiB for science and weight "
            "alone); check pixel_scale/output_shape, or raise max_pixels for a genuinely large "
            "mosaic"
        )


def default_output_grid(
    wcs_list: Sequence[Any],
    shapes: Sequence[Sequence[int]],
    *,
    rotation: float | None = None,
    pixel_scale: float | None = None,
    pixel_scale_ratio: float = 1.0,
    output_shape: Sequence[int] | None = None,
    crval: Sequence[float] | None = None,
    crpix: Sequence[float] | None = None,
    reference_scale: float | None = None,
    max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> OutputGrid:
    """The output grid AstroDrizzle builds for a set of chips, with its customisations.

    Parameters
    ----------
    wcs_list : sequence of WCS
        WCS of every input chip (astropy, with distortion, or gwcs). The first chip is the
        reference for the default scale and orientation, as in AstroDrizzle.
    shapes : sequence of tuple of int
        Array shape ``(ny, nx)`` of every chip, same order.
    rotation : float or None, optional
        Position angle of the output +Y axis in degrees (0 = north up, east left); AstroDrizzle's
        ``final_rot``. None: the first chip's :func:`orientation`.
    pixel_scale : float or None, optional
        Output pixel scale in arcsec (``final_scale``). Cannot be combined with a
        ``pixel_scale_ratio`` other than 1.
    pixel_scale_ratio : float, optional
        Output pixel scale as a multiple of the reference scale (JWST's ``pixel_scale_ratio``;
        0.5 gives pixels half as large, so 4 output pixels per input pixel). Default 1.
    output_shape : tuple of int or None, optional
        Output array shape ``(ny, nx)`` (``final_outny, final_outnx``). None: the smallest shape
        covering every chip.
    crval : tuple of float or None, optional
        (RA, Dec) in degrees of the tangent point (``final_ra, final_dec``). None: the mean
        direction of all chip corners.
    crpix : tuple of float or None, optional
        FITS 1-based (x, y) pixel of ``crval`` (``final_crpix1, final_crpix2``). None: chosen so
        the footprint is centred on the grid, or ``((nx + 1) / 2, (ny + 1) / 2)`` when
        ``output_shape`` is given (AstroDrizzle's rule). When given without ``output_shape`` the
        shape stays the automatic one, as in AstroDrizzle, so data may fall off the grid.
    reference_scale : float or None, optional
        The first chip's undistorted scale in arcsec (HST ``IDCSCALE``). None: the local scale
        :func:`pixel_scale` of the first chip.
    max_pixels : int, optional
        Refuse grids with more pixels than this (see the module's memory notes).

    Returns
    -------
    OutputGrid
        TAN WCS with an east-left orthogonal CD matrix, ``pixel_shape`` set, and shape (ny, nx).

    Raises
    ------
    ValueError
        Inconsistent or invalid arguments, or a chip WCS undefined on its outline.
    OutputGridTooLargeError
        The grid would have more than ``max_pixels`` pixels.
    """
    wcs_list = list(wcs_list)
    shapes = [_validate_shape(s, "chip shape") for s in shapes]
    if not wcs_list:
        raise ValueError("at least one chip is needed to build an output grid")
    if len(wcs_list) != len(shapes):
        raise ValueError(f"got {len(wcs_list)} WCS objects but {len(shapes)} shapes")
    if not (np.isfinite(pixel_scale_ratio) and pixel_scale_ratio > 0):
        raise ValueError(f"pixel_scale_ratio must be a positive number, got {pixel_scale_ratio!r}")
    if pixel_scale is not None:
        if not (np.isfinite(pixel_scale) and pixel_scale > 0):
            raise ValueError(f"pixel_scale must be a positive number (arcsec), got {pixel_scale!r}")
        if pixel_scale_ratio != 1.0:
            raise ValueError("give either pixel_scale or pixel_scale_ratio, not both")
    if reference_scale is not None and not (np.isfinite(reference_scale) and reference_scale > 0):
        raise ValueError(f"reference_scale must be a positive number, got {reference_scale!r}")
    if rotation is not None and not np.isfinite(rotation):
        raise ValueError(f"rotation must be a finite angle in degrees, got {rotation!r}")
    if output_shape is not None:
        output_shape = _validate_shape(output_shape, "output_shape")
    if crval is not None:
        crval = tuple(float(v) for v in crval)
        if len(crval) != 2 or not all(np.isfinite(crval)) or abs(crval[1]) > 90:
            raise ValueError(f"crval must be (RA, Dec) in degrees, got {crval!r}")
    if crpix is not None:
        crpix = tuple(float(v) for v in crpix)
        if len(crpix) != 2 or not all(np.isfinite(crpix)):
            raise ValueError(f"crpix must be two finite numbers (x, y), got {crpix!r}")

    corners = [chip_footprint(w, s) for w, s in zip(wcs_list, shapes)]
    outlines = [chip_footprint(w, s, border_step=_BORDER_STEP) for w, s in zip(wcs_list, shapes)]

    if crval is None:
        crval = footprint_center(corners)
    if pixel_scale is None:
        ref = reference_scale
        if ref is None:
            ref = _local_scale(wcs_list[0], shapes[0])
        out_scale = ref * pixel_scale_ratio
    else:
        out_scale = float(pixel_scale)
    out_rotation = orientation(wcs_list[0], shapes[0]) if rotation is None else float(rotation)

    grid_wcs = WCS(naxis=2)
    grid_wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    grid_wcs.wcs.cunit = ["deg", "deg"]
    grid_wcs.wcs.crval = crval
    grid_wcs.wcs.cd = _east_left_cd(out_scale, out_rotation)
    grid_wcs.wcs.crpix = [1.0, 1.0]  # CRVAL at 0-based pixel (0, 0) while measuring
    radesys, equinox = _celestial_frame_of(wcs_list[0])
    if radesys is not None:
        grid_wcs.wcs.radesys = radesys
    if equinox is not None:
        grid_wcs.wcs.equinox = equinox
    grid_wcs.wcs.set()

    points = np.vstack(outlines)
    px, py = grid_wcs.wcs_world2pix(points[:, 0], points[:, 1], 0)
    if not np.all(np.isfinite(px) & np.isfinite(py)):
        raise ValueError("a chip lies more than 90 degrees from the tangent point")
    x_min, x_max, y_min, y_max = px.min(), px.max(), py.min(), py.max()
    extent_x, extent_y = x_max - x_min, y_max - y_min

    if output_shape is None:
        nx = max(1, math.ceil(extent_x - _EXTENT_TOLERANCE))
        ny = max(1, math.ceil(extent_y - _EXTENT_TOLERANCE))
        _check_size((ny, nx), max_pixels)
        if crpix is None:
            # Place the footprint's box [min, max] on [-0.5, n - 0.5], centred: CRVAL (0-based
            # position 0 while measuring) moves by the same shift.
            shift_x = -0.5 + (nx - extent_x) / 2.0 - x_min
            shift_y = -0.5 + (ny - extent_y) / 2.0 - y_min
            crpix = (1.0 + shift_x, 1.0 + shift_y)
    else:
        ny, nx = output_shape
        _check_size((ny, nx), max_pixels)
        if crpix is None:
            crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)

    grid_wcs.wcs.crpix = crpix
    grid_wcs.pixel_shape = (nx, ny)
    grid_wcs.wcs.set()
    return OutputGrid(wcs=grid_wcs, shape=(ny, nx))


def grid_from_reference(wcs, shape, *, max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> OutputGrid:
    """The grid of a reference image (AstroDrizzle's ``final_refimage``).

    Parameters
    ----------
    wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The reference image's WCS (the step reads it from the file). An astropy WCS with more
        than two axes is reduced to its celestial part. Distortion in the reference WCS is kept:
        the grid is then the reference's own distorted pixel grid.
    shape : tuple of int
        The reference image's array shape ``(ny, nx)``.
    max_pixels : int, optional
        Refuse grids with more pixels than this.

    Returns
    -------
    OutputGrid
        A copy of the WCS (the caller's object is not modified) with ``pixel_shape`` set.

    Raises
    ------
    ValueError
        If the WCS is not a two-dimensional celestial WCS.
    OutputGridTooLargeError
        The grid would have more than ``max_pixels`` pixels.
    """
    ny, nx = _validate_shape(shape)
    _check_size((ny, nx), max_pixels)
    if isinstance(wcs, WCS):
        if not wcs.has_celestial:
            raise ValueError("the reference WCS has no celestial axes")
        grid_wcs = wcs.celestial if wcs.naxis > 2 else wcs.deepcopy()
        if grid_wcs.naxis != 2:
            raise ValueError("the reference WCS must have exactly two celestial axes")
    else:
        if getattr(wcs, "pixel_n_dim", None) != 2 or getattr(wcs, "world_n_dim", None) != 2:
            raise ValueError("the reference WCS must map 2 pixel axes to 2 celestial axes")
        grid_wcs = copy.deepcopy(wcs)
    grid_wcs.pixel_shape = (nx, ny)
    # Fail now, not in the middle of a drizzle, if the WCS cannot be evaluated on the grid.
    pixel_scale(grid_wcs, (ny, nx))
    return OutputGrid(wcs=grid_wcs, shape=(ny, nx))


def position_runs(extents, n_runs: int, *, weights=None) -> list[list[int]]:
    """Group chips into runs by their position on the output grid, for partial accumulations
    that need arrays only for the rows their chips reach.

    The chips are ordered by the middle of the output rows they span and cut into ``n_runs``
    runs of about equal pixels; each run lists its chips in input order. Chips of one position
    of a multi-chip detector (the lower chips of WFC3/UVIS or ACS/WFC exposures) fall in one
    run, which then spans half of the grid. Runs depend on the chips' positions only.

    Parameters
    ----------
    extents : sequence of (float, float) or None
        Output rows ``(y_min, y_max)`` that each chip spans (None: unknown, ordered last).
    n_runs : int
        Runs wanted (no more than there are chips).
    weights : sequence of float, optional
        Pixels of each chip (default 1 each).

    Returns
    -------
    list of list of int
        Chip indices of each run, none empty (one empty run when there are no chips).
    """
    n_chips = len(extents)
    if n_chips == 0:
        return [[]]
    n_runs = max(1, min(int(n_runs), n_chips))
    weights = np.ones(n_chips) if weights is None else np.asarray(weights, dtype=float)
    middles = np.array([np.inf if e is None else 0.5 * (e[0] + e[1]) for e in extents])
    order = np.argsort(middles, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(weights[order])[:-1]])
    run_of = np.minimum((before / weights.sum() * n_runs).astype(int), n_runs - 1)
    runs = [sorted(int(i) for i in order[run_of == k]) for k in range(n_runs)]
    return [run for run in runs if run]
