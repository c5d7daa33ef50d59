"""Tests of drizzlepipe.algorithms.blot: interpolating a product back onto chips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from drizzlepipe.algorithms.blot import (
    STENCIL_REACH,
    blot,
    blot_intensity_scale,
    blot_pixmap,
    fill_hole_rows,
    fill_holes,
    sample_nearest,
)
from drizzlepipe.algorithms.grid import default_output_grid
from drizzlepipe.algorithms.pixmap import compute_pixmap
from drizzlepipe.algorithms.resample import DrizzleAccumulator, pixel_area_ratio
from hrcwcs import HRC_IDCSCALE, HRC_SHAPE, HRC_SIP_HEADER

INTERPOLANTS = ["nearest", "linear", "poly3", "poly5", "lan3", "lan5"]


def smooth(x, y):
    """A well-sampled source (sigma 4 px) on a sloped background; peak ~100."""
    return 100.0 * np.exp(-0.5 * ((x - 45.3) ** 2 + (y - 38.6) ** 2) / 16.0) + 10.0 + 0.05 * x


def rotated_map(shape, *, angle_deg=17.0, offset=(10.3, 5.7)):
    y, x = np.indices(shape, dtype=float)
    theta = math.radians(angle_deg)
    return np.dstack(
        [
            offset[0] + math.cos(theta) * x - math.sin(theta) * y,
            offset[1] + math.sin(theta) * x + math.cos(theta) * y,
        ]
    )


@pytest.mark.parametrize("interp", INTERPOLANTS)
def test_identity_map_returns_the_image(interp, rng):
    image = rng.normal(100.0, 5.0, (30, 40)).astype(np.float32)
    y, x = np.indices(image.shape, dtype=float)
    result = blot(image, np.dstack([x, y]), interp=interp)
    assert result.dtype == np.float32 and result.shape == image.shape
    # interpolants pass through the samples; drizzle's Lanczos tables are not exactly 1/0 at
    # integer offsets, which normalisation reduces to ~3e-4 relative (lan5)
    tolerance = 1e-3 if interp.startswith("lan") else 1e-6
    assert np.allclose(result, image, rtol=tolerance, atol=0)


@pytest.mark.parametrize(
    ("interp", "tolerance"),
    # measured max error / peak: 0.092, 0.014, 4.6e-4, 2.8e-5, 2.9e-3, 1.2e-3
    [
        ("nearest", 0.15),
        ("linear", 0.03),
        ("poly3", 1e-3),
        ("poly5", 1e-4),
        ("lan3", 6e-3),
        ("lan5", 3e-3),
    ],
)
def test_interpolation_accuracy_on_a_smooth_image(interp, tolerance):
    y, x = np.indices((80, 90), dtype=float)
    image = smooth(x, y).astype(np.float32)
    pixmap = rotated_map((60, 60))
    truth = smooth(pixmap[..., 0], pixmap[..., 1])
    result = blot(image, pixmap, interp=interp)
    # stay 5 px away from the image edges, where the stencils reflect
    inner = (pixmap[..., 0] > 4) & (pixmap[..., 0] < 85) & (pixmap[..., 1] > 4)
    inner &= pixmap[..., 1] < 75
    assert np.abs(result - truth)[inner].max() < tolerance * 100.0


@pytest.mark.parametrize("interp", ["lan3", "lanczos5"])
def test_lanczos_weights_sum_to_one(interp):
    image = np.full((50, 50), 10.0, np.float32)
    pixmap = rotated_map((30, 30), angle_deg=7.0, offset=(2.25, 3.5))
    result = blot(image, pixmap, interp=interp)
    # drizzle alone returns up to 10.056; normalised, only float32 rounding remains,
    # also within the stencil half-width of the edges
    inside = np.all((pixmap > 0) & (pixmap < 49), axis=2)
    assert np.allclose(result[inside], 10.0, rtol=1e-5)


def test_aliases_and_scale():
    y, x = np.indices((40, 40), dtype=float)
    image = smooth(x, y).astype(np.float32)
    pixmap = rotated_map((20, 20), offset=(8.0, 9.0))
    assert np.array_equal(
        blot(image, pixmap, interp="lan3"), blot(image, pixmap, interp="lanczos3")
    )
    assert np.allclose(
        blot(image, pixmap, interp="poly5", iscale=2.5), 2.5 * blot(image, pixmap), rtol=1e-6
    )
    assert np.allclose(
        blot(image, pixmap, interp="lan5", iscale=3.0),
        3.0 * blot(image, pixmap, interp="lan5"),
        rtol=1e-6,
    )


def test_pixels_off_the_image_or_undefined_get_the_fill_value():
    image = np.ones((20, 20), np.float32)
    y, x = np.indices((10, 10), dtype=float)
    pixmap = np.dstack([x + 15.0, y + 5.0])  # columns 5..9 land beyond x = 19.5
    pixmap[0, 0] = np.nan
    for interp in ("poly5", "lan3"):
        result = blot(image, pixmap, interp=interp, fill_value=-7.0)
        assert result[0, 0] == -7.0
        assert np.all(result[:, 6:] == -7.0)
        assert np.allclose(result[1:, :4], 1.0, rtol=1e-5)


def test_unavailable_and_invalid_options():
    image = np.ones((5, 5))
    y, x = np.indices((5, 5), dtype=float)
    pixmap = np.dstack([x, y])
    with pytest.raises(ValueError, match="not available in drizzle 3.0.*lan5"):
        blot(image, pixmap, interp="sinc")
    with pytest.raises(ValueError, match="must be one of"):
        blot(image, pixmap, interp="cubic")
    with pytest.raises(ValueError, match="sinscl"):
        blot(image, pixmap, sinscl=0.0)
    with pytest.raises(ValueError, match="2-D"):
        blot(np.ones(5), pixmap)
    with pytest.raises(ValueError, match="pixmap"):
        blot(image, pixmap[..., 0])
    # sinscl has no effect on the supported interpolants, as in AstroDrizzle
    assert np.array_equal(blot(image, pixmap, sinscl=2.0), blot(image, pixmap))


def test_intensity_scale():
    assert blot_intensity_scale(exptime=60.0, chip_units="counts", pixel_area_ratio=0.64) == (
        pytest.approx(93.75)
    )
    assert blot_intensity_scale(exptime=60.0, chip_units="cps", pixel_area_ratio=4.0) == 0.25
    with pytest.raises(ValueError, match="chip_units"):
        blot_intensity_scale(exptime=1.0, chip_units="electrons", pixel_area_ratio=1.0)
    with pytest.raises(ValueError, match="exptime"):
        blot_intensity_scale(exptime=0.0, chip_units="counts", pixel_area_ratio=1.0)


def tan_wcs(shape, *, scale=0.05, rotation=0.0, crpix_offset=(0.0, 0.0)):
    ny, nx = shape
    theta = math.radians(rotation)
    s = scale / 3600
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = (150.0, 2.0)
    wcs.wcs.crpix = ((nx + 1) / 2 + crpix_offset[0], (ny + 1) / 2 + crpix_offset[1])
    wcs.wcs.cd = s * np.array(
        [[-math.cos(theta), math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    return wcs


def test_drizzle_then_blot_returns_the_chip_in_its_own_units():
    shape = (64, 64)
    chips = [
        tan_wcs(shape, rotation=12.0, crpix_offset=(0.5 * (k % 2), 0.5 * (k // 2)))
        for k in range(4)
    ]
    ratio = 0.8
    grid = default_output_grid(chips, [shape] * 4, rotation=0.0, pixel_scale_ratio=ratio)
    iscale = pixel_area_ratio(ratio * 0.05, 0.05)
    exptime = 120.0
    y, x = np.indices(shape, dtype=float)
    counts = []
    accumulator = DrizzleAccumulator(grid.shape, enable_err=False)
    for wcs in chips:
        # a smooth scene fixed on the sky, in counts per chip pixel
        ra, dec = wcs.all_pix2world(x, y, 0)
        xi = (ra - 150.0) * 3600 * math.cos(math.radians(2.0))
        eta = (dec - 2.0) * 3600
        image = exptime * (5.0 + 40.0 * np.exp(-0.5 * (xi**2 + eta**2) / 0.3**2))
        counts.append(image)
        accumulator.add_chip(
            image.astype(np.float32),
            compute_pixmap(wcs, shape, grid.wcs),
            exptime=exptime,
            in_units="counts",
            iscale=iscale,
            pixel_scale_ratio=ratio,
        )
    product = accumulator.finalize()
    scale = blot_intensity_scale(exptime=exptime, chip_units="counts", pixel_area_ratio=iscale)
    for wcs, image in zip(chips, counts):
        blotted = blot(product.data, blot_pixmap(wcs, shape, grid.wcs, stepsize=8), iscale=scale)
        inner = (slice(6, -6), slice(6, -6))
        # the source (sigma 6 input px) is well sampled; drizzling (a convolution with the drop)
        # and interpolating smooth its peak by 0.6% (measured), so 1% is the bound
        assert np.allclose(blotted[inner], image[inner], rtol=1e-2)


def test_blot_pixmap_points_each_chip_pixel_at_its_place_on_the_product():
    # On a product holding a linear function of its own pixel coordinates, linear interpolation
    # is exact, so the blot must equal that function at the exactly computed positions.
    shape = (50, 70)
    chip = tan_wcs(shape, rotation=33.0, scale=0.05)
    product_wcs = tan_wcs((90, 90), rotation=0.0, scale=0.04)
    py, px = np.indices((90, 90), dtype=float)
    product = (3.0 + 0.5 * px - 0.25 * py).astype(np.float64)
    exact = compute_pixmap(chip, shape, product_wcs, stepsize=1)
    expected = 3.0 + 0.5 * exact[..., 0] - 0.25 * exact[..., 1]
    result = blot(
        product.astype(np.float32), blot_pixmap(chip, shape, product_wcs), interp="linear"
    )
    on_image = np.all((exact > 0) & (exact < 89), axis=2)
    assert on_image.sum() > 0.9 * on_image.size
    # float32 values of ~50: 1e-4 absolute
    assert np.allclose(result[on_image], expected[on_image], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# peer: drizzlepac's own C blot on a distorted HST WCS
# ---------------------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("interp", ["nearest", "linear", "poly3", "poly5"])
def test_blot_agrees_with_drizzlepac_do_blot(interp):
    import os

    os.environ.setdefault("ASTROMETRY_STEP_CONTROL", "OFF")
    from drizzlepac import ablot
    from stwcs.wcsutil import HSTWCS

    chip = WCS(fits.Header(HRC_SIP_HEADER))
    chip.pixel_shape = HRC_SHAPE[::-1]
    grid = default_output_grid(
        [chip], [HRC_SHAPE], reference_scale=HRC_IDCSCALE, rotation=0.0, pixel_scale_ratio=1.2
    )
    # a product with stars of FWHM 3 output pixels on a sky of 1 e-/s
    generator = np.random.default_rng(20261122)
    y, x = np.indices(grid.shape)
    product = np.ones(grid.shape)
    for _ in range(80):
        cx, cy = generator.uniform(0, grid.shape[1]), generator.uniform(0, grid.shape[0])
        product += generator.uniform(1, 100) * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 1.6)
    product = product.astype(np.float32)

    def hstwcs(wcs, shape, idcscale=None):
        header = wcs.to_header(relax=True)
        if idcscale is not None:
            header["IDCSCALE"] = idcscale
        result = HSTWCS(fits.HDUList([fits.PrimaryHDU(header=header)]), ext=0)
        result.pixel_shape = shape[::-1]
        return result

    source_wcs = hstwcs(grid.wcs, grid.shape)
    theirs = ablot.do_blot(
        product, source_wcs, hstwcs(chip, HRC_SHAPE, HRC_IDCSCALE), 60.0, interp=interp, stepsize=10
    )
    s = source_wcs.pscale / HRC_IDCSCALE  # their pixel ratio
    scale = blot_intensity_scale(exptime=60.0, chip_units="counts", pixel_area_ratio=s**2)
    ours = blot(
        product, blot_pixmap(chip, HRC_SHAPE, grid.wcs, stepsize=10), interp=interp, iscale=scale
    )
    inner = (slice(5, -5), slice(5, -5))
    relative = np.abs(ours[inner] - theirs[inner]) / np.abs(theirs[inner])
    # measured: median 2e-6, 99th percentile 1e-5 (their bilinear vs our bicubic map)
    assert np.median(relative) < 1e-3
    assert np.percentile(relative, 99) < 1e-2


def test_sample_nearest_equals_drizzles_nearest_blot(rng):
    image = rng.random((60, 70)).astype(np.float32)
    # positions away from exact half-pixels (where rounding conventions may differ)
    y, x = np.mgrid[0:40, 0:50].astype(np.float64)
    pixmap = np.dstack([x * 1.3 - 3.21, y * 1.4 - 2.37])
    expected = blot(image, pixmap, interp="nearest", fill_value=-1.0)
    got = sample_nearest(image, pixmap, fill_value=-1.0)
    inside = expected != -1.0
    assert inside.sum() > 1000 and (~inside).sum() > 100
    np.testing.assert_array_equal(got, expected)


def test_sample_nearest_of_several_images_at_nan_and_outside_positions(rng):
    weight = rng.random((30, 40)).astype(np.float32)
    holes = (rng.random((30, 40)) > 0.8).astype(np.float32)
    y, x = np.mgrid[0:25, 0:35].astype(np.float64)
    pixmap = np.dstack([x * 1.25 - 2.1, y * 1.3 - 1.7])
    pixmap[3, 4] = np.nan
    got_weight, got_holes = sample_nearest([weight, holes], pixmap, [0.0, 1.0])
    # reference: an explicit loop over positions
    for (row, col), _ in np.ndenumerate(pixmap[..., 0]):
        px, py = pixmap[row, col]
        xi, yi = np.floor(px + 0.5), np.floor(py + 0.5)
        if np.isfinite(px) and 0 <= xi < 40 and 0 <= yi < 30:
            assert got_weight[row, col] == weight[int(yi), int(xi)]
            assert got_holes[row, col] == holes[int(yi), int(xi)]
        else:
            assert got_weight[row, col] == 0.0 and got_holes[row, col] == 1.0
    assert np.count_nonzero(got_holes == 1.0) > 50  # outside positions were exercised


def _holey_product(rng, shape=(600, 700)):
    """A product with holes as a median has them: an uncovered corner wedge, a chip gap, a
    large empty area and scattered single pixels, across several of fill_holes' tiles."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    image = (100 + 20 * np.sin(x / 17.0) * np.cos(y / 23.0)).astype(np.float32)
    holes = (x + 2 * y < 300) | (np.abs(x - 0.3 * y - 400) < 3) | ((y > 420) & (x > 520))
    holes |= rng.random(shape) < 0.01
    image[holes] = np.nan
    return image, holes


