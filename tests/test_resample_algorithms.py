"""Tests of drizzlepipe.algorithms.resample: drizzle accumulation, error, context, merging."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import erf

from drizzlepipe.algorithms import resample
from drizzlepipe.algorithms.grid import OutputGridTooLargeError, default_output_grid
from drizzlepipe.algorithms.pixmap import PixmapRows, compute_pixmap
from drizzlepipe.algorithms.resample import (
    AllPixelsMaskedError,
    DrizzleAccumulator,
    InvalidExposureTimeError,
    NoOverlapError,
    ResampleInputError,
    build_weight,
    context_contributor_count,
    context_contributor_mask,
    decode_context,
    err_weight,
    exptime_weight,
    ivm_weight,
    merge_accumulators,
    pixel_area_ratio,
)
from hrcwcs import HRC_IDCSCALE, HRC_SHAPE, HRC_SIP_HEADER

CRVAL = (150.0, 2.0)


def tan_wcs(shape, *, crpix_offset=(0.0, 0.0), scale=0.05, rotation=0.0, crval=CRVAL):
    """Undistorted TAN chip, +Y at PA ``rotation``; CRPIX at the centre plus an offset (px)."""
    ny, nx = shape
    theta = math.radians(rotation)
    s = scale / 3600
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = crval
    wcs.wcs.crpix = ((nx + 1) / 2 + crpix_offset[0], (ny + 1) / 2 + crpix_offset[1])
    wcs.wcs.cd = s * np.array(
        [[-math.cos(theta), math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    wcs.pixel_shape = (nx, ny)
    return wcs


def star_image(wcs, shape, *, offset_arcsec, sigma_arcsec, flux, scale):
    """Exact pixel integrals of a circular Gaussian (north-up chips only)."""
    ra = CRVAL[0] + offset_arcsec[0] / 3600 / math.cos(math.radians(CRVAL[1]))
    dec = CRVAL[1] + offset_arcsec[1] / 3600
    px, py = wcs.all_world2pix([[ra, dec]], 0)[0]
    sigma = sigma_arcsec / scale * math.sqrt(2)
    y, x = np.indices(shape)
    fx = 0.5 * (erf((x + 0.5 - px) / sigma) - erf((x - 0.5 - px) / sigma))
    fy = 0.5 * (erf((y + 0.5 - py) / sigma) - erf((y - 0.5 - py) / sigma))
    return flux * fx * fy


def galaxy_image(wcs, shape, *, scale, supersample=6):
    """Inclined exponential disc (flux ~2000), integrated over pixels by supersampling."""
    y, x = np.indices(shape, dtype=float)
    total = np.zeros(shape)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for dy in offsets:
        for dx in offsets:
            ra, dec = wcs.all_pix2world(x + dx, y + dy, 0)
            xi = (ra - CRVAL[0]) * 3600 * math.cos(math.radians(CRVAL[1])) + 0.4
            eta = (dec - CRVAL[1]) * 3600 - 0.3
            u = xi * math.cos(0.5) + eta * math.sin(0.5)
            v = (-xi * math.sin(0.5) + eta * math.cos(0.5)) / 0.55
            total += 2000 / (2 * math.pi * 0.2**2 * 0.55) * np.exp(-np.hypot(u, v) / 0.2)
    return total / supersample**2 * scale**2


def dither_chips(shape, n_side, *, scale=0.05):
    """n_side x n_side sub-pixel dithered north-up chips."""
    return [
        tan_wcs(shape, crpix_offset=(i / n_side, j / n_side), scale=scale)
        for j in range(n_side)
        for i in range(n_side)
    ]


# ---------------------------------------------------------------------------------------------
# identity and flux
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["square", "turbo", "point"])
def test_identity_resampling_returns_the_input(kernel, rng):
    shape = (60, 80)
    wcs = tan_wcs(shape, rotation=33.0)
    grid = default_output_grid([wcs], [shape])
    assert grid.shape == shape
    data = rng.normal(100.0, 10.0, shape).astype(np.float32)
    variance = rng.uniform(1.0, 4.0, shape).astype(np.float32)
    accumulator = DrizzleAccumulator(grid.shape, kernel=kernel)
    accumulator.add_chip(
        data, compute_pixmap(wcs, shape, grid.wcs), exptime=20.0, variance=variance
    )
    product = accumulator.finalize()
    # the map is the identity to 1e-8 px, so every input pixel lands on its own output pixel
    assert np.allclose(product.data, data, rtol=1e-5, atol=0)
    assert np.allclose(product.wht, 20.0, rtol=1e-5)
    assert np.allclose(product.err, np.sqrt(variance), rtol=1e-5)
    assert product.context.shape == shape and np.all(product.context == 1)


def _drizzle_scene(images, chips, shape, grid, kernel, ratio):
    accumulator = DrizzleAccumulator(grid.shape, kernel=kernel, enable_err=False)
    for wcs, image in zip(chips, images):
        accumulator.add_chip(
            image.astype(np.float32),
            compute_pixmap(wcs, shape, grid.wcs),
            exptime=100.0,
            in_units="counts",
            iscale=ratio**2,
            pixel_scale_ratio=ratio,
        )
    return accumulator.finalize()


@pytest.mark.parametrize("source", ["point", "extended"])
@pytest.mark.parametrize("kernel", ["square", "turbo"])
@pytest.mark.parametrize("ratio", [0.7, 1.0, 1.6])
def test_flux_is_conserved_through_dither_rotation_and_scale(source, kernel, ratio):
    shape = (96, 96)
    chips = dither_chips(shape, 2)
    if source == "point":
        # HST-like undersampled star: FWHM 0.118" = 2.35 input pixels
        images = [
            star_image(
                w, shape, offset_arcsec=(0.13, -0.07), sigma_arcsec=0.05, flux=1e4, scale=0.05
            )
            for w in chips
        ]
    else:
        images = [galaxy_image(w, shape, scale=0.05) for w in chips]
    grid = default_output_grid(chips, [shape] * 4, rotation=30.0, pixel_scale_ratio=ratio)
    product = _drizzle_scene(images, chips, shape, grid, kernel, ratio)
    # counts/100 s x area ratio: the output is a rate per output pixel, summing to flux / 100 s
    input_flux = np.mean([image.sum() for image in images])
    output_flux = np.nansum(product.data, dtype=np.float64) * 100.0
    # measured: square 1e-6 for the star and 1e-5 for the galaxy (whose faint wings reach the
    # chip edges, where partly covered output pixels count a fraction of a pixel as a whole);
    # turbo <= 4e-4 (its axis-aligned boxes do not tile a rotated grid exactly)
    assert output_flux == pytest.approx(input_flux, rel=1e-3)
    if kernel == "square":
        assert output_flux == pytest.approx(input_flux, rel=1e-4)


@pytest.mark.parametrize("kernel", ["square", "turbo", "point"])
def test_weighted_flux_is_exact_for_every_kernel(kernel):
    # What drizzle conserves exactly is sum(I * W) = sum(d * iscale * w): the point kernel's
    # image sum is not (holes, 1-3 samples per pixel), but its weight-weighted sum is.
    shape = (96, 96)
    chips = dither_chips(shape, 3)
    images = [
        star_image(w, shape, offset_arcsec=(0.1, 0.2), sigma_arcsec=0.1, flux=1e4, scale=0.05)
        for w in chips
    ]
    ratio = 1.6
    grid = default_output_grid(chips, [shape] * 9, rotation=30.0, pixel_scale_ratio=ratio)
    product = _drizzle_scene(images, chips, shape, grid, kernel, ratio)
    weighted = np.nansum(product.data.astype(np.float64) * product.wht)
    expected = sum(image.sum() for image in images) * ratio**2  # weight 100 x counts / 100 s
    # float32 accumulation over ~1e4 pixels
    assert weighted == pytest.approx(expected, rel=1e-5)


def test_counts_and_rates_give_the_same_product(rng):
    shape = (40, 50)
    wcs = tan_wcs(shape, rotation=10.0)
    grid = default_output_grid([wcs], [shape], rotation=0.0, pixel_scale_ratio=1.3)
    pixmap = compute_pixmap(wcs, shape, grid.wcs)
    rate = rng.uniform(1.0, 2.0, shape).astype(np.float32)
    products = []
    for data, units, variance in (
        (rate * 250.0, "counts", np.full(shape, 250.0**2, np.float32)),
        (rate, "cps", np.ones(shape, np.float32)),
    ):
        accumulator = DrizzleAccumulator(grid.shape)
        accumulator.add_chip(
            data, pixmap, exptime=250.0, in_units=units, variance=variance, iscale=1.69
        )
        products.append(accumulator.finalize())
    # same rates, same weights (exptime): equal to float32 rounding
    assert np.allclose(products[0].data, products[1].data, rtol=1e-5, equal_nan=True)
    assert np.allclose(products[0].err, products[1].err, rtol=1e-5, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_err_matches_monte_carlo_scatter_and_beats_variance_resampling(rng):
    shape = (40, 40)
    chips = dither_chips(shape, 2)
    exptimes = [100.0, 200.0, 300.0, 400.0]
    y, x = np.indices(shape)
    sigmas = [(3.0 + k + 2.0 * x / shape[1]).astype(np.float32) for k in range(4)]  # counts
    truth = (500.0 + 5.0 * y).astype(np.float32)
    grid = default_output_grid(chips, [shape] * 4, rotation=20.0, pixel_scale_ratio=0.8)
    pixmaps = [compute_pixmap(w, shape, grid.wcs) for w in chips]
    args = {"in_units": "counts", "iscale": 0.64, "pixel_scale_ratio": 0.8}

    realisations = []
    err = None
    for _ in range(200):
        accumulator = DrizzleAccumulator(grid.shape, enable_context=False)
        for pixmap, t, sigma in zip(pixmaps, exptimes, sigmas):
            noisy = truth + sigma * rng.standard_normal(shape, dtype=np.float32)
            accumulator.add_chip(noisy, pixmap, exptime=t, variance=sigma**2, **args)
        product = accumulator.finalize()
        realisations.append(product.data)
        err = product.err  # depends on weights and variances only, not on the noise
    scatter = np.std(np.array(realisations, dtype=np.float64), axis=0, ddof=1)

    covered = product.wht > 0.5 * np.median(product.wht[product.wht > 0])
    ratio = scatter[covered] / err[covered]
    # 200 realisations: each pixel's scatter is known to 1/sqrt(2*199) = 5%; over ~1500
    # pixels the median ratio is known to ~0.2%
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)
    # and pixel by pixel, in five bins of predicted error, to 5%
    order = np.argsort(err[covered])
    for chunk in np.array_split(order, 5):
        measured = np.sqrt(np.mean(scatter[covered][chunk] ** 2))
        predicted = np.sqrt(np.mean(err[covered][chunk] ** 2))
        assert measured == pytest.approx(predicted, rel=0.05)
    # stcal's estimate, sqrt of the variance resampled with the ordinary weights, is the error
    # of one input pixel, not of the mean of the several that each output pixel averages
    naive_scatter = _variance_resampling_err(pixmaps, exptimes, sigmas, grid.shape, args)
    assert np.median(naive_scatter[covered] / scatter[covered]) > 1.4


def _variance_resampling_err(pixmaps, exptimes, sigmas, out_shape, args):
    """sqrt(sum(w var) / sum(w)) of the rate variance: stcal's resampled-variance error."""
    accumulator = DrizzleAccumulator(out_shape, enable_context=False, enable_err=False)
    for pixmap, t, sigma in zip(pixmaps, exptimes, sigmas):
        # variance of the drizzled rate: (sigma * iscale / t)**2, drizzled as data in cps
        rate_variance = (sigma * args["iscale"] / t) ** 2
        accumulator.add_chip(
            rate_variance.astype(np.float32),
            pixmap,
            exptime=t,
            in_units="cps",
            pixel_scale_ratio=args["pixel_scale_ratio"],
        )
    return np.sqrt(accumulator.finalize().data)


