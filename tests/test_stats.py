"""Tests of drizzlepipe.algorithms.stats (ImageStats-equivalent clipped statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import drizzlepipe.algorithms.stats as stats_module
from drizzlepipe.algorithms.stats import LabelledSample, imagestats, union_imagestats

FIELDS = ("npix", "mean", "stddev", "min", "max", "median", "mode", "midpt")

# AstroDrizzle's two uses of ImageStats: sky (skypac defaults) and static mask.
SKY = {"nclip": 5, "lsigma": 4.0, "usigma": 4.0, "binwidth": 0.1}
STATIC = {"nclip": 3, "lsigma": 3.0, "usigma": 3.0, "binwidth": 0.1}


def _sky_like(rng, size, sky=120.0, noise=8.0, source_fraction=0.02):
    """Gaussian sky noise plus a heavy tail of sources (cosmic rays, stars), float32."""
    values = rng.normal(sky, noise, size)
    sources = rng.random(size) < source_fraction
    values[sources] += rng.exponential(300.0, sources.sum())
    values = values.astype(np.float32)
    # ImageStats (C) starts its running min/max at the first element, which gives the clip
    # limit instead of the data extreme when that element is clipped (a fixed quirk, see the
    # module docstring); keep a typical value first so both implementations see the same data.
    values.flat[0] = np.float32(sky)
    return values


def _skewed(rng, size):
    values = (rng.gamma(2.0, 15.0, size) + 40.0).astype(np.float32)
    values.flat[0] = np.float32(np.median(values))
    return values


def _reference_clip(values, nclip, lsigma, usigma, lower=-np.inf, upper=np.inf):
    """Straightforward re-statement of the ImageStats loop with boolean masks (float64 sums)."""
    values = values[np.isfinite(values)].astype(np.float32)
    lo, hi = np.float32(lower), np.float32(upper)
    for iteration in range(nclip + 1):
        selected = values[(values >= lo) & (values <= hi)]
        mean = np.float32(selected.astype(np.float64).mean())
        stddev = float(
            np.sqrt(np.sum((selected.astype(np.float64) - mean) ** 2) / (selected.size - 1))
        )
        if iteration < nclip:
            lo = np.float32(max(lower, float(mean) - lsigma * stddev))
            hi = np.float32(min(upper, float(mean) + usigma * stddev))
    return selected, float(mean), stddev


@pytest.mark.parametrize("pars", [SKY, STATIC, {"nclip": 0, "binwidth": 0.1}])
def test_clipped_moments_and_median_match_plain_numpy_loop(rng, pars):
    values = _sky_like(rng, 200_000)
    stats = imagestats(values, **pars)
    lsigma, usigma = pars.get("lsigma", 3.0), pars.get("usigma", 3.0)
    selected, mean, stddev = _reference_clip(values, pars["nclip"], lsigma, usigma)
    assert stats.npix == selected.size  # same clipped set, pixel for pixel
    # float64 sums in a different order: agreement to a few float32 ulps
    assert stats.mean == pytest.approx(mean, rel=1e-6)
    assert stats.stddev == pytest.approx(stddev, rel=1e-6)
    assert stats.min == selected.min() and stats.max == selected.max()
    assert stats.median == pytest.approx(float(np.median(selected)), rel=1e-7)


def test_nan_and_inf_are_ignored(rng):
    values = _sky_like(rng, (300, 300))
    holes = rng.random(values.shape) < 0.1
    with_nan = values.copy()
    with_nan[holes] = np.nan
    with_nan[0, 5] = np.inf
    with_nan[1, 7] = -np.inf
    finite = np.isfinite(with_nan)
    ours = imagestats(with_nan, **SKY)
    reference = imagestats(with_nan[finite], **SKY)
    for name in FIELDS:  # same values exactly: NaN/inf are simply not part of the sample
        assert ours[name] == reference[name], name


def test_mask_excludes_pixels(rng):
    values = _sky_like(rng, (200, 250))
    mask = rng.random(values.shape) < 0.3
    values[mask] = 1e6  # would dominate every statistic if used
    ours = imagestats(values, mask, **SKY)
    reference = imagestats(values[~mask], **SKY)
    for name in FIELDS:
        assert ours[name] == reference[name], name


def test_no_valid_pixel_gives_empty_result():
    for values, mask in [
        (np.full((10, 10), np.nan, dtype=np.float32), None),
        (np.ones((10, 10), dtype=np.float32), np.ones((10, 10), dtype=bool)),
        (np.zeros(0, dtype=np.float32), None),
    ]:
        stats = imagestats(values, mask, **SKY)
        assert stats.npix == 0
        assert all(math.isnan(stats[name]) for name in FIELDS if name != "npix")


def test_nothing_inside_limits_gives_empty_result(rng):
    stats = imagestats(rng.normal(0, 1, 1000), lower=50.0, upper=60.0, nclip=3)
    assert stats.npix == 0 and math.isnan(stats.median)


def test_constant_image_has_zero_sigma_and_exact_location():
    values = np.full((64, 64), 42.5, dtype=np.float32)
    stats = imagestats(values, **SKY)
    assert stats.npix == values.size
    assert stats.stddev == 0.0
    for name in ("mean", "median", "mode", "midpt", "min", "max"):
        assert stats[name] == 42.5, name


def test_single_value_has_zero_sigma():
    stats = imagestats(np.array([3.0, np.nan]), **SKY)
    assert stats.npix == 1 and stats.stddev == 0.0 and stats.median == 3.0


def test_mode_and_midpt_locate_gaussian_peak(rng):
    sigma = 10.0
    values = rng.normal(100.0, sigma, 1_000_000).astype(np.float32)
    stats = imagestats(values, **SKY)
    # midpt interpolates the cumulative histogram at one half; ImageStats places bins with
    # width binwidth*sigma although they are (max-min)/(nbins-1) wide, which pulls midpt and
    # mode towards the minimum by up to half a bin (0.05 sigma) -- kept for parity
    assert abs(stats.midpt - float(np.median(values))) < 0.06 * sigma
    # the parabolic peak of 0.1-sigma bins of 1e6 values is noisy at the ~0.03 sigma level and
    # ImageStats' bin placement adds < 0.05 sigma of bias
    assert abs(stats.mode - 100.0) < 0.1 * sigma
    assert stats.nbins > 2


def test_clipping_removes_source_tail(rng):
    values = _sky_like(rng, 400_000, sky=120.0, noise=8.0, source_fraction=0.05)
    clipped = imagestats(values, **SKY)
    unclipped = imagestats(values, nclip=0)
    # 5% sources with mean 300 raise the raw mean by ~15; clipping brings the mean within
    # 0.2 of the sky (residual faint-source bias) and sigma within 3% of the 8.0 noise
    assert unclipped.mean - 120.0 > 10.0
    assert abs(clipped.mean - 120.0) < 0.5
    assert abs(clipped.median - 120.0) < 0.3
    assert abs(clipped.stddev - 8.0) < 0.03 * 8.0


def test_first_element_outside_clip_range_does_not_leak_limits(rng):
    # ImageStats' C loop reports the clip limit as max when element 0 is above the clip range;
    # here max is always the largest clipped value.
    values = rng.normal(10.0, 1.0, 50_000).astype(np.float32)
    values[0] = 1e4
    stats = imagestats(values, **SKY)
    inside = values[(values >= stats.clip_lower) & (values <= stats.clip_upper)]
    assert stats.max == inside.max() < stats.clip_upper


def test_statistics_scale_with_units(rng):
    # ImageStats' absolute one-bin threshold (1.2e-6) broke data in small units such as
    # erg/s/cm2/A; here every statistic scales with the data.
    values = _sky_like(rng, 100_000).astype(np.float64)
    scale = 1e-20
    ours = imagestats(values, **SKY)
    scaled = imagestats(values * scale, **SKY)
    assert scaled.nbins == ours.nbins > 2
    for name in ("mean", "stddev", "median", "mode", "midpt"):
        # float32 rounding of the scaled values moves clip limits by an ulp at most
        assert scaled[name] == pytest.approx(ours[name] * scale, rel=1e-5), name


def test_lower_upper_limits_are_inclusive(rng):
    values = np.arange(0, 101, dtype=np.float32)
    stats = imagestats(values, lower=10.0, upper=20.0, nclip=0)
    assert stats.npix == 11 and stats.min == 10.0 and stats.max == 20.0 and stats.median == 15.0


def test_only_requested_fields_are_computed(rng):
    stats = imagestats(rng.normal(0, 1, 1000), fields="mode")
    assert stats.mode is not None and stats.median is None and stats.midpt is None
    assert stats.npix == 1000  # moments are always available


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nclip": -1},
        {"lsigma": 0.0},
        {"usigma": -1.0},
        {"binwidth": 0.0},
        {"lower": 5.0, "upper": 1.0},
        {"fields": "mean,average"},
    ],
)
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        imagestats(np.arange(10.0), **kwargs)


def test_mask_shape_must_match():
    with pytest.raises(ValueError, match="mask shape"):
        imagestats(np.zeros((4, 4)), np.zeros((4, 5), dtype=bool))


@pytest.mark.parametrize("pars", [SKY, STATIC])
def test_union_of_regions_agrees_with_sorted_array_path(rng, pars):
    # Two independent implementations (one sorted array vs. per-region anchored sums and
    # bisection): the union of labelled regions must give the same statistics.
    values = _sky_like(rng, 300_000)
    labels = rng.integers(0, 40, values.size)
    samples = [
        LabelledSample(values[:100_000], labels[:100_000]),
        LabelledSample(values[100_000:], labels[100_000:]),
    ]
    chosen = np.arange(0, 40, 3)
    union = union_imagestats([(s, chosen) for s in samples], **pars)
    members = np.isin(labels, chosen)
    reference = imagestats(values[members], **pars)
    assert union.npix == reference.npix
    for name in ("min", "max", "median"):
        assert union[name] == reference[name], name  # order statistics: exact
    for name in ("mean", "stddev", "mode", "midpt"):
        # sums combined per region differ by float64 rounding, shifting the mean by < 1 ulp
        assert union[name] == pytest.approx(reference[name], rel=1e-6), name


def test_union_handles_outliers_and_absent_labels(rng):
    values = rng.normal(50.0, 2.0, 20_000).astype(np.float32)
    values[:10] = 3e7  # far outliers must not spoil the precision of the clipped sums
    labels = np.repeat(np.arange(4), 5_000)
    sample = LabelledSample(values, labels)
    union = union_imagestats([(sample, [0, 1, 99])], **SKY)
    reference = imagestats(values[:10_000], **SKY)
    assert union.npix == reference.npix
    assert union.stddev == pytest.approx(reference.stddev, rel=1e-6)
    assert union.median == reference.median
    assert union_imagestats([(sample, [7, 8])], **SKY).npix == 0


def test_labelled_sample_rejects_bad_input():
    with pytest.raises(ValueError):
        LabelledSample([1.0, np.nan], [0, 0])
    with pytest.raises(ValueError):
        LabelledSample([1.0, 2.0], [0, -1])
    with pytest.raises(ValueError):
        LabelledSample([1.0, 2.0], [0.5, 1.0])


# ---------------------------------------------------------------------------------------------
# independent oracle: stsci.imagestats (the engine AstroDrizzle uses)


@pytest.mark.peer
@pytest.mark.parametrize("distribution", ["sky", "skewed", "integer"])
@pytest.mark.parametrize(
    "pars",
    [
        SKY,
        STATIC,
        {"nclip": 0, "lsigma": 3.0, "usigma": 3.0, "binwidth": 0.3},
        {"nclip": 5, "lsigma": 2.5, "usigma": 3.5, "binwidth": 0.1, "lower": 45.0, "upper": 400.0},
    ],
)
def test_matches_stsci_imagestats(rng, distribution, pars):
    from stsci.imagestats import ImageStats

    if distribution == "sky":
        values = _sky_like(rng, (400, 500))
    elif distribution == "skewed":
        values = _skewed(rng, (400, 500))
    else:  # Poisson counts: many equal values stress ties in bins and order statistics
        values = rng.poisson(60.0, (400, 500)).astype(np.float32)
        values.flat[0] = np.float32(60.0)  # a typical first element (see _sky_like)
    peer = ImageStats(
        values,
        fields=",".join(FIELDS),
        nclip=pars["nclip"],
        lsig=pars["lsigma"],
        usig=pars["usigma"],
        binwidth=pars["binwidth"],
        lower=pars.get("lower"),
        upper=pars.get("upper"),
    )
    # ours also gets NaNs, which it must ignore (ImageStats cannot take them)
    with_nan = values.copy().ravel()
    with_nan = np.insert(with_nan, [1, 100, 5000], np.nan).astype(np.float32)
    ours = imagestats(with_nan, **pars)
    assert ours.npix == peer.npix
    for name in FIELDS[1:]:
        # task tolerance 1e-4; measured worst case 6e-8 (one float32 ulp of stddev or midpt)
        assert ours[name] == pytest.approx(float(getattr(peer, name)), rel=1e-4), name


def test_input_arrays_are_not_modified(rng):
    for values in (
        rng.normal(5.0, 1.0, 1000).astype(np.float32),
        np.asfortranarray(rng.normal(5.0, 1.0, (40, 30)).astype(np.float32)),
        rng.normal(5.0, 1.0, (40, 30)),  # float64: converted, never sorted in place
    ):
        before = values.copy()
        imagestats(values, **SKY)
        np.testing.assert_array_equal(values, before)


# ---------------------------------------------------------------------------------------------
# fast paths: both region-search strategies, masks, pre-grouped input, zeros, precision


def _blocky_labels(shape, block=(40, 100), regions_per_row=7):
    """Labels in rectangular blocks, like image regions: long runs of equal labels along rows."""
    rows, cols = np.indices(shape)
    return (rows // block[0]) * regions_per_row + (cols // block[1]) % regions_per_row


def _union_fields(sample, labels, pars):
    stats = union_imagestats([(sample, labels)], **pars)
    return [stats[name] for name in FIELDS]


def test_union_over_many_regions_searches_by_key_and_by_region_alike(rng, monkeypatch):
    # A search over more than a few dozen regions uses 64-bit composite keys, fewer regions are
    # searched one by one; the union of 60 regions must equal imagestats either way.
    values = _sky_like(rng, 200_000)
    labels = rng.integers(0, 120, values.size)
    sample = LabelledSample(values, labels)
    chosen = np.arange(0, 120, 2)
    reference = imagestats(values[np.isin(labels, chosen)], **SKY)
    keyed = union_imagestats([(sample, chosen)], **SKY)
    assert keyed.npix == reference.npix
    for name in ("min", "max", "median"):
        assert keyed[name] == reference[name], name  # order statistics: exact
    for name in ("mean", "stddev", "mode", "midpt"):
        # per-region sums combined: float64 rounding moves the mean by < 1 float32 ulp
        assert keyed[name] == pytest.approx(reference[name], rel=1e-6), name
    monkeypatch.setattr(stats_module, "_SEARCH_LOOP_REGIONS", 10**9)
    looped = union_imagestats([(sample, chosen)], **SKY)
    for name in FIELDS:
        assert looped[name] == keyed[name], name  # same positions found: identical results


@pytest.mark.parametrize("loop_limit", [0, 10**9])
def test_positive_and_negative_zeros_are_one_value(rng, monkeypatch, loop_limit):
    # -0.0 and +0.0 compare equal but have different bit patterns; the median and the histogram
    # bins sit on them here, in both search strategies.
    monkeypatch.setattr(stats_module, "_SEARCH_LOOP_REGIONS", loop_limit)
    values = rng.normal(0.0, 1.0, 60_000).astype(np.float32)
    values[:25_000] = 0.0
    values[25_000:40_000] = -0.0
    labels = rng.integers(0, 60, values.size)
    union = union_imagestats([(LabelledSample(values, labels), np.arange(60))], **SKY)
    reference = imagestats(values, **SKY)
    assert reference.median == 0.0
    for name in FIELDS:
        assert union[name] == pytest.approx(reference[name], rel=1e-6, abs=1e-12), name
    assert union.npix == reference.npix and union.median == 0.0


def test_labelled_sample_mask_is_the_same_as_dropping_values(rng):
    values = _sky_like(rng, (300, 420))
    labels = _blocky_labels(values.shape)
    mask = rng.random(values.shape) < 0.2
    mask[labels == 3] = True  # one region entirely masked
    values[mask] = np.nan
    values[mask & (rng.random(values.shape) < 0.5)] = np.inf
    masked = LabelledSample(values, labels, mask)
    dropped = LabelledSample(values[~mask], labels[~mask])
    assert masked.size == (~mask).sum()
    np.testing.assert_array_equal(masked.region_labels, dropped.region_labels)
    assert 3 not in masked.region_labels
    for chosen in (masked.region_labels, [0, 1, 2, 3, 9, 10]):
        # same values in every region: identical statistics
        assert _union_fields(masked, chosen, SKY) == pytest.approx(
            _union_fields(dropped, chosen, SKY), rel=0, abs=0, nan_ok=True
        )


def test_runs_of_labels_and_scattered_labels_give_identical_samples(rng):
    # Labels in long runs are grouped run by run, scattered ones by a stable sort of the labels:
    # the same values per region either way, so identical statistics.
    values = _sky_like(rng, (240, 360))
    labels = _blocky_labels(values.shape)
    order = rng.permutation(values.size)
    runs = LabelledSample(values, labels)
    scattered = LabelledSample(values.ravel()[order], labels.ravel()[order])
    for chosen in (runs.region_labels, [1, 5, 8, 13]):
        assert _union_fields(runs, chosen, STATIC) == _union_fields(scattered, chosen, STATIC)


def test_from_groups_and_scale_agree_with_the_constructor(rng):
    values = _sky_like(rng, 90_000)
    labels = np.repeat(rng.permutation(30), 3_000)
    scale = 0.37
    order = np.argsort(labels, kind="stable")
    distinct, sizes = np.unique(labels, return_counts=True)
    grouped = LabelledSample.from_groups(values[order], distinct, sizes, scale=scale)
    scaled = LabelledSample(values * np.float32(scale), labels)  # float32 products, as documented
    for chosen in (distinct, distinct[::4]):
        assert _union_fields(grouped, chosen, SKY) == _union_fields(scaled, chosen, SKY)
    with pytest.raises(ValueError):
        LabelledSample.from_groups(values[order], distinct[::-1], sizes[::-1])
    with pytest.raises(ValueError):
        LabelledSample.from_groups(values[order], distinct, sizes + 1)
    with pytest.raises(ValueError):
        LabelledSample(values, labels, scale=0.0)


def test_small_spread_at_a_high_level_keeps_its_precision(rng):
    # sigma 0.02 on a level of 1e4: raw sums of squares would cancel 11 of their 16 digits;
    # deviations from a reference keep the standard deviation to float32 precision. ImageStats
    # takes the deviations from the float32-rounded mean, and so does the reference here.
    values = (1.0e4 + rng.normal(0.0, 0.02, 200_000)).astype(np.float32)
    exact = values.astype(np.float64)
    mean = float(np.float32(exact.mean()))
    expected = float(np.sqrt(np.sum((exact - mean) ** 2) / (exact.size - 1)))
    assert imagestats(values, nclip=0).stddev == pytest.approx(expected, rel=1e-6)
    sample = LabelledSample(values, np.repeat(np.arange(4), 50_000))
    union = union_imagestats([(sample, [0, 1, 2, 3])], nclip=0)
    assert union.stddev == pytest.approx(expected, rel=1e-6)


def test_mask_of_fortran_ordered_arrays_lines_up_with_the_data(rng):
    values = np.asfortranarray(_sky_like(rng, (200, 300)))
    mask = np.asfortranarray(rng.random(values.shape) < 0.3)
    values[mask] = 1e6  # would dominate every statistic if the mask were misaligned
    ours = imagestats(values, mask, **SKY)
    reference = imagestats(np.ascontiguousarray(values)[~np.ascontiguousarray(mask)], **SKY)
    for name in FIELDS:
        assert ours[name] == reference[name], name


@pytest.mark.peer
@pytest.mark.parametrize("nregions", [12, 90])  # searched region by region / through keys
def test_union_of_regions_matches_stsci_imagestats(rng, nregions):
    from stsci.imagestats import ImageStats

    values = _sky_like(rng, 200_000)
    labels = rng.integers(0, nregions, values.size)
    chosen = np.arange(0, nregions, 2)
    members = values[np.isin(labels, chosen)]
    members[0] = np.float32(120.0)  # a typical first element (ImageStats' C min/max quirk)
    values[np.flatnonzero(np.isin(labels, chosen))[0]] = members[0]
    union = union_imagestats([(LabelledSample(values, labels), chosen)], **SKY)
    peer = ImageStats(
        members,
        fields=",".join(FIELDS),
        nclip=SKY["nclip"],
        lsig=SKY["lsigma"],
        usig=SKY["usigma"],
        binwidth=SKY["binwidth"],
    )
    assert union.npix == peer.npix
    for name in FIELDS[1:]:
        # same tolerance as test_matches_stsci_imagestats (float rounding of sums only)
        assert union[name] == pytest.approx(float(getattr(peer, name)), rel=1e-4), name


def test_has_usable_pixel_finds_the_last_one_and_respects_dq():
    from drizzlepipe.algorithms.stats import has_usable_pixel

    data = np.full((300, 20), np.nan, np.float32)
    dq = np.zeros(data.shape, np.uint32)
    assert not has_usable_pixel(data, dq, 4)
    data[299, 19] = 1.0  # the only finite pixel, in the last block
    assert has_usable_pixel(data, dq, 4)
    dq[299, 19] = 4
    assert not has_usable_pixel(data, dq, 4)  # flagged by a bad bit
    assert has_usable_pixel(data, dq, 8)  # a bit that is not bad
    assert has_usable_pixel(data, dq, 0)  # DQ ignored
