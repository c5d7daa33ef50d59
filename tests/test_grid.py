"""Tests of drizzlepipe.algorithms.grid: footprints, local scale/orientation, default grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from drizzlepipe.algorithms.grid import (
    OutputGrid,
    OutputGridTooLargeError,
    chip_footprint,
    default_output_grid,
    footprint_center,
    grid_from_reference,
    orientation,
    pixel_scale,
    position_runs,
)
from drizzlepipe.algorithms.pixmap import compute_pixmap
from hrcwcs import HRC_IDCSCALE, HRC_SHAPE, hrc_wcs

# ACS/HRC j8bt06nyq SCI,1 WCS (TAN-SIP order 4), copied from the exposure's header.


def tan_wcs(shape, *, crval=(150.0, 2.0), crpix=None, scale=0.05, rotation=0.0, mirror=False):
    """Undistorted TAN WCS; ``rotation`` = PA of +Y (deg); east left unless ``mirror``."""
    ny, nx = shape
    theta = math.radians(rotation)
    s = scale / 3600
    parity = 1.0 if mirror else -1.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = crval
    wcs.wcs.crpix = crpix if crpix is not None else ((nx + 1) / 2, (ny + 1) / 2)
    wcs.wcs.cd = s * np.array(
        [[parity * math.cos(theta), math.sin(theta)], [-parity * math.sin(theta), math.cos(theta)]]
    )
    wcs.pixel_shape = (nx, ny)
    return wcs


def inverse_gnomonic(ra0, dec0, xi, eta):
    """RA, Dec (deg) of standard coordinates (deg) about (ra0, dec0); written out independently."""
    xi, eta = np.deg2rad(xi), np.deg2rad(eta)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        eta_term = np.where(rho > 0, eta * np.sin(c) * math.cos(dec0) / rho, 0)
    dec = np.arcsin(np.cos(c) * math.sin(dec0) + eta_term)
    ra = ra0 + np.arctan2(
        xi * np.sin(c), rho * math.cos(dec0) * np.cos(c) - eta * math.sin(dec0) * np.sin(c)
    )
    return np.rad2deg(ra) % 360, np.rad2deg(dec)


def mapped_edges(wcs, shape, grid):
    """Output-pixel positions of points on the chip's outer pixel edges (every 8 px)."""
    ny, nx = shape
    xs = np.r_[np.arange(-0.5, nx - 0.5, 8), nx - 0.5]
    ys = np.r_[np.arange(-0.5, ny - 0.5, 8), ny - 0.5]
    x = np.r_[xs, xs, np.full(ys.size, -0.5), np.full(ys.size, nx - 0.5)]
    y = np.r_[np.full(xs.size, -0.5), np.full(xs.size, ny - 0.5), ys, ys]
    ra, dec = wcs.all_pix2world(x, y, 0)
    return np.column_stack(grid.wcs.all_world2pix(ra, dec, 0))