def test_inverse_variance_weights_give_the_optimal_mean():
    shape = (20, 20)
    wcs = tan_wcs(shape)
    grid = default_output_grid([wcs], [shape])
    pixmap = compute_pixmap(wcs, shape, grid.wcs)
    values, errs = (10.0, 16.0), (1.0, 2.0)  # counts, exptime 50 s each
    results = {}
    for kind in ("err", "ivm"):
        accumulator = DrizzleAccumulator(grid.shape)
        for value, error in zip(values, errs):
            data = np.full(shape, value, np.float32)
            err = np.full(shape, error, np.float32)
            weight = build_weight(
                kind, exptime=50.0, err=err, ivm=1.0 / err**2, in_units="counts", iscale=1.0
            )
            accumulator.add_chip(
                data, pixmap, exptime=50.0, weight=weight, variance=err**2, in_units="counts"
            )
        results[kind] = accumulator.finalize()
    # inverse-variance mean (10 * 1 + 16 / 4) / (1 + 1/4) = 11.2 counts = 0.224 counts/s, and
    # its error 1 / sqrt(1 + 1/4) counts
    for product in results.values():
        assert np.allclose(product.data, 11.2 / 50.0, rtol=1e-6)
        assert np.allclose(product.err, 1.0 / math.sqrt(1.25) / 50.0, rtol=1e-6)
        # and the weight is the total inverse variance of the drizzled rate, 1/(sigma/50)^2
        assert np.allclose(product.wht, 1.25 * 50.0**2, rtol=1e-6)


