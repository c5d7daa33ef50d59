"""Blot: resample a drizzled product back onto a chip's own pixel grid.

Blotting is interpolation, not drizzling: every chip pixel takes the value of the product
interpolated at the position of the chip pixel's centre on the product grid. The positions are
the pixel map of the chip onto the product grid (:func:`blot_pixmap`), which is the same array
as the one used to drizzle the chip onto that grid, so it can be computed once and reused.

Interpolants (``interp``), from drizzle 3.0's C code (AstroDrizzle's ``blot_interp``):
``nearest``, ``linear``, ``poly3``, ``poly5`` (default; IRAF-style interior polynomial with
reflected boundary), ``lan3``/``lanczos3`` and ``lan5``/``lanczos5``. AstroDrizzle's ``sinc``
(and the C-only ``lsinc``, ``spline3``) do not exist in drizzle 3.0 and raise ``ValueError``;
``lan5`` is the closest (a windowed sinc). ``sinscl`` only scaled the sinc kernel, so it is
ignored for every supported interpolant, exactly as AstroDrizzle ignores it for them.

Lanczos normalisation (a fix): the weights of drizzle 3.0's Lanczos interpolants do not sum to
one (measured: a constant image of 10 blots to 10.0165 with ``lanczos3`` at integer positions,
to 10.056 with ``lanczos5`` half-way between pixels), which biases a blotted sky by up to
0.5%, far more than the noise that cosmic-ray detection compares against. We divide by the blot
of an image of ones through the same map, which makes the weights sum to one (also at the image
edges) and brings the error on a smooth test image from 0.8% to 0.1-0.3% of its peak; poly5
remains the most accurate interpolant (3e-5 of the peak). AstroDrizzle's own ``lan3``/``lan5``
differ from both (by 1-4% on the same data).

Units (AstroDrizzle spec section 7): the product is a rate per *output* pixel. To return to the
chip's own units multiply by ``iscale`` = :func:`blot_intensity_scale`: ``exptime / area_ratio``
for counts, ``1 / area_ratio`` for rates, where ``area_ratio`` is the ``iscale`` the chip was
drizzled with (:func:`~drizzlepipe.algorithms.resample.pixel_area_ratio`, 1 for surface
brightness). AstroDrizzle's blot is ``median * EXPTIME / s**2``. Adding the sky back (AstroDrizzle
``blot_addsky``) is left to the caller, in the chip's units.

Chip pixels that map outside the product, or whose position is NaN, get ``fill_value``
(AstroDrizzle's ``misval = 0``; JWST uses NaN). NaN pixels in the product spread to every chip
pixel whose interpolation stencil touches them (6 x 6 for poly5).
"""

from __future__ import annotations

import numpy as np
from drizzle.resample import blot_image
from scipy import ndimage

from drizzlepipe.algorithms.pixmap import compute_pixmap

__all__ = [
    "BLOT_INTERPOLANTS",
    "blot",
    "blot_intensity_scale",
    "blot_pixmap",
    "fill_holes",
    "fill_hole_rows",
    "sample_nearest",
]

# Our names (AstroDrizzle's, and drizzle's spellings of the lanczos ones) -> drizzle 3.0 names.
BLOT_INTERPOLANTS = {
    "nearest": "nearest",
    "linear": "linear",
    "poly3": "poly3",
    "poly5": "poly5",
    "lan3": "lanczos3",
    "lan5": "lanczos5",
    "lanczos3": "lanczos3",
    "lanczos5": "lanczos5",
}
_UNAVAILABLE = ("sinc", "lsinc", "spline3")


def _drizzle_interp(interp: str) -> str:
    if interp in BLOT_INTERPOLANTS:
        return BLOT_INTERPOLANTS[interp]
    if interp in _UNAVAILABLE:
        raise ValueError(
            f"blot interpolation {interp!r} is not available in drizzle 3.0; use 'lan5' "
            "(Lanczos windowed sinc) or 'poly5'"
        )
    choices = sorted(BLOT_INTERPOLANTS)
    raise ValueError(f"blot interpolation must be one of {choices}, got {interp!r}")