def test_fill_holes_takes_the_nearest_data_pixel_within_reach(rng):
    ny, nx = 600, 700
    image, holes = _holey_product(rng, (ny, nx))
    # values that name their pixel, so the source of every filled value can be found
    named = np.where(holes, np.nan, np.arange(ny * nx, dtype=np.float32).reshape(ny, nx))
    filled, hole_map = fill_holes(named)
    np.testing.assert_array_equal(hole_map, holes)
    assert np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[~holes], named[~holes])
    distance = ndimage.distance_transform_edt(holes)
    near = holes & (distance <= STENCIL_REACH)
    far = holes & (distance > STENCIL_REACH)
    assert near.sum() > 5000 and far.sum() > 5000  # both kinds of hole are exercised
    source = filled[near].astype(np.int64)
    rows, cols = np.nonzero(near)
    source_rows, source_cols = np.divmod(source, nx)
    assert not holes[source_rows, source_cols].any()
    # the source is a nearest data pixel (ties may resolve either way)
    np.testing.assert_allclose(
        np.hypot(source_rows - rows, source_cols - cols), distance[near], rtol=0, atol=1e-9
    )
    np.testing.assert_array_equal(filled[far], 0.0)
    # into a given array (BlotCR passes a recycled buffer, full of old values)
    out = np.full((ny, nx), 7.0, np.float32)
    into, _ = fill_holes(named, out=out)
    assert into is out
    np.testing.assert_array_equal(into, filled)
    with pytest.raises(ValueError, match="float32"):
        fill_holes(named, out=np.zeros((ny, nx), np.float64))