def test_weight_builders_mask_bad_and_non_finite_pixels():
    data = np.array([[1.0, np.nan], [np.inf, 4.0]])
    bad = np.array([[False, False], [False, True]])
    assert exptime_weight(30.0, bad, data=data).tolist() == [[30.0, 0.0], [0.0, 0.0]]
    err = np.array([[2.0, 2.0], [0.0, np.nan]])
    weights = err_weight(err, None, exptime=10.0, in_units="counts", iscale=4.0)
    # (t / (iscale * err))**2 = (10 / 8)**2; zero or NaN ERR -> weight 0
    assert weights.tolist() == [[1.5625, 1.5625], [0.0, 0.0]]
    ivm = np.array([[0.25, -1.0], [np.inf, 1.0]])
    weights = ivm_weight(ivm, None, exptime=10.0, in_units="cps", iscale=2.0)
    assert weights.tolist() == [[0.0625, 0.0], [0.0, 0.25]]
    with pytest.raises(ValueError, match="weight_type"):
        build_weight("median", exptime=1.0, bad_mask=bad)
    assert pixel_area_ratio(0.04, 0.05) == pytest.approx(0.64)
    assert pixel_area_ratio(0.04, 0.05, per_pixel=False) == 1.0


# ---------------------------------------------------------------------------------------------
# context
# ---------------------------------------------------------------------------------------------


def _integer_placed_chips(rng, n_chips, out_shape, chip_shape):
    """Chips dropped at integer offsets with random bad pixels, and who touched which pixel."""
    y, x = np.indices(chip_shape, dtype=float)
    chips, truth = [], np.zeros((n_chips, *out_shape), dtype=bool)
    for k in range(n_chips):
        ox = int(rng.integers(-4, out_shape[1] - 3))
        oy = int(rng.integers(-3, out_shape[0] - 2))
        bad = rng.random(chip_shape) < 0.15
        chips.append((np.dstack([x + ox, y + oy]), bad))
        rows, cols = np.nonzero(~bad)
        rows, cols = rows + oy, cols + ox
        on = (rows >= 0) & (rows < out_shape[0]) & (cols >= 0) & (cols < out_shape[1])
        truth[k, rows[on], cols[on]] = True
    return chips, truth


@pytest.mark.parametrize("kernel", ["square", "turbo", "point"])
def test_context_decodes_to_exactly_the_contributing_chips_for_40_inputs(kernel, rng):
    out_shape, chip_shape = (24, 30), (8, 10)
    chips, truth = _integer_placed_chips(rng, 40, out_shape, chip_shape)
    accumulator = DrizzleAccumulator(out_shape, kernel=kernel, enable_err=False, n_inputs=40)
    data = np.ones(chip_shape, np.float32)
    for pixmap, bad in chips:
        accumulator.add_chip(data, pixmap, exptime=1.0, bad_mask=bad)
    product = accumulator.finalize()
    assert product.context.shape == (2, *out_shape) and product.context.dtype == np.int32
    assert product.context_ids == tuple(range(40))
    # integer placement: each good input pixel covers exactly one output pixel, so the truth is
    # known without drizzling; every bit must match
    decoded = np.array([context_contributor_mask(product.context, k) for k in range(40)])
    assert np.array_equal(decoded, truth)
    assert np.array_equal(context_contributor_count(product.context), truth.sum(axis=0))
    ys, xs = np.nonzero(truth.any(axis=0))
    for yi, xi, ids in zip(ys[:50], xs[:50], decode_context(product.context, xs[:50], ys[:50])):
        assert ids.tolist() == np.flatnonzero(truth[:, yi, xi]).tolist()
    assert np.array_equal(product.wht > 0, truth.any(axis=0))


def test_partial_accumulations_merge_exactly(rng):
    out_shape, chip_shape = (24, 30), (8, 10)
    chips, truth = _integer_placed_chips(rng, 40, out_shape, chip_shape)
    values = [rng.normal(10.0, 1.0, chip_shape).astype(np.float32) for _ in chips]
    variances = [rng.uniform(0.5, 2.0, chip_shape).astype(np.float32) for _ in chips]

    whole = DrizzleAccumulator(out_shape, n_inputs=40)
    for (pixmap, bad), value, variance in zip(chips, values, variances):
        whole.add_chip(value, pixmap, exptime=3.0, bad_mask=bad, variance=variance)
    expected = whole.finalize()

    # three partials with interleaved ids (as threads taking chips in turn), merged in any order
    partials = [DrizzleAccumulator(out_shape) for _ in range(3)]
    for k, ((pixmap, bad), value, variance) in enumerate(zip(chips, values, variances)):
        partials[k % 3].add_chip(
            value, pixmap, exptime=3.0, bad_mask=bad, variance=variance, context_id=k
        )
    merged = merge_accumulators([partials[2], partials[0], partials[1]]).finalize()

    assert merged.context_ids == tuple(range(40))
    assert np.array_equal(merged.context, expected.context)
    # weights add exactly; means and errors combine exactly up to float32 rounding
    assert np.allclose(merged.wht, expected.wht, rtol=1e-6, atol=0)
    assert np.allclose(merged.data, expected.data, rtol=1e-5, atol=0, equal_nan=True)
    assert np.allclose(merged.err, expected.err, rtol=1e-5, atol=0, equal_nan=True)


