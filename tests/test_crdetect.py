"""Tests of drizzlepipe.algorithms.crdetect (AstroDrizzle's driz_cr on plain arrays).

Oracles:
* drizzlepac 3.11 (peer tests): ``quickDeriv.qderiv`` plus the driz_cr formula transcribed from
  ``drizzlepac/drizCR.py`` (lines 310-373 of 3.11: two passes, ``convolve2d`` with
  ``boundary='symm'``, grow and CTE kernels), in ``_drizzlepac_cr_mask`` below.
* stcal's ``flag_resampled_crs`` (JWST), written from its published formula because stcal cannot
  be installed beside drizzle 3 (``_stcal_flag_resampled_crs`` below).
* Truth: cosmic rays injected into simulated dithered exposures whose blot is made with the
  ``drizzle`` package (drizzle, median, poly5 blot), so the blot is smoothed as in a real run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import erf

from drizzlepipe.algorithms.crdetect import (
    CTEGrowthSkippedWarning,
    derivative_image,
    detect_cosmic_rays,
    parse_pair,
    summarize_cr_mask,
)

SKY = 80.0  # e-/pixel, typical of an ACS/WFC or WFC3/UVIS broad-band exposure
READNOISE = 4.0  # e-


# --------------------------------------------------------------------------------------------
# simulation helpers
# --------------------------------------------------------------------------------------------


def _smooth_scene(shape):
    """Smooth sky: SKY + gradient + four extended (sigma 8-50 px) sources, e- per pixel."""

    def scene(dx, dy):
        y, x = np.indices(shape, dtype=np.float64)
        y += dy
        x += dx
        model = SKY + 15.0 * x / shape[1] + 10.0 * y / shape[0]
        for cy, cx, width, peak in (
            (0.30, 0.30, 30, 2000.0),
            (0.70, 0.60, 12, 800.0),
            (0.20, 0.80, 8, 3000.0),
            (0.80, 0.20, 50, 400.0),
        ):
            r2 = (y - cy * shape[0]) ** 2 + (x - cx * shape[1]) ** 2
            model += peak * np.exp(-r2 / (2.0 * width * width))
        return model

    return scene


def _star_scene(shape, star_y, star_x, star_flux, fwhm):
    """Sky plus Gaussian stars of the given FWHM (px), integrated over each pixel (e-)."""
    sigma_sqrt2 = fwhm / 2.3548 * np.sqrt(2.0)
    offsets = np.arange(-5, 6)

    def pixel_fractions(centre):
        edges = np.round(centre) + offsets
        return edges.astype(int), 0.5 * (
            erf((edges + 0.5 - centre) / sigma_sqrt2) - erf((edges - 0.5 - centre) / sigma_sqrt2)
        )

    def scene(dx, dy):
        model = np.full(shape, SKY)
        for y0, x0, flux in zip(star_y, star_x, star_flux, strict=True):
            rows, fy = pixel_fractions(y0 - dy)
            cols, fx = pixel_fractions(x0 - dx)
            model[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] += flux * np.outer(fy, fx)
        return model

    return scene


# A 4-point box dither (px) and an output grid offset by a fraction of a pixel from the first
# exposure, so that the blot really interpolates (as a reference grid would in a real run).
DITHERS = ((0.0, 0.0), (0.5, 0.5), (0.25, 0.75), (0.75, 0.25))
GRID_OFFSET = (0.3, 0.6)


def _shift_pixmap(shape, dx, dy):
    y, x = np.indices(shape, dtype=np.float64)
    return np.dstack([x + dx, y + dy])


def _first_exposure_and_blot(scene, shape, rng, first_exposure_extra=None, registration_rms=0.0):
    """Simulate the dithered exposures of ``scene`` and blot their median onto the first one.

    Exposure k's pixel (y, x) is centred on sky position (y + dy_k, x + dx_k) plus a
    registration error that the pixel maps do not know. Each exposure gets Poisson noise and
    read noise; ``first_exposure_extra`` (e-) is added to the first one only. The exposures are
    drizzled (square kernel, pixfrac 1) onto the output grid, median-combined and blotted back
    with poly5, as AstroDrizzle's default chain does. Returns (first exposure, blot, its
    registration error (dx, dy)).
    """
    from drizzle.resample import Drizzle, blot_image

    registration = rng.normal(0.0, registration_rms, (len(DITHERS), 2))
    singles = []
    first = None
    for k, (dx, dy) in enumerate(DITHERS):
        expected = scene(dx + registration[k, 0], dy + registration[k, 1])
        exposure = rng.poisson(expected) + rng.normal(0.0, READNOISE, shape)
        if k == 0:
            if first_exposure_extra is not None:
                exposure = exposure + first_exposure_extra
            first = exposure.astype(np.float32)
        driz = Drizzle(kernel="square", out_shape=shape, fillval=np.nan)
        driz.add_image(
            (first if k == 0 else exposure).astype(np.float32),
            exptime=1.0,
            pixmap=_shift_pixmap(shape, dx - GRID_OFFSET[0], dy - GRID_OFFSET[1]),
            in_units="cps",
        )
        singles.append(driz.out_img)
    median = np.nanmedian(np.array(singles), axis=0).astype(np.float32)
    blot = blot_image(
        np.nan_to_num(median),
        _shift_pixmap(shape, -GRID_OFFSET[0], -GRID_OFFSET[1]),
        iscale=1.0,
        interp="poly5",
    )
    return first, blot, registration[0]


def _cosmic_ray_deposit(shape, rng, n_events):
    """Charge (e-) of ``n_events`` cosmic rays: straight tracks 1-8 px long with random angle,
    log-normal charge per track pixel (median 400 e-, ln-sigma 1: about 1 in 50 track pixels
    is below 50 e-), and charge diffusion of 8% (edge neighbours) and 3% (corner neighbours).
    """
    deposit = np.zeros(shape)
    for _ in range(n_events):
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        length = int(rng.integers(1, 9))
        angle = rng.uniform(0.0, np.pi)
        steps = np.arange(length)
        rows = np.clip(np.round(y0 + steps * np.sin(angle)).astype(int), 0, shape[0] - 1)
        cols = np.clip(np.round(x0 + steps * np.cos(angle)).astype(int), 0, shape[1] - 1)
        charge = np.exp(rng.normal(np.log(400.0), 1.0, length))
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                share = 1.0 if dx == dy == 0 else (0.08 if dx * dy == 0 else 0.03)
                r, c = rows + dy, cols + dx
                inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
                np.add.at(deposit, (r[inside], c[inside]), share * charge[inside])
    return deposit


def _peer_arrays(rng, shape=(200, 300), sky=SKY):
    """Data/blot pair for the oracle comparisons (e-, sky included in both).

    The blot has smooth structure, a few sharp stars (large derivative) and a little noise (as a
    median has); the data add Poisson + read noise, cosmic rays everywhere and bright ones in the
    2-pixel edge band, so that every branch of the formula is exercised.
    """
    ny, nx = shape
    y, x = np.indices(shape, dtype=np.float64)
    model = sky + 30.0 * np.sin(x / 40.0) * np.cos(y / 30.0) + 30.0
    for _ in range(25):
        cy, cx = rng.uniform(5, ny - 5), rng.uniform(5, nx - 5)
        model += rng.uniform(200, 20000) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.8**2))
    blot = (model + rng.normal(0.0, 2.0, shape)).astype(np.float32)
    data = rng.poisson(model) + rng.normal(0.0, READNOISE, shape)
    data += _cosmic_ray_deposit(shape, rng, 150)
    band_rows = rng.choice([0, 1, ny - 2, ny - 1], 30)
    band_cols = rng.integers(0, nx, 30)
    data[band_rows, band_cols] += rng.uniform(100, 300, 30)
    data[rng.integers(0, ny, 30), rng.choice([0, 1, nx - 2, nx - 1], 30)] += rng.uniform(
        100, 300, 30
    )
    return data.astype(np.float32), blot


def _edge_band(shape, width):
    band = np.zeros(shape, dtype=bool)
    band[:width] = band[-width:] = True
    band[:, :width] = band[:, -width:] = True
    return band


# --------------------------------------------------------------------------------------------
# parameters and bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["3.5 3.0", "3.5,3.0", "3.5;3.0", "  3.5 ,\t3.0 ", "3.5; 3", (3.5, 3.0), [3.5, 3], ("3.5", 3)],
)
def test_parse_pair_accepts_astrodrizzle_forms(value):
    assert parse_pair(value, "snr") == (3.5, 3.0)


@pytest.mark.parametrize(
    "value",
    ["3.5", "3.5 3.0 2.5", "", "  ", "a b", "3.5 nan", "inf 1", 3.5, None, (1.0,), [1, 2, 3]],
)
def test_parse_pair_rejects_wrong_count_or_non_numbers(value):
    with pytest.raises(ValueError, match="driz_cr_snr"):
        parse_pair(value, "driz_cr_snr")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"snr": "3.5"}, "snr must hold exactly two values"),
        ({"snr": "3.5 3.0 2.0"}, "snr must hold exactly two values"),
        ({"scale": "1.2"}, "scale must hold exactly two values"),
        ({"scale": "1.2 x"}, "scale must hold two numbers"),
        ({"snr": "-1 3"}, "snr values must be >= 0"),
        ({"noise": "err"}, "needs the ERR array"),
        ({"noise": "poisson"}, "noise must be one of"),
        ({"noise": "err", "err": np.ones((3, 3))}, "err shape"),
        ({"gain": 0.0}, "gain must be a positive number"),
        ({"readnoise": -1.0}, "readnoise must be a number >= 0"),
        ({"grow": 0}, "grow must be >= 1"),
        ({"grow": 1.5}, "grow must be an integer"),
        ({"ctegrow": -2}, "ctegrow must be >= 0"),
        ({"readout_direction": 2}, "readout_direction must be -1, 0 or"),
    ],
)
def test_detect_rejects_bad_parameters_with_clear_errors(kwargs, message):
    data = np.full((8, 9), 100.0, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        detect_cosmic_rays(data, data.copy(), **kwargs)


def test_detect_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="blot shape"):
        detect_cosmic_rays(np.zeros((5, 5)), np.zeros((5, 6)))
    with pytest.raises(ValueError, match="2-D"):
        detect_cosmic_rays(np.zeros(5), np.zeros(5))


# --------------------------------------------------------------------------------------------
# derivative image
# --------------------------------------------------------------------------------------------


def test_derivative_equals_brute_force_over_existing_finite_neighbours(rng):
    blot = rng.normal(100.0, 10.0, (13, 17)).astype(np.float32)
    blot[rng.random(blot.shape) < 0.15] = np.nan
    blot[6, 1:4] = np.nan  # an isolated finite pixel below: (5,2) keeps three finite neighbours
    expected = np.zeros(blot.shape, dtype=np.float32)
    ny, nx = blot.shape
    for i in range(ny):
        for j in range(nx):
            if np.isnan(blot[i, j]):
                expected[i, j] = np.nan
                continue
            diffs = [
                abs(blot[i, j] - blot[a, b])
                for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                if 0 <= a < ny and 0 <= b < nx and np.isfinite(blot[a, b])
            ]
            expected[i, j] = max(diffs, default=0.0)
    got = derivative_image(blot)
    assert got.dtype == np.float32
    # exact: both take |a - b| of the same float32 values and a maximum
    np.testing.assert_array_equal(got, expected)


def test_derivative_of_a_plane_is_the_steeper_slope_also_on_the_edges():
    y, x = np.indices((6, 7), dtype=np.float64)
    plane = 500.0 + 3.0 * x - 5.0 * y  # qderiv would give ~|plane| ~ 500 on the edges
    np.testing.assert_allclose(derivative_image(plane), 5.0, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# growth geometry
# --------------------------------------------------------------------------------------------


def _single_cr_chip(row, col, shape=(20, 15)):
    """Flat chip with one bright cosmic-ray pixel; returns (data, blot)."""
    blot = np.full(shape, 100.0, dtype=np.float32)
    data = blot.copy()
    data[row, col] += 1000.0
    return data, blot


def _flagged(mask):
    return {tuple(int(v) for v in p) for p in np.argwhere(mask)}


def test_single_cosmic_ray_without_growth_flags_only_itself():
    data, blot = _single_cr_chip(10, 7)
    assert _flagged(detect_cosmic_rays(data, blot, readnoise=READNOISE)) == {(10, 7)}


@pytest.mark.parametrize(
    ("grow", "rows", "cols"),
    [
        (3, range(9, 12), range(6, 9)),
        # even widths follow scipy.signal.convolve2d(mode="same"), as AstroDrizzle: the box
        # spans offsets -((grow - 1) // 2) .. grow // 2 from the cosmic ray
        (2, range(10, 12), range(7, 9)),
        (4, range(9, 13), range(6, 10)),
        (5, range(8, 13), range(5, 10)),
    ],
)
def test_grow_flags_a_box_of_width_grow(grow, rows, cols):
    data, blot = _single_cr_chip(10, 7)
    mask = detect_cosmic_rays(data, blot, readnoise=READNOISE, grow=grow)
    assert _flagged(mask) == {(r, c) for r in rows for c in cols}


def test_grow_box_is_clipped_at_the_corner():
    data, blot = _single_cr_chip(0, 0)
    mask = detect_cosmic_rays(data, blot, readnoise=READNOISE, grow=5)
    assert _flagged(mask) == {(r, c) for r in range(3) for c in range(3)}


@pytest.mark.parametrize(
    ("direction", "cr_row", "expected_rows"),
    [
        (1, 10, range(6, 11)),  # drizzlepac cte_dir=+1: trail at lower row indices
        (-1, 10, range(10, 15)),  # cte_dir=-1: trail at higher row indices
        (1, 2, range(0, 3)),  # trail stops at the chip edge
        (-1, 18, range(18, 20)),
        (1, 18, range(14, 19)),  # nothing on the other side of the cosmic ray
    ],
)
def test_ctegrow_flags_a_trail_along_the_column(direction, cr_row, expected_rows):
    data, blot = _single_cr_chip(cr_row, 7)
    mask = detect_cosmic_rays(
        data, blot, readnoise=READNOISE, ctegrow=4, readout_direction=direction
    )
    assert _flagged(mask) == {(r, 7) for r in expected_rows}


def test_grow_and_ctegrow_both_start_from_the_two_pass_mask():
    data, blot = _single_cr_chip(10, 7)
    mask = detect_cosmic_rays(
        data, blot, readnoise=READNOISE, grow=3, ctegrow=3, readout_direction=-1
    )
    box = {(r, c) for r in range(9, 12) for c in range(6, 9)}
    trail = {(r, 7) for r in range(11, 14)}  # from the cosmic ray, not from the grown box
    assert _flagged(mask) == box | trail


def test_ctegrow_without_readout_direction_warns_and_does_not_grow():
    data, blot = _single_cr_chip(10, 7)
    with pytest.warns(CTEGrowthSkippedWarning, match="no readout direction"):
        mask = detect_cosmic_rays(data, blot, readnoise=READNOISE, ctegrow=5, readout_direction=0)
    # AstroDrizzle would flag all 300 pixels here; we flag the cosmic ray only
    assert _flagged(mask) == {(10, 7)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detect_cosmic_rays(data, blot, readnoise=READNOISE, ctegrow=0, readout_direction=0)


# --------------------------------------------------------------------------------------------
# NaN, noise models, summary
# --------------------------------------------------------------------------------------------


def test_nan_is_never_flagged_and_does_not_disturb_neighbours(rng):
    shape = (60, 70)
    blot = np.full(shape, SKY, dtype=np.float32)
    data = (rng.poisson(SKY, shape) + rng.normal(0, READNOISE, shape)).astype(np.float32)
    data[10, 10] = np.nan
    blot[30, 30] = np.nan
    blot[45, 20:23] = np.nan
    data[45, 23] += 500.0  # a cosmic ray right next to a hole in the blot
    data[31, 30] += 500.0
    mask = detect_cosmic_rays(data, blot, readnoise=READNOISE)
    assert not mask[10, 10] and not mask[30, 30] and not mask[45, 20:23].any()
    assert mask[45, 23] and mask[31, 30]
    # Everything else is pure noise: a 3.5-sigma test flags ~5e-4 of 4200 pixels (expect ~2);
    # AstroDrizzle would flag the 5 NaN pixels and the 4-neighbours of the 4 blot NaNs (~12).
    assert mask.sum() - 2 <= 6


def test_noise_err_uses_the_err_array_not_the_detector_model():
    shape = (9, 9)
    blot = np.full(shape, 100.0, dtype=np.float32)
    data = blot.copy()
    data[4, 4] += 50.0  # 5 sigma of the detector noise sqrt(100) = 10
    err = np.full(shape, 10.0, dtype=np.float32)
    assert detect_cosmic_rays(data, blot, noise="err", err=err)[4, 4]
    err[4, 4] = 20.0  # now only 2.5 sigma
    assert not detect_cosmic_rays(data, blot, noise="err", err=err).any()
    # the detector model ignores err: 50 e- > 3.5 * 10 e-
    assert detect_cosmic_rays(data, blot, noise="detector", err=err)[4, 4]


def test_gain_scales_the_detector_noise_as_in_drizzlepac():
    # data in DN with gain 2 e-/DN: sigma_DN = sqrt(2 * 100 + 4**2) / 2 = 7.35 DN
    blot = np.full((9, 9), 100.0, dtype=np.float32)
    data = blot.copy()
    data[4, 4] += 3.5 * 7.35 - 0.05  # just below the first-pass threshold
    assert not detect_cosmic_rays(data, blot, gain=2.0, readnoise=4.0).any()
    data[4, 4] += 0.1  # just above
    assert _flagged(detect_cosmic_rays(data, blot, gain=2.0, readnoise=4.0)) == {(4, 4)}


def test_summarize_counts_flagged_pixels():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, :5] = True
    assert tuple(summarize_cr_mask(mask)) == (5, 100, 0.05)
    excluded = np.zeros_like(mask)
    excluded[5:] = True
    excluded[0, 0] = True
    summary = summarize_cr_mask(mask, excluded=excluded)
    assert (summary.n_flagged, summary.n_pixels) == (4, 49)
    assert summary.fraction == pytest.approx(4 / 49)
    assert summarize_cr_mask(mask, excluded=np.ones_like(mask)).fraction == 0.0


# --------------------------------------------------------------------------------------------
# noise="err" against stcal's flag_resampled_crs
# --------------------------------------------------------------------------------------------


def _stcal_abs_deriv(array):
    """stcal's ``_abs_deriv`` (stcal #311): max |a - neighbour| over the 4 finite neighbours
    that exist, NaN where the input is NaN, 0 without a finite neighbour. Written here with
    NaN padding and nanmax, independently of drizzlepipe's fmax implementation."""
    padded = np.pad(array.astype(np.float64), 1, constant_values=np.nan)
    centre = padded[1:-1, 1:-1]
    diffs = np.stack(
        [
            np.abs(centre - padded[:-2, 1:-1]),
            np.abs(centre - padded[2:, 1:-1]),
            np.abs(centre - padded[1:-1, :-2]),
            np.abs(centre - padded[1:-1, 2:]),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        deriv = np.nanmax(diffs, axis=0)
    deriv[np.isnan(deriv) & np.isfinite(array)] = 0.0
    return deriv.astype(array.dtype)


def _stcal_flag_resampled_crs(sci, err, blot, snr1, snr2, scale1, scale2, backg):
    """stcal.outlier_detection.utils.flag_resampled_crs (stcal 1.19; jwst-stcal-notes.md s.2):
    diff = |sci - blot - backg|; pass k: diff > scale_k * D + snr_k * nan_to_num(err);
    CR = 3x3 dilation (ndimage.convolve, mode 'nearest', bool output) of pass 1 AND pass 2."""
    err_data = np.nan_to_num(err)
    deriv = _stcal_abs_deriv(blot)
    diff = np.abs(sci - blot - backg)
    mask1 = np.greater(diff, scale1 * deriv + snr1 * err_data)
    mask1_smoothed = ndimage.convolve(mask1, np.ones((3, 3), dtype=int), mode="nearest")
    mask2 = np.greater(diff, scale2 * deriv + snr2 * err_data)
    return mask1_smoothed & mask2


@pytest.mark.parametrize(("snr", "scale"), [((5.0, 4.0), (1.2, 0.7)), ((3.5, 3.0), (3.0, 2.4))])
def test_noise_err_matches_stcal_flag_resampled_crs(rng, snr, scale):
    data, blot_with_sky = _peer_arrays(rng)
    # JWST's blot has no background; stcal subtracts ``backg`` from the residual instead.
    # Values are put on a 1/64 grid below 2**14 so that adding the sky is exact in float32
    # and both orders of operation give bit-identical residuals and derivatives.
    data = np.round(data * 64) / 64
    blot_without_sky = np.round((blot_with_sky - SKY) * 64) / 64
    blot_with_sky = blot_without_sky + np.float32(SKY)
    err = np.sqrt(np.abs(blot_with_sky) + READNOISE**2).astype(np.float32)
    err[rng.random(err.shape) < 0.01] = np.nan  # NaN err counts as 0 in both
    data[rng.random(data.shape) < 0.005] = np.nan
    blot_without_sky[rng.random(data.shape) < 0.005] = np.nan
    blot_with_sky = blot_without_sky + np.float32(SKY)

    expected = _stcal_flag_resampled_crs(
        data, err, blot_without_sky, snr[0], snr[1], scale[0], scale[1], np.float32(SKY)
    )
    got = detect_cosmic_rays(data, blot_with_sky, noise="err", err=err, snr=snr, scale=scale)
    assert expected.sum() > 300  # the comparison is not vacuous
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------------------------
# truth: injected cosmic rays
# --------------------------------------------------------------------------------------------


def test_injected_cosmic_rays_are_found_and_clean_pixels_are_not(rng):
    shape = (1024, 1024)
    deposit = _cosmic_ray_deposit(shape, rng, 2000)  # 3.9% of pixels touched
    data, blot, _ = _first_exposure_and_blot(_smooth_scene(shape), shape, rng, deposit)
    mask = detect_cosmic_rays(data, blot, readnoise=READNOISE)

    expected = _smooth_scene(shape)(0.0, 0.0)
    sigma = np.sqrt(expected + READNOISE**2)  # true per-pixel noise of the data (e-)
    inner = (slice(8, -8), slice(8, -8))  # the drizzled singles do not cover the outer pixels
    mask, deposit, sigma = mask[inner], deposit[inner], sigma[inner]

    strong = deposit > 5.0 * sigma
    recall = mask[strong].mean()
    clean = deposit == 0.0
    false_rate = mask[clean].mean()
    # Measured 0.994 and 4.9e-5 here (0.992-0.994 and 5-7.5e-5 over other seeds) for ~20,000
    # strong and 9.8e5 clean pixels: binomial errors 0.0006 and 0.7e-5, so both limits hold
    # with margin. The blot is a 4-exposure median: its noise raises the derivative term, which is
    # what keeps false detections below 1e-4 (with a noise-free blot the 3.5-sigma Gaussian tail
    # alone flags 4.6e-4, in AstroDrizzle too) while costing a little recall near 5 sigma.
    assert recall >= 0.99, recall
    assert false_rate < 1e-4, false_rate


@pytest.mark.parametrize(
    ("fwhm", "snr", "scale"),
    [
        (2.0, "3.5 3.0", "1.2 0.7"),  # ACS/WFC-like sampling, AstroDrizzle defaults
        # FWHM ~1 px (WFC3/IR-like): the HAP parameters drizzlepac ships for WFC3/IR
        # (pars/hap_pars/svm_parameters/wfc3/ir/*_n4.json). With the defaults "1.2 0.7" the
        # same formula (ours and AstroDrizzle's) flags 16% (FWHM 1) to 36% (FWHM 0.75) of the
        # cores of these stars: the blot is much smoother than the data.
        (1.0, "5.0 4.0", "3.0 2.4"),
        (0.75, "5.0 4.0", "3.0 2.4"),
    ],
)
def test_undersampled_star_cores_are_not_flagged(rng, fwhm, snr, scale):
    shape = (384, 384)
    n_stars = 80
    star_y = rng.uniform(12, shape[0] - 12, n_stars)
    star_x = rng.uniform(12, shape[1] - 12, n_stars)
    star_flux = 10 ** rng.uniform(3.0, 5.3, n_stars)  # 1e3 - 2e5 e-, peak up to ~1e5 e-
    # isolated single-pixel cosmic rays of 300 e- (> 25 sigma) well away from the stars
    cr_rows, cr_cols = [], []
    while len(cr_rows) < 40:
        r, c = rng.integers(12, shape[0] - 12, 2)
        if np.min(np.hypot(star_y - r, star_x - c)) > 6:
            cr_rows.append(r)
            cr_cols.append(c)
    deposit = np.zeros(shape)
    deposit[cr_rows, cr_cols] = 300.0

    scene = _star_scene(shape, star_y, star_x, star_flux, fwhm)
    # 0.03 px rms registration error: typical of HST exposures aligned with tweakreg
    data, blot, registration = _first_exposure_and_blot(
        scene, shape, rng, deposit, registration_rms=0.03
    )
    mask = detect_cosmic_rays(data, blot, readnoise=READNOISE, snr=snr, scale=scale)

    flagged_cores = 0
    for y0, x0 in zip(star_y - registration[1], star_x - registration[0], strict=True):
        row, col = int(round(y0)), int(round(x0))
        flagged_cores += bool(mask[row - 1 : row + 2, col - 1 : col + 2].any())
    assert flagged_cores == 0
    assert mask[cr_rows, cr_cols].all()  # the detector is not simply switched off


# --------------------------------------------------------------------------------------------
# peer: drizzlepac
# --------------------------------------------------------------------------------------------


def _drizzlepac_cr_mask(
    data, blot, blot_deriv, *, gain, rn, backg, snr, scale, grow, ctegrow, cte_dir, cte_boundary
):
    """drizzlepac 3.11 ``drizCR._driz_cr`` maths (drizCR.py:310-373), True = cosmic ray.

    ``blot_deriv`` is passed in so that the edge fix can be checked separately;
    ``cte_boundary`` is 'symm' in drizzlepac.
    """
    from scipy import signal

    snr1, snr2 = snr
    mult1, mult2 = scale
    t1 = np.absolute(data - blot)
    ta = np.sqrt(gain * np.abs(blot + backg) + rn**2)
    t2 = mult1 * blot_deriv + snr1 * ta / gain
    tmp1 = t1 <= t2
    kernel = np.ones((3, 3), dtype=np.uint16)
    tmp2 = signal.convolve2d(tmp1, kernel, boundary="symm", mode="same")
    t2 = mult2 * blot_deriv + snr2 * ta / gain
    cr_mask = (t1 <= t2) | (tmp2 >= 9)

    cr_grow_kernel = np.ones((grow, grow), dtype=np.uint16)
    cr_grow_kernel_conv = signal.convolve2d(cr_mask, cr_grow_kernel, boundary="symm", mode="same")
    cr_ctegrow_kernel = np.zeros((2 * ctegrow + 1, 2 * ctegrow + 1))
    if cte_dir == 1:
        cr_ctegrow_kernel[0:ctegrow, ctegrow] = 1
    elif cte_dir == -1:
        cr_ctegrow_kernel[ctegrow + 1 : 2 * ctegrow + 1, ctegrow] = 1
    extra = {"fillvalue": 1} if cte_boundary == "fill" else {}
    cr_ctegrow_kernel_conv = signal.convolve2d(
        cr_mask, cr_ctegrow_kernel, boundary=cte_boundary, mode="same", **extra
    )
    good = (cr_grow_kernel_conv >= grow**2) & (cr_ctegrow_kernel_conv >= ctegrow)
    return ~good


@pytest.mark.peer
def test_derivative_matches_qderiv_inside_and_differs_only_by_the_edge_quirk(rng):
    from drizzlepac.quickDeriv import qderiv

    _, blot = _peer_arrays(rng)
    ours = derivative_image(blot)
    theirs = qderiv(blot)
    band = _edge_band(blot.shape, 2)
    np.testing.assert_array_equal(ours[~band], theirs[~band])
    # The quirk: a missing neighbour counts as 0, so D >= |blot| in the first row and column and
    # in the last two rows and columns (the 2-pixel band; only the second row/column is clean).
    quirk = np.zeros(blot.shape, dtype=bool)
    quirk[[0, -2, -1], :] = True
    quirk[:, [0, -2, -1]] = True
    assert np.all(theirs[quirk] >= np.abs(blot[quirk]))
    assert np.all(ours[quirk] < 0.5 * np.abs(blot[quirk]))  # ours: neighbour differences only
    # With the edge replicated outward (a difference of 0 to an imaginary neighbour changes no
    # maximum) qderiv sees only the existing neighbours: then it equals ours everywhere.
    padded = np.pad(blot, 2, mode="edge")
    np.testing.assert_array_equal(ours, qderiv(padded)[2:-2, 2:-2])


PEER_CASES = [
    # snr, scale, grow, ctegrow, readout_direction, gain, readnoise
    ((3.5, 3.0), (1.2, 0.7), 1, 0, 0, 1.0, READNOISE),
    ((5.0, 4.0), (3.0, 2.4), 1, 0, 0, 1.0, READNOISE),
    ((4.0, 3.0), (0.5, 0.4), 3, 0, 0, 1.0, READNOISE),
    ((3.5, 3.0), (1.5, 1.2), 2, 0, 1, 1.0, READNOISE),
    ((3.5, 3.0), (1.2, 0.7), 1, 4, 1, 1.0, READNOISE),
    ((3.5, 3.0), (1.2, 0.7), 3, 3, -1, 1.0, READNOISE),
    ((3.5, 3.0), (1.2, 0.7), 1, 0, 0, 2.0, 5.0),  # data in DN, gain 2 e-/DN
]


@pytest.mark.peer
@pytest.mark.parametrize(
    ("snr", "scale", "grow", "ctegrow", "direction", "gain", "readnoise"), PEER_CASES
)
def test_mask_matches_drizzlepac_except_documented_edge_quirks(
    rng, snr, scale, grow, ctegrow, direction, gain, readnoise
):
    from drizzlepac.quickDeriv import qderiv

    data, blot = _peer_arrays(rng)
    if gain != 1.0:
        data, blot = data / np.float32(gain), blot / np.float32(gain)
    ours = detect_cosmic_rays(
        data,
        blot,
        gain=gain,
        readnoise=readnoise,
        snr=snr,
        scale=scale,
        grow=grow,
        ctegrow=ctegrow,
        readout_direction=direction,
    )
    common = dict(gain=gain, rn=readnoise, backg=0.0, snr=snr, scale=scale, grow=grow)
    common.update(ctegrow=ctegrow, cte_dir=direction)
    as_drizzlepac = _drizzlepac_cr_mask(data, blot, qderiv(blot), cte_boundary="symm", **common)
    assert as_drizzlepac.sum() > 300  # plenty of cosmic rays to compare

    # 1. Away from the edges the masks are identical. Edge effects reach inwards by the 2-pixel
    #    derivative band + 1 (3x3 neighbourhood) + the grow half-width + (rows) the CTE trail.
    reach = 2 + 1 + grow // 2
    interior = ~_edge_band(data.shape, reach)
    interior[: reach + ctegrow] = interior[-(reach + ctegrow) :] = False
    np.testing.assert_array_equal(ours[interior], as_drizzlepac[interior])

    # 2. The edge differences are exactly the documented quirks: give drizzlepac's formula the
    #    derivative without the edge quirk (qderiv of the edge-replicated blot) and CTE trails that
    #    stop at the edge (outside = good instead of 'symm' reflection), and it equals ours
    #    everywhere.
    edge_fixed_deriv = qderiv(np.pad(blot, 2, mode="edge"))[2:-2, 2:-2]
    quirks_fixed = _drizzlepac_cr_mask(data, blot, edge_fixed_deriv, cte_boundary="fill", **common)
    np.testing.assert_array_equal(ours, quirks_fixed)

    # 3. The edge fix finds cosmic rays in the band that drizzlepac misses (there its D >= sky,
    #    so its threshold exceeds scale1 * 110 e-: most of the 100-300 e- hits for scale1 >= 1.2).
    band = _edge_band(data.shape, 2)
    assert (ours & ~as_drizzlepac & band).any()
    if ctegrow == 0:  # without the CTE reflection drizzlepac flags nothing we do not
        assert not (as_drizzlepac & ~ours).any()


@pytest.mark.peer
def test_sky_fix_changes_only_the_noise_term(rng):
    from drizzlepac.quickDeriv import qderiv

    shape = (200, 300)
    data, blot = _peer_arrays(rng, shape)
    # faint cosmic rays (3-6 sigma of the noise with the sky counted once) on flat sky areas
    sigma = np.sqrt(np.abs(blot) + READNOISE**2)
    rows, cols = rng.integers(4, shape[0] - 4, 400), rng.integers(4, shape[1] - 4, 400)
    faint = rng.uniform(3.0, 6.0, 400) * sigma[rows, cols]
    data[rows, cols] += faint
    ours = detect_cosmic_rays(data, blot, readnoise=READNOISE)

    edge_fixed_deriv = qderiv(np.pad(blot, 2, mode="edge"))[2:-2, 2:-2]
    common = dict(gain=1.0, rn=READNOISE, snr=(3.5, 3.0), scale=(1.2, 0.7), grow=1, ctegrow=0)
    common.update(cte_dir=0, cte_boundary="symm")
    once = _drizzlepac_cr_mask(data, blot, edge_fixed_deriv, backg=0.0, **common)
    # AstroDrizzle with blot_addsky=True: the blot has the sky and backg adds it again
    twice = _drizzlepac_cr_mask(data, blot, edge_fixed_deriv, backg=SKY, **common)

    # With the sky counted once, drizzlepac's own formula gives exactly our mask...
    np.testing.assert_array_equal(ours, once)
    # ...and counting it twice only raises thresholds: it removes detections, never adds any,
    assert not (twice & ~ours).any()
    # and what it removes are real faint cosmic rays: at a sky of 80 e- the noise is
    # overestimated by ~1.3x, so drizzlepac recovers clearly fewer of the 3-6 sigma hits.
    recall_ours = ours[rows, cols].mean()
    recall_twice = twice[rows, cols].mean()
    assert recall_ours - recall_twice > 0.1, (recall_ours, recall_twice)


@pytest.mark.peer
def test_drizzlepac_quirks_we_fix_for_nan_and_missing_readout_direction(rng):
    from drizzlepac.quickDeriv import qderiv

    shape = (40, 50)
    blot = np.full(shape, SKY, dtype=np.float32)
    data = (rng.poisson(SKY, shape) + rng.normal(0, READNOISE, shape)).astype(np.float32)
    blot[20, 25] = np.nan
    common = dict(gain=1.0, rn=READNOISE, backg=0.0, snr=(3.5, 3.0), scale=(1.2, 0.7), grow=1)

    theirs = _drizzlepac_cr_mask(
        data, blot, qderiv(blot), ctegrow=0, cte_dir=0, cte_boundary="symm", **common
    )
    ours = detect_cosmic_rays(data, blot, readnoise=READNOISE)
    neighbours = [(20, 25), (19, 25), (21, 25), (20, 24), (20, 26)]
    assert all(theirs[p] for p in neighbours)  # drizzlepac: the NaN and its 4 neighbours
    assert not any(ours[p] for p in neighbours)

    theirs_cte = _drizzlepac_cr_mask(
        data, blot, qderiv(blot), ctegrow=2, cte_dir=0, cte_boundary="symm", **common
    )
    assert theirs_cte.all()  # drizzlepac: the whole chip
    with pytest.warns(CTEGrowthSkippedWarning):
        ours_cte = detect_cosmic_rays(data, blot, readnoise=READNOISE, ctegrow=2)
    np.testing.assert_array_equal(ours_cte, ours)


def test_flagged_pixels_do_not_seed_the_second_pass():
    # A hot pixel (flagged in DQ) far above the blot with a neighbour 2.5 sigma high: the
    # hot pixel fails the first pass and, as in AstroDrizzle, opens the second pass (snr 2)
    # to the neighbour; when it may not seed, the neighbour is left alone and only the hot
    # pixel itself (which fails both passes) is flagged.
    data, blot = _single_cr_chip(10, 7)  # a 1000 e- excess at (10, 7)
    sigma = np.sqrt(blot[10, 8] + READNOISE**2)
    data[10, 8] = blot[10, 8] + 2.5 * sigma
    snr = "4.0 2.0"
    seeded = detect_cosmic_rays(data, blot, readnoise=READNOISE, snr=snr, scale="0 0")
    assert _flagged(seeded) == {(10, 7), (10, 8)}
    hot = np.zeros(data.shape, bool)
    hot[10, 7] = True
    unseeded = detect_cosmic_rays(data, blot, readnoise=READNOISE, snr=snr, scale="0 0",
                                  no_seed=hot)  # fmt: skip
    assert _flagged(unseeded) == {(10, 7)}
    # a real cosmic ray next to the flagged pixel still seeds its own neighbours
    data[10, 9] += 1000.0
    both = detect_cosmic_rays(data, blot, readnoise=READNOISE, snr=snr, scale="0 0",
                              no_seed=hot)  # fmt: skip
    assert _flagged(both) == {(10, 7), (10, 8), (10, 9)}


def test_no_seed_changes_the_mask_only_next_to_the_excluded_pixels(rng):
    # On a noisy chip with cosmic rays, excluding pixels from seeding changes the mask
    # at most within their 3 x 3 neighbourhoods, and never adds a flag.
    shape = (200, 200)
    blot = np.full(shape, 100.0, np.float32)
    sigma = np.sqrt(blot + READNOISE**2)
    data = blot + rng.normal(0.0, 1.0, shape).astype(np.float32) * sigma
    deposit = _cosmic_ray_deposit(shape, rng, 100)
    data += deposit
    # half of the cosmic-ray pixels and 1% of the others may not seed
    excluded = (rng.random(shape) < 0.01) | ((deposit > 0) & (rng.random(shape) < 0.5))
    plain = detect_cosmic_rays(data, blot, readnoise=READNOISE, snr="3.5 2.0")
    fewer = detect_cosmic_rays(data, blot, readnoise=READNOISE, snr="3.5 2.0", no_seed=excluded)
    assert not np.any(fewer & ~plain)
    changed = plain & ~fewer
    assert changed.any()  # the test exercises the rule
    near = ndimage.binary_dilation(excluded, structure=np.ones((3, 3), bool))
    assert not np.any(changed & ~near)