def test_footprint_of_tan_chip_matches_analytic_corners():
    shape = (80, 100)
    wcs = tan_wcs(shape, crval=(30.0, 60.0), scale=0.1)
    footprint = chip_footprint(wcs, shape)
    # north up, east left: pixel offset (dx, dy) from the centre is (xi, eta) = (-s dx, s dy)
    centre = ((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    corners = np.array([[-0.5, -0.5], [99.5, -0.5], [99.5, 79.5], [-0.5, 79.5]])
    s = 0.1 / 3600
    ra, dec = inverse_gnomonic(
        30.0, 60.0, -s * (corners[:, 0] - centre[0]), s * (corners[:, 1] - centre[1])
    )
    # 1e-9 deg = 4e-6 arcsec: float64 rounding of the two independent computations
    assert np.allclose(footprint[:, 0], ra, rtol=0, atol=1e-9)
    assert np.allclose(footprint[:, 1], dec, rtol=0, atol=1e-9)


def test_footprint_border_points_lie_on_the_outline():
    shape = (50, 70)
    wcs = tan_wcs(shape, rotation=20.0)
    outline = chip_footprint(wcs, shape, border_step=10)
    x, y = wcs.all_world2pix(outline[:, 0], outline[:, 1], 0)
    on_edge = np.isclose(np.abs(x - 34.5), 35.0, atol=1e-6) | np.isclose(
        np.abs(y - 24.5), 25.0, atol=1e-6
    )
    assert on_edge.all()
    # 4 sides of 7 and 5 segments of <= 10 px each
    assert len(outline) == 2 * (7 + 5)


@pytest.mark.parametrize("rotation", [0.0, 37.0, -120.0, 180.0])
@pytest.mark.parametrize("mirror", [False, True])
def test_pixel_scale_and_orientation_of_tan_chip(rotation, mirror):
    shape = (64, 96)
    wcs = tan_wcs(shape, crval=(210.0, -30.0), scale=0.04, rotation=rotation, mirror=mirror)
    # central differences of a gnomonic projection over half a pixel: relative error ~1e-9
    assert pixel_scale(wcs, shape) == pytest.approx(0.04, rel=1e-7)
    assert orientation(wcs, shape) == pytest.approx(rotation if rotation != -180 else 180, abs=1e-6)


def test_pixel_scale_and_orientation_of_distorted_hrc_chip():
    wcs = hrc_wcs()
    cd = wcs.wcs.cd
    # SIP starts at second order and CRPIX is half a pixel from the chip centre, so the local
    # Jacobian there differs from CD by ~|A_1_1| * 0.5 = 5e-6 relative: 1e-4 is a loose bound.
    expected_scale = math.sqrt(abs(np.linalg.det(cd))) * 3600
    assert pixel_scale(wcs, HRC_SHAPE) == pytest.approx(expected_scale, rel=1e-4)
    expected_pa = math.degrees(math.atan2(cd[0, 1], cd[1, 1]))
    assert orientation(wcs, HRC_SHAPE) == pytest.approx(expected_pa, abs=0.01)
    # the local scale is 6% larger than IDCSCALE: the difference the docstring warns about
    assert pixel_scale(wcs, HRC_SHAPE) / HRC_IDCSCALE == pytest.approx(1.06, abs=0.01)


def test_footprint_center_across_ra_zero_and_near_pole():
    points = np.array([[359.9, 10.0], [0.1, 10.0], [359.9, 10.2], [0.1, 10.2]])
    ra, dec = footprint_center(points)
    assert min(ra, 360 - ra) < 1e-9
    assert dec == pytest.approx(10.1, abs=1e-4)
    ring = np.column_stack([np.arange(0, 360, 30.0), np.full(12, 89.0)])
    assert footprint_center(ring)[1] == pytest.approx(90.0, abs=1e-9)


def test_default_grid_of_one_undistorted_chip_is_the_chip_grid():
    shape = (120, 200)
    wcs = tan_wcs(shape, crval=(83.0, -5.0), scale=0.05, rotation=25.0)
    grid = default_output_grid([wcs], [shape])
    assert isinstance(grid, OutputGrid)
    assert grid.shape == shape
    assert grid.wcs.pixel_shape == (200, 120)
    pixmap = compute_pixmap(wcs, shape, grid.wcs)
    y, x = np.indices(shape)
    # identity to 1e-6 px: TAN round trips through RA/Dec lose ~1e-9 px
    assert np.abs(pixmap[..., 0] - x).max() < 1e-6
    assert np.abs(pixmap[..., 1] - y).max() < 1e-6


def test_default_grid_covers_every_distorted_chip_tightly():
    chips = [hrc_wcs(), hrc_wcs((5.0, 3.0)), hrc_wcs((-2.0, 11.0))]
    shapes = [HRC_SHAPE] * 3
    grid = default_output_grid(chips, shapes, reference_scale=HRC_IDCSCALE)
    ny, nx = grid.shape
    edges = np.vstack([mapped_edges(w, s, grid) for w, s in zip(chips, shapes)])
    # every input pixel edge on the grid (1e-6 px: round-trip rounding)
    assert edges[:, 0].min() >= -0.5 - 1e-6 and edges[:, 0].max() <= nx - 0.5 + 1e-6
    assert edges[:, 1].min() >= -0.5 - 1e-6 and edges[:, 1].max() <= ny - 0.5 + 1e-6
    # and no more than one pixel of slack per axis (ceil of the extent)
    assert np.ptp(edges[:, 0]) > nx - 1 and np.ptp(edges[:, 1]) > ny - 1
    # scale, orientation and parity as AstroDrizzle's perfect grid
    assert grid.pixel_scale == pytest.approx(HRC_IDCSCALE, rel=1e-7)
    # the CD matrix carries the first chip's PA; measured at the grid centre, a few arcsec from
    # the tangent point at Dec -72, meridian convergence changes it by ~1e-4 deg
    cd = grid.wcs.wcs.cd
    cd_pa = math.degrees(math.atan2(cd[0, 1], cd[1, 1]))
    assert cd_pa == pytest.approx(orientation(chips[0], HRC_SHAPE), abs=1e-9)
    assert grid.orientation == pytest.approx(cd_pa, abs=1e-3)
    assert np.linalg.det(grid.wcs.wcs.cd) < 0
    # tangent point at the mean direction of the chip corners
    centre = footprint_center([chip_footprint(w, s) for w, s in zip(chips, shapes)])
    assert np.allclose(grid.wcs.wcs.crval, centre, atol=1e-12)


def test_default_grid_of_mirrored_chip_is_east_left_and_covers_it():
    shape = (100, 60)
    wcs = tan_wcs(shape, rotation=30.0, mirror=True)
    assert np.linalg.det(wcs.wcs.cd) > 0
    grid = default_output_grid([wcs], [shape])
    assert np.linalg.det(grid.wcs.wcs.cd) < 0
    edges = mapped_edges(wcs, shape, grid)
    ny, nx = grid.shape
    assert edges[:, 0].min() >= -0.5 - 1e-6 and edges[:, 0].max() <= nx - 0.5 + 1e-6
    assert edges[:, 1].min() >= -0.5 - 1e-6 and edges[:, 1].max() <= ny - 0.5 + 1e-6


@pytest.mark.parametrize("rotation", [0.0, 90.0, -45.0])
def test_rotation_sets_position_angle_and_keeps_coverage(rotation):
    chips = [hrc_wcs(), hrc_wcs((4.0, -4.0))]
    grid = default_output_grid(chips, [HRC_SHAPE] * 2, rotation=rotation)
    cd = grid.wcs.wcs.cd
    assert math.degrees(math.atan2(cd[0, 1], cd[1, 1])) == pytest.approx(rotation, abs=1e-9)
    # at the grid centre, off the tangent point at Dec -72: meridian convergence ~1e-4 deg
    assert grid.orientation == pytest.approx(rotation, abs=1e-3)
    edges = np.vstack([mapped_edges(w, HRC_SHAPE, grid) for w in chips])
    ny, nx = grid.shape
    assert edges[:, 0].min() >= -0.5 - 1e-6 and edges[:, 0].max() <= nx - 0.5 + 1e-6
    assert edges[:, 1].min() >= -0.5 - 1e-6 and edges[:, 1].max() <= ny - 0.5 + 1e-6


def test_pixel_scale_ratio_and_pixel_scale():
    shape = (100, 100)
    wcs = tan_wcs(shape, scale=0.1)
    half = default_output_grid([wcs], [shape], pixel_scale_ratio=0.5)
    assert half.pixel_scale == pytest.approx(0.05, rel=1e-7)
    assert half.shape == (200, 200)
    absolute = default_output_grid([wcs], [shape], pixel_scale=0.25)
    assert absolute.pixel_scale == pytest.approx(0.25, rel=1e-7)
    assert absolute.shape == (40, 40)
    ref = default_output_grid([wcs], [shape], reference_scale=0.08, pixel_scale_ratio=2.0)
    assert ref.pixel_scale == pytest.approx(0.16, rel=1e-7)
    with pytest.raises(ValueError, match="either pixel_scale or pixel_scale_ratio"):
        default_output_grid([wcs], [shape], pixel_scale=0.2, pixel_scale_ratio=2.0)


def test_output_shape_crval_and_crpix():
    shape = (100, 100)
    wcs = tan_wcs(shape, crval=(10.0, 20.0))
    sized = default_output_grid([wcs], [shape], output_shape=(51, 80))
    assert sized.shape == (51, 80)
    assert tuple(sized.wcs.wcs.crpix) == (40.5, 26.0)  # ((nx + 1) / 2, (ny + 1) / 2)
    placed = default_output_grid([wcs], [shape], crval=(10.001, 20.002), crpix=(3.0, 4.0))
    assert tuple(placed.wcs.wcs.crval) == (10.001, 20.002)
    x, y = placed.wcs.all_world2pix([[10.001, 20.002]], 1)[0]
    assert (x, y) == pytest.approx((3.0, 4.0), abs=1e-9)
    # explicit CRVAL off the data: the grid still covers the chip
    offset = default_output_grid([wcs], [shape], crval=(10.01, 20.0))
    edges = mapped_edges(wcs, shape, offset)
    assert edges[:, 0].min() >= -0.5 - 1e-6
    assert edges[:, 0].max() <= offset.shape[1] - 0.5 + 1e-6


def test_grid_too_large_is_a_clear_value_error():
    wcs = tan_wcs((100, 100), scale=0.1)
    with pytest.raises(OutputGridTooLargeError, match="exceeds the limit") as info:
        # 0.1 mas pixels: a unit typo; 1e8 x 1e8 pixels
        default_output_grid([wcs], [(100, 100)], pixel_scale=1e-7)
    assert isinstance(info.value, ValueError)
    with pytest.raises(OutputGridTooLargeError):
        default_output_grid([wcs], [(100, 100)], output_shape=(2000, 2000), max_pixels=10**6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pixel_scale": -1.0},
        {"pixel_scale_ratio": 0.0},
        {"rotation": float("nan")},
        {"output_shape": (0, 10)},
        {"crval": (10.0, 95.0)},
        {"crpix": (1.0,)},
    ],
)
def test_invalid_grid_parameters(kwargs):
    wcs = tan_wcs((10, 10))
    with pytest.raises(ValueError):
        default_output_grid([wcs], [(10, 10)], **kwargs)


def test_mismatched_inputs_are_rejected():
    wcs = tan_wcs((10, 10))
    with pytest.raises(ValueError, match="at least one chip"):
        default_output_grid([], [])
    with pytest.raises(ValueError, match="2 WCS objects but 1 shapes"):
        default_output_grid([wcs, wcs], [(10, 10)])


def test_grid_from_reference_copies_the_wcs():
    ref = tan_wcs((300, 400), rotation=10.0)
    ref.pixel_shape = None
    grid = grid_from_reference(ref, (300, 400))
    assert grid.shape == (300, 400)
    assert grid.wcs.pixel_shape == (400, 300)
    assert ref.pixel_shape is None  # the caller's object is untouched
    header = grid.to_fits_header()
    assert (header["NAXIS1"], header["NAXIS2"]) == (400, 300)
    assert header["CTYPE1"] == "RA---TAN"
    with pytest.raises(OutputGridTooLargeError):
        grid_from_reference(ref, (300, 400), max_pixels=1000)


def test_grid_from_reference_reduces_a_cube_wcs_to_celestial():
    cube = WCS(naxis=3)
    cube.wcs.ctype = ["RA---TAN", "DEC--TAN", "WAVE"]
    cube.wcs.crval = [10.0, 20.0, 5e-7]
    cube.wcs.cdelt = [-1e-5, 1e-5, 1e-9]
    grid = grid_from_reference(cube, (50, 60))
    assert grid.wcs.naxis == 2
    assert grid.pixel_scale == pytest.approx(0.036, rel=1e-6)


def test_grid_from_reference_accepts_gwcs():
    gwcs_wcs = pytest.importorskip("gwcs.wcs")
    from astropy import coordinates as coord
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf

    s = 0.05 / 3600
    transform = (
        (models.Shift(-49.5) & models.Shift(-29.5))
        | models.AffineTransformation2D(matrix=[[-s, 0], [0, s]])
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(150.0, 2.0, 180.0)
    )
    detector = cf.Frame2D(name="detector")
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    wcs = gwcs_wcs.WCS([(detector, transform), (sky, None)])
    grid = grid_from_reference(wcs, (60, 100))
    assert grid.pixel_scale == pytest.approx(0.05, rel=1e-7)
    assert grid.orientation == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(TypeError):
        grid.to_fits_header()


@pytest.mark.peer
def test_footprint_corners_agree_with_astropy_calc_footprint():
    wcs = hrc_wcs()
    # astropy's outer-edge corners (center=False) with distortion (undistort=True)
    expected = wcs.calc_footprint(undistort=True, center=False)
    ours = chip_footprint(wcs, HRC_SHAPE)
    # astropy orders corners (1,1), (1,ny), (nx,ny), (nx,1); compare as sets of points
    for point in ours:
        separation = np.min(np.hypot(*(expected - point).T))
        assert separation < 1e-10


@pytest.mark.peer
def test_default_grid_agrees_with_stwcs_output_wcs():
    import os

    os.environ.setdefault("ASTROMETRY_STEP_CONTROL", "OFF")
    from stwcs.distortion import utils as stwcs_utils
    from stwcs.wcsutil import HSTWCS

    def hst(shift):
        header = hrc_wcs(shift).to_header(relax=True)
        header["IDCSCALE"] = HRC_IDCSCALE
        hstwcs = HSTWCS(fits.HDUList([fits.PrimaryHDU(header=header)]), ext=0)
        hstwcs.pixel_shape = HRC_SHAPE[::-1]
        return hstwcs

    shifts = [(0.0, 0.0), (6.0, 2.0)]
    theirs = stwcs_utils.output_wcs([hst(s) for s in shifts])
    ours = default_output_grid(
        [hrc_wcs(s) for s in shifts], [HRC_SHAPE] * 2, reference_scale=HRC_IDCSCALE
    )
    their_scale = math.sqrt(abs(np.linalg.det(theirs.wcs.cd))) * 3600
    assert ours.pixel_scale == pytest.approx(their_scale, rel=1e-6)
    # stwcs takes ORIENTAT from the CD matrix (CRPIX), we from the chip centre, half a pixel away
    their_pa = math.degrees(math.atan2(theirs.wcs.cd[0, 1], theirs.wcs.cd[1, 1]))
    assert ours.orientation == pytest.approx(their_pa, abs=0.01)
    # stwcs bounds pixel centres with ceil(max - min): one pixel smaller than our edge bound
    their_ny, their_nx = theirs.pixel_shape[1], theirs.pixel_shape[0]
    assert 0 <= ours.shape[0] - their_ny <= 2 and 0 <= ours.shape[1] - their_nx <= 2
    # the two grids place the sky within a pixel of each other (shifted by the extra slack)
    ny, nx = ours.shape
    sky = ours.wcs.all_pix2world([[nx / 2, ny / 2]], 0)
    their_xy = theirs.all_world2pix(sky, 0)[0]
    assert np.hypot(their_xy[0] - their_nx / 2, their_xy[1] - their_ny / 2) < 1.5


def test_runs_by_position_put_each_chip_position_in_one_run():
    # four WFC3/UVIS-like exposures: the lower chips span rows 0-2131, the upper 2082-4213
    lower = [(4.7, 2127.8), (3.4, 2123.7), (-0.2, 2124.1), (11.4, 2131.0)]
    upper = [(2086.9, 4210.0), (2085.6, 4205.9), (2082.0, 4206.2), (2093.6, 4213.2)]
    extents = [chip for pair in zip(lower, upper) for chip in pair]  # input order
    assert position_runs(extents, 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert position_runs(extents, 1) == [list(range(8))]
    # equal pixels per run; chips of unknown position last; never an empty run
    assert position_runs([(0, 9), (0, 9), (0, 9)], 2, weights=[1, 1, 2]) == [[0, 1], [2]]
    assert position_runs([None, (0, 5), None], 3) == [[1], [0], [2]]
    assert position_runs([(0, 1)], 4) == [[0]]
    assert position_runs([], 2) == [[]]