def test_runs_on_given_arrays_handed_back_as_partials_merge_exactly(rng):
    """What the final drizzle does with worker processes: consecutive runs of chips, each on
    caller-supplied output arrays (shared memory), handed back as partial sums."""
    out_shape, chip_shape = (24, 30), (8, 10)
    chips, truth = _integer_placed_chips(rng, 40, out_shape, chip_shape)
    values = [rng.normal(10.0, 1.0, chip_shape).astype(np.float32) for _ in chips]
    variances = [rng.uniform(0.5, 2.0, chip_shape).astype(np.float32) for _ in chips]

    def run(first, last, out_arrays=None):
        accumulator = DrizzleAccumulator(
            out_shape, n_inputs=40, out_arrays=out_arrays, first_context_id=first
        )
        for k in range(first, last):
            (pixmap, bad), value, variance = chips[k], values[k], variances[k]
            accumulator.add_chip(
                value, pixmap, exptime=3.0, bad_mask=bad, variance=variance, context_id=k
            )
        return accumulator

    # runs 0-24 and 25-39 (ids in both planes of the context), the second on given arrays
    given = {name: np.zeros(out_shape, np.float32) for name in ("img", "wht", "var")}
    given["ctx"] = np.zeros((2, *out_shape), np.int32)
    first, second = run(0, 25), run(25, 40, given)
    partial = second.partial()
    assert partial.img is given["img"] and partial.wht is given["wht"]
    assert partial.var is given["var"]
    # some chips cross the grid's edge: their bits are set outside drizzle's own planes
    assert partial.context.shape == (2, *out_shape) and given["ctx"].any()
    received = DrizzleAccumulator.from_partial(partial, kernel="square")
    with pytest.raises(RuntimeError, match="merge it"):
        received.add_chip(values[0], chips[0][0], exptime=3.0, variance=variances[0])
    merged = merge_accumulators([first, received]).finalize()
    reference = merge_accumulators([run(0, 25), run(25, 40)]).finalize()

    for name in ("data", "wht", "err", "context"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(reference, name))
    decoded = np.array([context_contributor_mask(merged.context, k) for k in range(40)])
    assert np.array_equal(decoded, truth)
    with pytest.raises(ValueError, match="out_arrays"):
        DrizzleAccumulator(out_shape, out_arrays={"img": np.zeros((3, 3), np.float32)})


@pytest.mark.parametrize("given", [False, True])
def test_received_partials_merge_in_place_exactly(rng, monkeypatch, given):
    """What the final step does with the workers' runs: every partial is received and the
    first takes the others' sums and context bits into its own arrays, a block of rows at a
    time. Partials with all the planes of the inputs (``given``: what the workers' output
    buffers hold, and what accumulators sized for every input ship) take the context bits
    into the first one's planes; otherwise the first run's single plane grows to the
    second's two."""
    from drizzlepipe.algorithms import resample

    monkeypatch.setattr(resample, "_COMBINE_BLOCK_PIXELS", 60)  # 2 rows a block: 12 blocks
    out_shape, chip_shape = (24, 30), (8, 10)
    chips, truth = _integer_placed_chips(rng, 40, out_shape, chip_shape)
    values = [rng.normal(10.0, 1.0, chip_shape).astype(np.float32) for _ in chips]
    variances = [rng.uniform(0.5, 2.0, chip_shape).astype(np.float32) for _ in chips]

    def run(first, last):
        accumulator = DrizzleAccumulator(out_shape, n_inputs=40, first_context_id=first)
        for k in range(first, last):
            (pixmap, bad), value, variance = chips[k], values[k], variances[k]
            accumulator.add_chip(
                value, pixmap, exptime=3.0, bad_mask=bad, variance=variance, context_id=k
            )
        return accumulator

    reference = merge_accumulators([run(0, 20), run(20, 40)]).finalize()
    partials = [run(0, 20).partial(), run(20, 40).partial()]
    # chips numbered by drizzle as their ids: each partial has the planes of all 40 inputs
    assert [partial.context.shape[0] for partial in partials] == [2, 2]
    if not given:
        # a first partial with only the plane its ids need
        partials[0] = replace(partials[0], context=partials[0].context[:1].copy())
    first, second = (DrizzleAccumulator.from_partial(p, kernel="square") for p in partials)
    merged = merge_accumulators([first, second]).finalize()
    assert merged.data is partials[0].img  # combined in place
    if given:
        assert np.shares_memory(merged.context, partials[0].context)  # ORed into its planes
    for name in ("data", "wht", "err", "context"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(reference, name))
    decoded = np.array([context_contributor_mask(merged.context, k) for k in range(40)])
    assert np.array_equal(decoded, truth)


def test_a_partial_on_given_buffers_ships_all_their_context_planes():
    # chips inside the grid keep drizzle's own numbering: the partial's context is the given
    # buffer itself, planes for all 40 inputs, so received partials merge into it in place
    out_shape = (24, 30)
    given = {name: np.zeros(out_shape, np.float32) for name in ("img", "wht", "var")}
    given["ctx"] = np.zeros((2, *out_shape), np.int32)
    accumulator = DrizzleAccumulator(out_shape, n_inputs=40, out_arrays=given)
    y, x = np.mgrid[0:8, 0:10].astype(np.float64)
    pixmap = np.dstack([x + 5.0, y + 6.0])
    ones = np.ones((8, 10), np.float32)
    for k in range(3):
        accumulator.add_chip(ones, pixmap, exptime=1.0, variance=ones, context_id=k)
    partial = accumulator.partial()
    assert partial.context is given["ctx"] or np.shares_memory(partial.context, given["ctx"])
    assert partial.context.shape == (2, *out_shape)
    assert partial.context_ids == (0, 1, 2)
    assert (partial.context[0, 6:14, 5:15] == 0b111).all() and not partial.context[1].any()