def blot(
    image,
    pixmap_chip_to_image,
    *,
    interp: str = "poly5",
    sinscl: float = 1.0,
    iscale: float = 1.0,
    fill_value: float = 0.0,
    ones=None,
) -> np.ndarray:
    """Interpolate a product at the positions of a chip's pixel centres.

    Parameters
    ----------
    image : array_like
        2-D product (e.g. the median), in its own units (a rate per product pixel).
    pixmap_chip_to_image : numpy.ndarray
        ``(ny_chip, nx_chip, 2)`` 0-based positions on ``image`` of the chip's pixel centres
        (:func:`blot_pixmap`); NaN positions get ``fill_value``.
    interp : str, optional
        Interpolant, see the module notes. Default ``"poly5"``.
    sinscl : float, optional
        AstroDrizzle's sinc scale; must be positive, ignored by every supported interpolant.
    iscale : float, optional
        Factor applied to the interpolated values (:func:`blot_intensity_scale`). Default 1.
    fill_value : float, optional
        Value of chip pixels that map outside the image. Default 0 (AstroDrizzle).
    ones : numpy.ndarray, optional
        float32 ones of the image's shape, used by the Lanczos normalisation; pass one array to
        calls that blot the same image band by band instead of allocating it every time.

    Returns
    -------
    numpy.ndarray
        float32 array of the chip's shape, ``iscale * interpolated value``.

    Raises
    ------
    ValueError
        Unknown or unavailable interpolant, bad shapes or scales.
    """
    drizzle_interp = _drizzle_interp(interp)
    if not (np.isfinite(sinscl) and sinscl > 0):
        raise ValueError(f"sinscl must be a positive number, got {sinscl!r}")
    if not np.isfinite(iscale):
        raise ValueError(f"iscale must be finite, got {iscale!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    pixmap = np.asarray(pixmap_chip_to_image, dtype=np.float64)
    if pixmap.ndim != 3 or pixmap.shape[2] != 2:
        raise ValueError(f"pixmap must have shape (ny, nx, 2), got {pixmap.shape}")
    if not np.all(np.isfinite(pixmap)):
        # drizzle's blot has no notion of an undefined position: send those pixels far off the
        # image so they get the fill value (as JWST's gwcs_blot does).
        pixmap = np.where(np.isfinite(pixmap), pixmap, -1.0e6)
    if not drizzle_interp.startswith("lanczos"):
        return blot_image(
            image, pixmap, iscale=float(iscale), fillval=float(fill_value), interp=drizzle_interp
        )
    values = blot_image(image, pixmap, iscale=1.0, fillval=0.0, interp=drizzle_interp)
    if ones is None or ones.shape != image.shape or ones.dtype != np.float32:
        ones = np.ones_like(image)
    weight_sum = blot_image(ones, pixmap, iscale=1.0, fillval=0.0, interp=drizzle_interp)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = values * np.float32(iscale) / weight_sum
    return np.where(weight_sum != 0, normalised, np.float32(fill_value)).astype(np.float32)


def blot_pixmap(chip_wcs, chip_shape, image_wcs, *, stepsize: int = 10) -> np.ndarray:
    """Positions on a product grid of a chip's pixel centres (the map :func:`blot` needs).

    This is the same map that drizzles the chip onto that grid
    (:func:`~drizzlepipe.algorithms.pixmap.compute_pixmap` from the chip to the product), so a
    map already computed for DrizSeparate can be passed to :func:`blot` directly.

    Parameters
    ----------
    chip_wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The chip's WCS (distortion included).
    chip_shape : tuple of int
        The chip's array shape ``(ny, nx)``.
    image_wcs : astropy.wcs.WCS or gwcs.wcs.WCS
        The product's WCS.
    stepsize : int, optional
        WCS evaluation step in pixels, 10 as in AstroDrizzle's blot (interpolation error about
        1e-8 px, see :mod:`drizzlepipe.algorithms.pixmap`); 1 for exact.

    Returns
    -------
    numpy.ndarray
        float64 ``(ny, nx, 2)`` pixel map.
    """
    return compute_pixmap(chip_wcs, chip_shape, image_wcs, stepsize=stepsize)


def blot_intensity_scale(*, exptime: float, chip_units: str, pixel_area_ratio: float) -> float:
    """``iscale`` that returns a blotted product to the chip's own units.

    Parameters
    ----------
    exptime : float
        The chip's exposure time in seconds (positive).
    chip_units : {"counts", "cps"}
        Units of the chip's data: per exposure or per second.
    pixel_area_ratio : float
        The ``iscale`` the chip was drizzled with, (product scale / chip scale)**2 for
        per-pixel data, 1 for surface brightness.

    Returns
    -------
    float
        ``exptime / pixel_area_ratio`` for counts, ``1 / pixel_area_ratio`` for rates.
    """
    if not (np.isfinite(exptime) and exptime > 0):
        raise ValueError(f"exptime must be a positive number of seconds, got {exptime!r}")
    if not (np.isfinite(pixel_area_ratio) and pixel_area_ratio > 0):
        raise ValueError(f"pixel_area_ratio must be a positive number, got {pixel_area_ratio!r}")
    if chip_units == "counts":
        return exptime / pixel_area_ratio
    if chip_units == "cps":
        return 1.0 / pixel_area_ratio
    raise ValueError(f"chip_units must be 'counts' or 'cps', got {chip_units!r}")


_SAMPLE_BLOCK_PIXELS = 1 << 16


#: Farthest distance [pixels] from a product pixel with data to a hole that any interpolant's
#: stencil can then reach: the widest stencil (``lan5``) reads pixels up to 5 pixels along each
#: axis from the interpolated position (measured on drizzle 3.0), and that position is within
#: 0.71 pixel of its nearest product pixel: at most 7.8 pixels, rounded up with a margin.
STENCIL_REACH = 10

#: Side of the tiles that :func:`fill_holes` fills one at a time.
_FILL_TILE = 256


def fill_holes(image, reach=STENCIL_REACH, out=None):
    """Fill non-finite pixels of a product with their nearest finite neighbour, for blotting.

    The interpolants read a 2 x 2 (linear) to 11 x 11 (lan5) stencil, so a single NaN (a pixel
    of the median without any good input) would spread NaN to every chip pixel around it, and
    chip pixels at the edge of the coverage would never be checked for cosmic rays. Blotting the
    filled image and discarding only the chip pixels whose *nearest* product pixel is a hole
    keeps those.

    Only holes within ``reach`` pixels of data can enter the stencil of a chip pixel whose
    nearest product pixel has data (:data:`STENCIL_REACH`); they take the value of their nearest
    finite pixel (Euclidean distance; among equally near pixels any one), farther holes 0. The
    work is done in tiles of 256 x 256 pixels padded by ``reach`` and only where there are
    holes. A median's holes gather at the edges of the coverage and in chip gaps, so few tiles
    hold any and this is several times faster than a whole-image distance transform, with the
    same values within ``reach``; holes scattered over every tile would gain nothing (timings:
    docs/developer/performance.md, *Timings behind the code*).

    Parameters
    ----------
    image : array_like
        2-D product with NaN (or inf) where it has no data.
    reach : int
        Holes farther than this from any finite pixel [pixels] are set to 0.
    out : numpy.ndarray, optional
        float32 array of the image's shape to hold the filled copy (e.g. memory already in
        use); written only when there are holes.

    Returns
    -------
    filled : numpy.ndarray
        float32 copy with the holes filled as above (``out`` when given; the image itself when
        all pixels are finite; all-zero when none is).
    holes : numpy.ndarray or None
        Boolean map, True at the holes, or None when there are none.
    """
    image = np.asarray(image, dtype=np.float32)
    invalid = ~np.isfinite(image)
    if not invalid.any():
        return image, None
    if out is not None and (out.shape != image.shape or out.dtype != np.float32):
        raise ValueError(f"out must be float32 of shape {image.shape}")
    filled = np.empty_like(image) if out is None else out
    fill_hole_rows(image, 0, image.shape[0], filled, reach)
    return filled, invalid


def fill_hole_rows(image, start, stop, out, reach=STENCIL_REACH):
    """Rows ``[start, stop)`` of what :func:`fill_holes` makes of ``image``, into the same
    rows of ``out``; the same values whichever bands of rows are filled (the tiles are
    anchored at row 0 and read the image around the band), so workers can share the work.

    Parameters
    ----------
    image : numpy.ndarray
        float32 2-D product with NaN (or inf) where it has no data.
    start, stop : int
        The band of rows.
    out : numpy.ndarray
        float32 array of the image's shape; only the band's rows are written.
    reach : int
        As :func:`fill_holes`.

    Returns
    -------
    numpy.ndarray
        Boolean map of the band's holes, ``(stop - start, nx)``.
    """
    ny, nx = image.shape
    invalid = ~np.isfinite(image[start:stop])
    np.copyto(out[start:stop], image[start:stop])
    if not invalid.any():
        return invalid
    out[start:stop][invalid] = 0.0
    tile = _FILL_TILE
    for y0 in range(start - start % tile, stop, tile):
        y1 = min(ny, y0 + tile)
        first, last = max(y0, start), min(y1, stop)  # the tile's rows in the band
        # columns of this row of tiles that hold holes
        columns = np.flatnonzero(invalid[first - start : last - start].any(axis=0))
        for x0 in np.unique(columns // tile) * tile:
            x1 = min(nx, x0 + tile)
            top, bottom = max(0, y0 - reach), min(ny, y1 + reach)
            left, right = max(0, x0 - reach), min(nx, x1 + reach)
            padded = ~np.isfinite(image[top:bottom, left:right])
            if padded.all():
                continue  # no data within reach of this tile: its holes stay 0
            distance, (rows, cols) = ndimage.distance_transform_edt(padded, return_indices=True)
            inner = (slice(first - top, last - top), slice(x0 - left, x1 - left))
            fill = padded[inner] & (distance[inner] <= reach)
            values = image[top:bottom, left:right][rows[inner], cols[inner]]
            out[first:last, x0:x1][fill] = values[fill]
    return invalid


def sample_nearest(image, pixmap, fill_value=0.0):
    """Value of the nearest ``image`` pixel at every position of ``pixmap`` (a lookup, no
    interpolation): what ``blot(..., interp="nearest")`` gives, an order of magnitude faster.

    Parameters
    ----------
    image : array_like or sequence of array_like
        2-D array sampled (e.g. the median's holes or weight), or several arrays of one shape
        sampled at the same positions (the positions are then rounded only once).
    pixmap : numpy.ndarray
        ``(ny, nx, 2)`` 0-based x, y positions on ``image``.
    fill_value : float or sequence of float
        Value where a position falls outside ``image`` or is NaN (one per image).

    Returns
    -------
    numpy.ndarray or list of numpy.ndarray
        Array(s) of the pixmap's shape ``(ny, nx)`` and the image's dtype.
    """
    several = isinstance(image, (list, tuple))
    images = [np.asarray(item) for item in (image if several else [image])]
    fills = list(fill_value) if several else [fill_value]
    if len(fills) != len(images):
        raise ValueError(f"{len(images)} images but {len(fills)} fill values")
    shape = images[0].shape
    if any(item.shape != shape for item in images):
        raise ValueError("the images sampled together must have one shape")
    ny, nx = shape
    flats = [item.ravel() for item in images]
    outputs = [np.empty(pixmap.shape[:2], dtype=item.dtype) for item in images]
    # Rows in blocks: the float64 and index temporaries of a block stay in cache instead of
    # costing several full-chip arrays (several times faster on a UVIS chip).
    rows = max(1, _SAMPLE_BLOCK_PIXELS // max(pixmap.shape[1], 1))
    for start in range(0, pixmap.shape[0], rows):
        block = pixmap[start : start + rows]
        with np.errstate(invalid="ignore"):
            x = np.floor(block[..., 0] + 0.5)
            y = np.floor(block[..., 1] + 0.5)
            inside = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
        # NaN and outside positions read pixel 0 and are overwritten with the fill below
        index = np.where(inside, y * nx + x, 0.0).astype(np.intp)
        for flat, out, fill in zip(flats, outputs, fills):
            part = out[start : start + rows]
            np.take(flat, index, out=part)
            part[~inside] = fill
    return outputs if several else outputs[0]