def test_holes_filled_in_any_bands_of_rows_are_those_of_the_whole_image(rng):
    image, holes = _holey_product(rng, (600, 700))
    whole, _ = fill_holes(image)
    # band edges inside tiles, on tile edges, within reach of a tile edge, one-row bands
    for edges in ((0, 300, 600), (0, 256, 512, 600), (0, 250, 262, 599, 600), (0, 1, 2, 377, 600)):
        out = np.full(image.shape, 7.0, np.float32)
        band_holes = [fill_hole_rows(image, a, b, out) for a, b in zip(edges[:-1], edges[1:])]
        np.testing.assert_array_equal(out, whole)
        np.testing.assert_array_equal(np.concatenate(band_holes), holes)
    out = np.full(image.shape, 7.0, np.float32)
    fill_hole_rows(image, 100, 200, out)
    assert (out[:100] == 7).all() and (out[200:] == 7).all()  # other rows untouched


@pytest.mark.parametrize("interp", ["linear", "poly3", "poly5", "lan3", "lan5"])
def test_filled_holes_blot_as_a_whole_image_nearest_fill(interp, rng):
    """Where a chip pixel's nearest product pixel has data (the pixels that are checked for
    cosmic rays), the blot of fill_holes' product equals that of a product whose every hole
    has its nearest data value (a whole-image distance transform)."""
    image, holes = _holey_product(rng)
    filled, _ = fill_holes(image)
    nearest = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
    reference = image[tuple(nearest)]
    y, x = np.mgrid[0:500, 0:600].astype(np.float64)
    angle = np.deg2rad(17.0)
    pixmap = np.dstack([
        20 + x * np.cos(angle) - y * np.sin(angle) * 0.97 + 150,
        10 + x * np.sin(angle) * 1.02 + y * np.cos(angle),
    ])  # fmt: skip
    checked = sample_nearest(holes.astype(np.float32), pixmap, 1.0) < 0.5
    ours = blot(filled, pixmap, interp=interp)
    expected = blot(reference, pixmap, interp=interp)
    assert checked.sum() > 100_000 and (~checked).sum() > 10_000
    # lan5's stencil reaches holes up to 7.8 px from data: those near the coverage edge
    np.testing.assert_array_equal(ours[checked], expected[checked])