def test_merge_of_rotated_chips_and_more_adds_after_merge(rng):
    shape = (30, 40)
    chips = [
        tan_wcs(shape, crpix_offset=(rng.uniform(-5, 5), rng.uniform(-5, 5))) for _ in range(6)
    ]
    grid = default_output_grid(chips, [shape] * 6, rotation=25.0, pixel_scale_ratio=0.9)
    pixmaps = [compute_pixmap(w, shape, grid.wcs) for w in chips]
    images = [rng.normal(5.0, 1.0, shape).astype(np.float32) for _ in chips]
    variance = np.ones(shape, np.float32)

    whole = DrizzleAccumulator(grid.shape)
    for pixmap, image in zip(pixmaps, images):
        whole.add_chip(image, pixmap, exptime=10.0, variance=variance)
    expected = whole.finalize()

    first, second = DrizzleAccumulator(grid.shape), DrizzleAccumulator(grid.shape)
    for k in (4, 1):
        first.add_chip(images[k], pixmaps[k], exptime=10.0, variance=variance, context_id=k)
    for k in (0, 5):
        second.add_chip(images[k], pixmaps[k], exptime=10.0, variance=variance, context_id=k)
    first.merge(second)
    for k in (3, 2):  # chips added after a merge keep their own bits
        first.add_chip(images[k], pixmaps[k], exptime=10.0, variance=variance, context_id=k)
    merged = first.finalize()
    assert np.array_equal(merged.context, expected.context)
    assert np.allclose(merged.data, expected.data, rtol=1e-5, equal_nan=True)
    assert np.allclose(merged.err, expected.err, rtol=1e-5, equal_nan=True)
    assert np.allclose(merged.wht, expected.wht, rtol=1e-5)


def test_merge_rejects_incompatible_accumulators():
    first = DrizzleAccumulator((10, 10))
    with pytest.raises(ValueError, match="cannot merge"):
        first.merge(DrizzleAccumulator((10, 11)))
    with pytest.raises(ValueError, match="cannot merge"):
        first.merge(DrizzleAccumulator((10, 10), kernel="turbo"))
    with pytest.raises(ValueError, match="switches"):
        first.merge(DrizzleAccumulator((10, 10), enable_err=False))
    y, x = np.indices((4, 4), dtype=float)
    other = DrizzleAccumulator((10, 10))
    for accumulator in (first, other):
        accumulator.add_chip(
            np.ones((4, 4)), np.dstack([x, y]), exptime=1.0, variance=np.ones((4, 4)), context_id=3
        )
    with pytest.raises(ValueError, match="both accumulators"):
        first.merge(other)


# ---------------------------------------------------------------------------------------------
# chips crossing the grid edge (drizzle 3.0 clipping bug worked around)
# ---------------------------------------------------------------------------------------------


def _clipped_area(polygon, x_max, y_max):
    """Area of a convex polygon inside [-0.5, x_max] x [-0.5, y_max] (Sutherland-Hodgman)."""
    edges = [
        (lambda p: p[0] >= -0.5, 0, -0.5),
        (lambda p: p[0] <= x_max, 0, x_max),
        (lambda p: p[1] >= -0.5, 1, -0.5),
        (lambda p: p[1] <= y_max, 1, y_max),
    ]
    points = list(polygon)
    for inside, axis, bound in edges:
        clipped = []
        for a, b in zip(points[-1:] + points[:-1], points):
            if inside(b) != inside(a):
                t = (bound - a[axis]) / (b[axis] - a[axis])
                clipped.append(tuple(a[i] + t * (b[i] - a[i]) for i in range(2)))
            if inside(b):
                clipped.append(b)
        points = clipped
        if not points:
            return 0.0
    xs, ys = np.array(points).T
    return 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def test_chips_crossing_the_grid_edge_lose_no_pixels(rng):
    out_shape = (30, 40)
    for _ in range(40):
        chip_shape = (int(rng.integers(5, 20)), int(rng.integers(5, 20)))
        angle, scale = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.8)
        matrix = scale * np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        offset = rng.uniform(-15, 45, 2)
        y, x = np.indices(chip_shape, dtype=float)
        pixmap = np.dstack(
            [
                matrix[0, 0] * x + matrix[0, 1] * y + offset[0],
                matrix[1, 0] * x + matrix[1, 1] * y + offset[1],
            ]
        )
        # exact share of every input pixel (a parallelogram) that lies on the grid
        expected = 0.0
        for j in range(chip_shape[0]):
            for i in range(chip_shape[1]):
                corners = np.array([[i - 0.5, j - 0.5], [i + 0.5, j - 0.5], [i + 0.5, j + 0.5]])
                corners = np.vstack([corners, [i - 0.5, j + 0.5]]) @ matrix.T + offset
                expected += _clipped_area([tuple(c) for c in corners], 39.5, 29.5) / scale**2
        accumulator = DrizzleAccumulator(out_shape, enable_err=False)
        try:
            accumulator.add_chip(np.ones(chip_shape, np.float32), pixmap, exptime=1.0)
        except NoOverlapError:
            assert expected < 1e-9
            continue
        # square kernel, unit weights: the total weight is the on-grid area in input pixels;
        # 1e-4 absolute covers float32 accumulation
        assert accumulator.finalize().wht.sum() == pytest.approx(expected, abs=1e-3)


def _banded_and_whole(kernel, grid, rng, monkeypatch, *, context_id=5):
    """The same distorted HRC chip drizzled from its whole map and from PixmapRows (in bands
    of 128 rows)."""
    chip, data = _hrc_scene()
    variance = np.abs(data) + 4.0
    bad = rng.random(HRC_SHAPE) < 0.02
    s = grid.pixel_scale / HRC_IDCSCALE
    args = dict(exptime=60.0, bad_mask=bad, variance=variance, iscale=s**2, pixel_scale_ratio=s,
                pixfrac=0.8, context_id=context_id, in_units="counts")  # fmt: skip
    monkeypatch.setattr(resample, "_BAND_PIXELS", 2**17)  # 1024 rows: 8 bands of 128
    bands = []
    add_in_bands = DrizzleAccumulator._add_in_bands
    monkeypatch.setattr(DrizzleAccumulator, "_add_in_bands",
                        lambda self, *a: bands.append(1) or add_in_bands(self, *a))  # fmt: skip
    products = []
    for pixmap in (compute_pixmap(chip, HRC_SHAPE, grid.wcs, stepsize=10),
                   PixmapRows(chip, HRC_SHAPE, grid.wcs, stepsize=10)):  # fmt: skip
        accumulator = DrizzleAccumulator(grid.shape, kernel=kernel, n_inputs=8)
        accumulator.add_chip(data, pixmap, **args)
        products.append(accumulator.finalize())
    return (*products, len(bands))


