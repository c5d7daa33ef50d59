"""Tests of drizzlepipe.algorithms.pixmap: exact and interpolated pixel maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from drizzlepipe.algorithms.pixmap import (
    PixmapRows,
    chip_rows_on_grid,
    compute_pixmap,
    pixmap_extent,
    pixmap_input_pixel_size,
    pixmap_outline_extent,
)
from hrcwcs import HRC_SHAPE, hrc_wcs

# ACS/HRC j8bt06nyq SCI,1 WCS (TAN-SIP order 4), copied from the exposure's header.


def tan_wcs(*, crval=(6.03, -72.08), crpix=(600.0, 600.0), scale=0.025, rotation=0.0):
    theta = math.radians(rotation)
    s = scale / 3600
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = crval
    wcs.wcs.crpix = crpix
    wcs.wcs.cd = s * np.array(
        [[-math.cos(theta), math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    return wcs


def tan_gwcs(*, crval, crpix, scale, bounding_box=None):
    """gwcs equivalent of :func:`tan_wcs` (rotation 0); ``crpix`` FITS 1-based."""
    gwcs_wcs = pytest.importorskip("gwcs.wcs")
    from astropy import coordinates as coord
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf

    s = scale / 3600
    transform = (
        (models.Shift(-(crpix[0] - 1)) & models.Shift(-(crpix[1] - 1)))
        | models.AffineTransformation2D(matrix=[[-s, 0], [0, s]])
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(crval[0], crval[1], 180.0)
    )
    detector = cf.Frame2D(name="detector")
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    wcs = gwcs_wcs.WCS([(detector, transform), (sky, None)])
    if bounding_box is not None:
        wcs.bounding_box = bounding_box
    return wcs


def test_exact_map_of_a_shift_is_the_shift():
    # same tangent plane, CRPIX differs by (12.25, -3.5): pixel x -> x + 12.25, y -> y - 3.5
    chip = tan_wcs(crpix=(50.0, 40.0))
    grid = tan_wcs(crpix=(62.25, 36.5))
    pixmap = compute_pixmap(chip, (30, 45), grid)
    y, x = np.indices((30, 45))
    assert pixmap.shape == (30, 45, 2) and pixmap.dtype == np.float64
    assert pixmap.flags.c_contiguous
    # TAN -> sky -> TAN round trip: ~1e-9 px of float64 rounding
    assert np.abs(pixmap[..., 0] - (x + 12.25)).max() < 1e-7
    assert np.abs(pixmap[..., 1] - (y - 3.5)).max() < 1e-7


def test_exact_map_equals_drizzle_calc_pixmap():
    from drizzle.utils import calc_pixmap

    chip = hrc_wcs()
    grid = tan_wcs(rotation=15.0)
    shape = (200, 300)  # a corner of the chip is enough and keeps the test fast
    ours = compute_pixmap(chip, shape, grid, stepsize=1)
    theirs = calc_pixmap(chip, grid, shape=shape)
    assert np.abs(ours - theirs).max() < 1e-9  # same arithmetic, evaluated in blocks


@pytest.mark.parametrize(("stepsize", "tolerance"), [(10, 1e-6), (50, 1e-4)])
def test_interpolated_map_of_distorted_chip_is_accurate(stepsize, tolerance):
    # Measured on this chip: 1e-8 px at stepsize 10, 1e-6 px at 50 (bench/resample_kernels.py
    # gives the same on a WFC3/UVIS chip); the tolerances leave two orders of magnitude.
    chip = hrc_wcs()
    grid = tan_wcs(rotation=15.0)
    exact = compute_pixmap(chip, HRC_SHAPE, grid, stepsize=1)
    interpolated = compute_pixmap(chip, HRC_SHAPE, grid, stepsize=stepsize)
    assert np.abs(interpolated - exact).max() < tolerance


def test_last_row_and_column_are_nodes():
    # 517 and 333 are not multiples of the step: the last row/column must still be exact nodes
    chip = hrc_wcs()
    grid = tan_wcs()
    shape = (333, 517)
    exact = compute_pixmap(chip, shape, grid, stepsize=1)
    interpolated = compute_pixmap(chip, shape, grid, stepsize=25)
    node_columns = np.r_[np.arange(0, 517, 25), 516]
    node_rows = np.r_[np.arange(0, 333, 25), 332]
    # nodes are interpolated exactly (spline through the points: only rounding, 1e-9 px)
    assert np.abs(interpolated[-1, node_columns] - exact[-1, node_columns]).max() < 1e-9
    assert np.abs(interpolated[node_rows, -1] - exact[node_rows, -1]).max() < 1e-9
    # and the edges are interpolated, not extrapolated: as accurate as the interior (1e-7 here)
    assert np.abs(interpolated[-1] - exact[-1]).max() < 1e-6
    assert np.abs(interpolated[:, -1] - exact[:, -1]).max() < 1e-6


def test_small_chip_is_evaluated_exactly():
    chip = hrc_wcs()
    grid = tan_wcs()
    exact = compute_pixmap(chip, (3, 40), grid, stepsize=1)
    assert np.array_equal(compute_pixmap(chip, (3, 40), grid, stepsize=10), exact)


def test_gwcs_output_grid_matches_astropy_and_ignores_its_bounding_box():
    crval, crpix, scale = (6.03, -72.08), (600.0, 600.0), 0.025
    # the gwcs grid's bounding box covers only part of where the chip lands
    grid = tan_gwcs(
        crval=crval, crpix=crpix, scale=scale, bounding_box=((-0.5, 99.5), (-0.5, 99.5))
    )
    reference = tan_wcs(crval=crval, crpix=crpix, scale=scale)
    chip = hrc_wcs()
    shape = (120, 160)
    ours = compute_pixmap(chip, shape, grid, stepsize=10)
    expected = compute_pixmap(chip, shape, reference, stepsize=1)
    assert np.all(np.isfinite(ours))  # pixels outside the grid's bounding box keep positions
    assert np.abs(ours - expected).max() < 1e-6
    assert grid.bounding_box is not None  # and the grid object was not modified


def test_undefined_input_pixels_are_nan_and_force_exact_evaluation():
    # an input gwcs defined only on x <= 59.5: pixels beyond have no sky position
    chip = tan_gwcs(
        crval=(6.03, -72.08),
        crpix=(40.0, 30.0),
        scale=0.025,
        bounding_box=((-0.5, 59.5), (-0.5, 79.5)),
    )
    grid = tan_wcs(crpix=(50.0, 50.0))
    pixmap = compute_pixmap(chip, (60, 100), grid, stepsize=10)
    assert np.all(np.isnan(pixmap[:, 60:]))
    assert np.all(np.isfinite(pixmap[:, :60]))
    y, x = np.indices((60, 60))
    assert np.abs(pixmap[:, :60, 0] - (x + 10)).max() < 1e-7
    assert np.abs(pixmap[:, :60, 1] - (y + 20)).max() < 1e-7


@pytest.mark.parametrize("stepsize", [0, -3, 2.5, True])
def test_invalid_stepsize(stepsize):
    with pytest.raises(ValueError, match="stepsize"):
        compute_pixmap(tan_wcs(), (10, 10), tan_wcs(), stepsize=stepsize)


def test_axis_order_mismatch_is_rejected():
    swapped = WCS(naxis=2)
    swapped.wcs.ctype = ["DEC--TAN", "RA---TAN"]
    swapped.wcs.crval = [-72.08, 6.03]
    swapped.wcs.cd = [[2e-6, 0], [0, 2e-6]]
    with pytest.raises(ValueError, match="axis orders"):
        compute_pixmap(tan_wcs(), (10, 10), swapped)


def test_extent_and_input_pixel_size():
    # output pixels twice as large: an input pixel is half an output pixel
    chip = tan_wcs(crpix=(20.0, 20.0), scale=0.025)
    grid = tan_wcs(crpix=(5.0, 5.0), scale=0.05)
    pixmap = compute_pixmap(chip, (40, 60), grid)
    assert pixmap_input_pixel_size(pixmap) == pytest.approx(0.5, rel=1e-6)
    x_min, x_max, y_min, y_max = pixmap_extent(pixmap)
    # pixel (0, 0) lands at 4 + (0 - 19) / 2 = -5.5; pixel 59 at 4 + 40 / 2 = 24.0
    assert (x_min, x_max) == pytest.approx((-5.5, 24.0), abs=1e-6)
    assert (y_min, y_max) == pytest.approx((-5.5, 14.0), abs=1e-6)
    assert pixmap_extent(np.full((3, 3, 2), np.nan)) is None


@pytest.mark.parametrize("stepsize", [1, 10])
def test_bands_of_rows_agree_with_the_whole_map(stepsize):
    # PixmapRows evaluates a chip in bands (BlotCR works a band at a time); every band, also
    # ones that cut knot intervals of the spline and a reused buffer, equals the whole map.
    chip = hrc_wcs()
    grid = tan_wcs(crval=(chip.wcs.crval[0], chip.wcs.crval[1]), crpix=(700.0, 700.0))
    whole = compute_pixmap(chip, HRC_SHAPE, grid, stepsize=stepsize)
    rows = PixmapRows(chip, HRC_SHAPE, grid, stepsize=stepsize)
    buffer = np.empty((97, HRC_SHAPE[1], 2))
    for first in range(0, HRC_SHAPE[0], 97):
        last = min(HRC_SHAPE[0], first + 97)
        band = rows.rows(first, last, out=buffer)
        np.testing.assert_allclose(band, whole[first:last], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="within the chip"):
        rows.rows(0, HRC_SHAPE[0] + 1)


@pytest.mark.parametrize("stepsize", [1, 10])
def test_border_of_the_map_from_its_outer_rows_and_columns(stepsize):
    # DrizzleAccumulator decides from these whether a chip can be drizzled in bands, before
    # any band is evaluated: they must be those of the whole map.
    chip = hrc_wcs()
    grid = tan_wcs(crval=(chip.wcs.crval[0], chip.wcs.crval[1]), crpix=(700.0, 700.0))
    whole = compute_pixmap(chip, HRC_SHAPE, grid, stepsize=stepsize)
    rows = PixmapRows(chip, HRC_SHAPE, grid, stepsize=stepsize)
    np.testing.assert_allclose(rows.columns([0, 5, 1023]), whole[:, [0, 5, 1023]], atol=1e-10)
    np.testing.assert_allclose(rows.outline_extent(), pixmap_outline_extent(whole), atol=1e-10)
    assert rows.input_pixel_size() == pytest.approx(pixmap_input_pixel_size(whole), abs=1e-12)
    assert PixmapRows(chip, (1, 40), grid).outline_extent() is None  # one row: no outline


@pytest.mark.parametrize("stepsize", [1, 10])
def test_a_map_onto_a_band_of_the_grid_is_the_map_less_the_band_origin(stepsize):
    # what a partial accumulation on the rows its chips reach is given: positions from the
    # band's first row; an integer offset keeps every position's fraction exactly
    chip = hrc_wcs()
    grid = tan_wcs(crval=(chip.wcs.crval[0], chip.wcs.crval[1]), crpix=(700.0, 700.0))
    whole = PixmapRows(chip, HRC_SHAPE, grid, stepsize=stepsize)
    band = PixmapRows(chip, HRC_SHAPE, grid, stepsize=stepsize, origin=(0.0, 300.0))
    full = whole.rows(100, 300)
    np.testing.assert_array_equal(band.rows(100, 300)[..., 0], full[..., 0])
    np.testing.assert_array_equal(band.rows(100, 300)[..., 1], full[..., 1] - 300.0)
    np.testing.assert_array_equal(band.columns([0, 7])[..., 1], whole.columns([0, 7])[..., 1] - 300)
    x_min, x_max, y_min, y_max = whole.outline_extent()
    assert band.outline_extent() == pytest.approx((x_min, x_max, y_min - 300, y_max - 300))


def test_rows_of_the_grid_a_chip_spans_bound_its_whole_map():
    chip = hrc_wcs()
    grid = tan_wcs(crval=(chip.wcs.crval[0], chip.wcs.crval[1]), crpix=(700.0, 700.0), rotation=30)
    _, _, y_min, y_max = pixmap_outline_extent(compute_pixmap(chip, HRC_SHAPE, grid))
    low, high = chip_rows_on_grid(chip, HRC_SHAPE, grid)
    # the outline's pixel edges, sampled every 64 pixels along a side that distortion bends
    assert low == pytest.approx(y_min, abs=0.05) and high == pytest.approx(y_max, abs=0.05)