@pytest.mark.filterwarnings("ignore:Kernel")
@pytest.mark.filterwarnings("ignore:In lanczos kernel")
@pytest.mark.parametrize("kernel", ["square", "turbo", "point", "gaussian", "lanczos3"])
def test_a_chip_on_the_grid_drizzled_in_bands_equals_the_whole_chip(kernel, rng, monkeypatch):
    # Bands with a zero-weight row on either side: drizzle sees every pixel's true neighbours,
    # and every band carries the chip's context id. Measured: identical for every kernel
    # except square's weight and variance sums, which round differently in the last bit
    # (float32: 1 part in 1e7). The grid has room for the reach of the gaussian and lanczos
    # kernels around the chip.
    chip, _ = _hrc_scene()
    grid = default_output_grid(
        [chip], [HRC_SHAPE], reference_scale=HRC_IDCSCALE, rotation=0.0, pixel_scale_ratio=1.2
    )
    wcs = grid.wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix + 10
    grid = replace(grid, wcs=wcs, shape=(grid.shape[0] + 20, grid.shape[1] + 20))
    whole, banded, banded_chips = _banded_and_whole(kernel, grid, rng, monkeypatch)
    assert banded_chips == 1
    assert np.array_equal(banded.context, whole.context)
    assert set(np.unique(banded.context)) == {0, 1 << 5}
    np.testing.assert_array_equal(banded.data, whole.data)
    for name in ("wht", "err"):
        np.testing.assert_allclose(getattr(banded, name), getattr(whole, name), rtol=3e-7)


@pytest.mark.parametrize("cut", ["top", "bottom", "both"])
def test_a_chip_crossing_the_grid_edge_goes_band_by_band(monkeypatch, cut):
    # Over the edge of the grid, each band of the chip takes its own path: straight to drizzle
    # on the grid, onto a sub-grid of its own across the edge (drizzle 3.0 drops pixels of
    # images that cross its output's edge), not at all off it. The whole map takes one
    # sub-grid for the whole chip: the same weights, context and means up to float32
    # rounding (merged sums: measured 3e-7 relative).
    chip, _ = _hrc_scene()
    grid = default_output_grid(
        [chip], [HRC_SHAPE], reference_scale=HRC_IDCSCALE, rotation=0.0, pixel_scale_ratio=1.2
    )
    ny = grid.shape[0]
    rows = {"top": (0, ny - 200), "bottom": (300, ny), "both": (300, ny - 200)}[cut]
    band_wcs = grid.wcs.deepcopy()
    band_wcs.wcs.crpix[1] -= rows[0]
    small = replace(grid, wcs=band_wcs, shape=(rows[1] - rows[0], grid.shape[1]))
    crossing = []
    original = DrizzleAccumulator._add_crossing_in_bands
    monkeypatch.setattr(DrizzleAccumulator, "_add_crossing_in_bands",
                        lambda self, *a: crossing.append(1) or original(self, *a))  # fmt: skip
    same_bad_pixels = 7  # the seed of both calls' bad-pixel masks
    whole, banded, banded_chips = _banded_and_whole(
        "square", small, np.random.default_rng(same_bad_pixels), monkeypatch
    )
    full = _banded_and_whole("square", grid, np.random.default_rng(same_bad_pixels), monkeypatch)[0]
    assert banded_chips == 0 and crossing == [1]
    assert np.isfinite(whole.data).sum() < np.isfinite(full.data).sum()  # it does cross
    np.testing.assert_array_equal(banded.context, whole.context)
    np.testing.assert_array_equal(np.isnan(banded.data), np.isnan(whole.data))
    for name in ("data", "wht", "err"):
        np.testing.assert_allclose(
            getattr(banded, name), getattr(whole, name), rtol=1e-6, atol=0, equal_nan=True
        )
    # what falls on the band is what the full grid has there
    inside = slice(rows[0], rows[1])
    np.testing.assert_allclose(banded.wht, full.wht[inside], rtol=1e-6, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_chip_off_the_grid_raises_no_overlap_and_adds_nothing():
    y, x = np.indices((10, 10), dtype=float)
    accumulator = DrizzleAccumulator((20, 20), enable_err=False)
    with pytest.raises(NoOverlapError, match=r"j8bt06nyq\[SCI,1\]: no pixel") as info:
        accumulator.add_chip(
            np.ones((10, 10)), np.dstack([x + 40, y]), exptime=1.0, label="j8bt06nyq[SCI,1]"
        )
    assert isinstance(info.value, ResampleInputError) and isinstance(info.value, ValueError)
    assert accumulator.n_chips == 0
    product = accumulator.finalize()
    assert np.all(product.wht == 0) and np.all(np.isnan(product.data))


@pytest.mark.parametrize("exptime", [0.0, -5.0, float("nan"), None])
def test_invalid_exposure_time(exptime):
    y, x = np.indices((5, 5), dtype=float)
    accumulator = DrizzleAccumulator((5, 5), enable_err=False)
    with pytest.raises(InvalidExposureTimeError, match="exposure time"):
        accumulator.add_chip(np.ones((5, 5)), np.dstack([x, y]), exptime=exptime, label="c")


def test_all_pixels_masked_or_non_finite():
    y, x = np.indices((5, 5), dtype=float)
    pixmap = np.dstack([x, y])
    accumulator = DrizzleAccumulator((5, 5), enable_err=False)
    with pytest.raises(AllPixelsMaskedError):
        accumulator.add_chip(np.ones((5, 5)), pixmap, exptime=1.0, bad_mask=np.ones((5, 5), bool))
    with pytest.raises(AllPixelsMaskedError):
        accumulator.add_chip(np.full((5, 5), np.nan), pixmap, exptime=1.0)
    with pytest.raises(AllPixelsMaskedError):
        accumulator.add_chip(np.ones((5, 5)), pixmap, exptime=1.0, weight=np.zeros((5, 5)))


def test_non_finite_data_and_variance_are_bad_pixels(rng):
    shape = (30, 30)
    wcs = tan_wcs(shape)
    grid = default_output_grid([wcs, tan_wcs(shape, crpix_offset=(0.5, 0.3))], [shape] * 2)
    pixmaps = [
        compute_pixmap(w, shape, grid.wcs) for w in (wcs, tan_wcs(shape, crpix_offset=(0.5, 0.3)))
    ]
    clean = [rng.normal(1.0, 0.1, shape).astype(np.float32) for _ in range(2)]
    variance = np.ones(shape, np.float32)
    dirty = clean[0].copy()
    dirty[3, 4], dirty[10, 11], dirty[20, 5] = np.nan, np.inf, -np.inf
    dirty_var = variance.copy()
    dirty_var[15, 15] = np.nan
    dirty_var[16, 16] = -1.0
    bad = np.zeros(shape, bool)
    bad[[3, 10, 20, 15, 16], [4, 11, 5, 15, 16]] = True

    with_bad = DrizzleAccumulator(grid.shape)
    with_bad.add_chip(dirty, pixmaps[0], exptime=1.0, variance=dirty_var)
    with_bad.add_chip(clean[1], pixmaps[1], exptime=1.0, variance=variance)
    masked = DrizzleAccumulator(grid.shape)
    masked.add_chip(clean[0], pixmaps[0], exptime=1.0, variance=variance, bad_mask=bad)
    masked.add_chip(clean[1], pixmaps[1], exptime=1.0, variance=variance)
    got, expected = with_bad.finalize(), masked.finalize()
    assert np.all(np.isfinite(got.data[got.wht > 0]))
    assert np.array_equal(got.data, expected.data, equal_nan=True)
    assert np.array_equal(got.err, expected.err, equal_nan=True)


def test_output_larger_than_memory_limit():
    with pytest.raises(OutputGridTooLargeError, match="GiB") as info:
        DrizzleAccumulator((20000, 20000), n_inputs=64)  # 8 + 4 + 8 bytes/px = 7.5 GiB
    assert isinstance(info.value, ValueError)
    # without error and context the same grid needs 3 GiB and is accepted (nothing allocated
    # until written: zeros are lazily mapped pages)
    DrizzleAccumulator((20000, 20000), enable_err=False, enable_context=False)


def test_weights_that_would_overflow_the_error_image_are_refused():
    y, x = np.indices((6, 6), dtype=float)
    pixmap, ones = np.dstack([x, y]), np.ones((6, 6))
    huge = np.full((6, 6), 1e20)  # squared: 1e40 > float32 max 3.4e38
    with pytest.raises(ValueError, match="overflow"):
        DrizzleAccumulator((6, 6)).add_chip(ones, pixmap, exptime=1.0, weight=huge, variance=ones)
    # without the error image only the linear sums are kept, which do not overflow
    accumulator = DrizzleAccumulator((6, 6), enable_err=False)
    accumulator.add_chip(ones, pixmap, exptime=1.0, weight=huge)
    assert np.allclose(accumulator.finalize().data, 1.0)


def test_options_and_misuse():
    y, x = np.indices((6, 6), dtype=float)
    pixmap = np.dstack([x, y])
    accumulator = DrizzleAccumulator((6, 6), fillval=-1.0, enable_context=False)
    with pytest.raises(ValueError, match="variance"):
        accumulator.add_chip(np.ones((6, 6)), pixmap, exptime=1.0)
    with pytest.raises(ValueError, match="in_units"):
        accumulator.add_chip(np.ones((6, 6)), pixmap, exptime=1.0, in_units="electrons")
    with pytest.raises(ValueError, match="pixmap shape"):
        accumulator.add_chip(np.ones((6, 6)), pixmap[:3], exptime=1.0, variance=np.ones((6, 6)))
    with pytest.raises(ValueError, match="kernel"):
        DrizzleAccumulator((6, 6), kernel="tophat")
    half = np.dstack([x[:, :3], y[:, :3]])
    accumulator.add_chip(np.ones((6, 3)), half, exptime=1.0, variance=np.ones((6, 3)))
    with pytest.raises(ValueError, match="already used"):
        accumulator.add_chip(
            np.ones((6, 3)), half, exptime=1.0, variance=np.ones((6, 3)), context_id=0
        )
    product = accumulator.finalize()
    assert product.context is None
    assert np.all(product.data[:, 3:] == -1.0) and np.all(product.err[:, 3:] == -1.0)
    assert np.all(product.data[:, :3] == 1.0)
    with pytest.raises(RuntimeError, match="finalized"):
        accumulator.add_chip(np.ones((6, 3)), half, exptime=1.0, variance=np.ones((6, 3)))


# ---------------------------------------------------------------------------------------------
# peer: drizzlepac's own C drizzle on a distorted HST WCS
# ---------------------------------------------------------------------------------------------


def _hrc_scene(seed=20261122):
    wcs = WCS(fits.Header(HRC_SIP_HEADER))
    wcs.pixel_shape = HRC_SHAPE[::-1]
    generator = np.random.default_rng(seed)
    y, x = np.indices(HRC_SHAPE)
    data = 50.0 + generator.normal(0.0, 1.0, HRC_SHAPE)
    for _ in range(60):
        cx, cy = generator.uniform(20, 1004, 2)
        data += generator.uniform(100, 5000) * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 2.25)
    return wcs, data.astype(np.float32)


@pytest.mark.peer
@pytest.mark.parametrize("kernel", ["square", "turbo", "point"])
def test_drizzle_agrees_with_drizzlepac_do_driz(kernel):
    import os

    os.environ.setdefault("ASTROMETRY_STEP_CONTROL", "OFF")
    from drizzlepac import adrizzle
    from stwcs.wcsutil import HSTWCS

    def hstwcs(wcs, shape):
        header = wcs.to_header(relax=True)
        result = HSTWCS(fits.HDUList([fits.PrimaryHDU(header=header)]), ext=0)
        result.pixel_shape = shape[::-1]
        return result

    chip, data = _hrc_scene()
    grid = default_output_grid(
        [chip], [HRC_SHAPE], reference_scale=HRC_IDCSCALE, rotation=0.0, pixel_scale_ratio=1.2
    )
    s = grid.pixel_scale / HRC_IDCSCALE
    accumulator = DrizzleAccumulator(grid.shape, kernel=kernel, enable_err=False)
    accumulator.add_chip(
        data,
        compute_pixmap(chip, HRC_SHAPE, grid.wcs, stepsize=10),
        exptime=60.0,
        in_units="counts",
        iscale=s**2,
        pixel_scale_ratio=s,
    )
    ours = accumulator.finalize()

    out_sci = np.zeros(grid.shape, np.float32)
    out_wht = np.zeros(grid.shape, np.float32)
    out_con = np.zeros(grid.shape, np.int32)
    adrizzle.do_driz(
        data.copy(),  # drizzlepac divides counts by the exposure time in place
        hstwcs(chip, HRC_SHAPE),
        np.full(HRC_SHAPE, 60.0, np.float32),
        hstwcs(grid.wcs, grid.shape),
        out_sci,
        out_wht,
        out_con,
        60.0,
        "counts",
        1.0,
        wcslin_pscale=HRC_IDCSCALE,
        uniqid=1,
        pixfrac=1.0,
        kernel=kernel,
        fillval="INDEF",
        stepsize=1,
    )
    covered = out_wht >= 0.5 * np.median(out_wht[out_wht > 0])
    relative = np.abs(ours.data[covered] - out_sci[covered]) / np.abs(out_sci[covered])
    # measured: identical (median 0, 99th percentile 2e-7) although our map is interpolated
    assert np.median(relative) < 1e-3
    assert np.percentile(relative, 99) < 1e-3
    assert np.allclose(ours.wht[covered], out_wht[covered], rtol=1e-4)


@pytest.mark.parametrize("crossing", [False, True])  # the upper chip inside / across the edge
def test_a_run_on_the_rows_its_chips_reach_merges_into_the_whole_grid(crossing):
    # What the final drizzle does with a run of chips at one position of the detector: its
    # accumulation holds only the rows its chips reach (maps from origin (0, start)), and is
    # merged into the whole-grid run at that row. Against one accumulation of both chips:
    # context exact, sums up to float32 rounding of the merge.
    lower, data = _hrc_scene()
    upper = lower.deepcopy()
    upper.wcs.crpix[1] -= 600  # the same chip 600 rows higher
    grid = default_output_grid(
        [lower, upper], [HRC_SHAPE] * 2, reference_scale=HRC_IDCSCALE, rotation=0.0
    )
    ny, nx = grid.shape
    y_min = PixmapRows(upper, HRC_SHAPE, grid.wcs, 10).outline_extent()[2]
    window_start = math.floor(y_min) - 2 + (60 if crossing else 0)
    args = dict(exptime=60.0, variance=np.abs(data) + 4.0, in_units="counts")
    whole = DrizzleAccumulator(grid.shape, n_inputs=2)
    for index, chip in enumerate((lower, upper)):
        whole.add_chip(data, PixmapRows(chip, HRC_SHAPE, grid.wcs, 10), context_id=index, **args)
    expected = whole.finalize()

    first = DrizzleAccumulator(grid.shape, n_inputs=2)
    first.add_chip(data, PixmapRows(lower, HRC_SHAPE, grid.wcs, 10), context_id=0, **args)
    window = DrizzleAccumulator((ny - window_start, nx), n_inputs=2)
    band_map = PixmapRows(upper, HRC_SHAPE, grid.wcs, 10, origin=(0.0, float(window_start)))
    window.add_chip(data, band_map, context_id=1, **args)
    # across the edge, the rows the chip has below the window are left out (the final
    # drizzle's windows hold every row their chips reach): compare the window's rows there
    assert (band_map.outline_extent()[2] < -0.5) == crossing
    merged = first.merge(window, row_offset=window_start).finalize()
    rows = slice(window_start, ny) if crossing else slice(0, ny)
    np.testing.assert_array_equal(merged.context[rows], expected.context[rows])
    for name in ("data", "wht", "err"):
        np.testing.assert_allclose(
            getattr(merged, name)[rows], getattr(expected, name)[rows], rtol=2e-6, atol=0,
            equal_nan=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="cannot merge"):
        DrizzleAccumulator(grid.shape, n_inputs=2).merge(window, row_offset=ny - 10)


@pytest.mark.parametrize("as_rows", [False, True])  # whole pixel maps, or PixmapRows
def test_a_chip_numbered_by_drizzle_after_chips_numbered_by_their_ids_gets_a_bit_of_its_own(
    as_rows,
):
    # With planes for one plane of inputs, chip 0 (across the grid's left edge) takes its id
    # as drizzle's number; chip 32 has no room in the planes and is numbered by drizzle, then
    # moved to its bit: neither may take the other's.
    y, x = np.indices((20, 20), dtype=np.float64)
    grid = WCS(naxis=2)
    grid.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    grid.wcs.crval, grid.wcs.crpix = [10.0, 10.0], [30.5, 30.5]
    grid.wcs.cdelt = [-1e-5, 1e-5]
    placed = {0: (-8.0, 20.0), 32: (25.0, 25.0)}
    alone = {}
    merged = DrizzleAccumulator((60, 60), n_inputs=1)
    for chip_id, (dx, dy) in placed.items():
        if as_rows:
            chip_wcs = grid.deepcopy()
            chip_wcs.wcs.crpix = [30.5 - dx, 30.5 - dy]
            pixmap = PixmapRows(chip_wcs, (20, 20), grid)
        else:
            pixmap = np.dstack([x + dx, y + dy])
        one = DrizzleAccumulator((60, 60), n_inputs=64)
        ones = np.ones((20, 20), np.float32)
        for accumulator in (one, merged):
            accumulator.add_chip(ones, pixmap, exptime=1.0, variance=ones, context_id=chip_id)
        alone[chip_id] = one.finalize().wht > 0
    product = merged.finalize()
    for chip_id, covered in alone.items():
        assert covered.sum() > 100
        np.testing.assert_array_equal(context_contributor_mask(product.context, chip_id), covered)
