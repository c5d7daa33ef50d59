"""Tests of drizzlepipe.algorithms.staticmask (per-chip low-pixel masks OR-ed per position)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from drizzlepipe.algorithms.staticmask import (
    build_static_masks,
    chip_static_mask,
    combine_static_masks,
    low_pixel_threshold,
)

SHAPE = (256, 300)


def _chip(rng, sky=200.0, noise=10.0):
    """Sky plus noise bounded to +-3 sigma: no pixel is naturally below mode - 4 sigma."""
    noise_values = np.clip(rng.normal(0.0, noise, SHAPE), -3.0 * noise, 3.0 * noise)
    data = sky + noise_values
    stars = rng.random(SHAPE) < 0.01  # sources only raise pixels
    data[stars] += rng.exponential(500.0, stars.sum())
    return data.astype(np.float32)


def _inject_low(data, rng, count, depth):
    """Put ``count`` pixels at sky - depth; return their flat indices."""
    where = rng.choice(data.size, count, replace=False)
    data.flat[where] = np.float32(np.median(data) - depth)
    return where


def test_low_pixels_of_one_exposure_are_masked_in_all_exposures_of_that_position(rng):
    positions = {"chip1": [], "chip2": []}
    injected = {"chip1": np.zeros(SHAPE, bool), "chip2": np.zeros(SHAPE, bool)}
    shallow = np.zeros(SHAPE, bool)
    inputs = []
    for exposure in range(3):
        for position in positions:
            data = _chip(rng, sky=150.0 + 20 * exposure)
            if position == "chip1" and exposure == 1:
                # 8 sigma below the sky: bad; 2 sigma below: must stay good
                injected[position].flat[_inject_low(data, rng, 40, 80.0)] = True
                shallow_where = _inject_low(data, rng, 40, 20.0)
                shallow.flat[shallow_where] = ~injected[position].flat[shallow_where]
            inputs.append((position, data, None))
    result = build_static_masks(inputs)
    assert set(result.masks) == {"chip1", "chip2"}
    np.testing.assert_array_equal(result.masks["chip1"], injected["chip1"])
    assert not result.masks["chip1"][shallow].any()
    assert not result.masks["chip2"].any()  # nothing else anywhere
    assert len(result.thresholds) == 6 and all(t is not None for t in result.thresholds)
    with ThreadPoolExecutor(2) as pool:
        threaded = build_static_masks(iter(inputs), map_=pool.map)
    assert threaded.thresholds == result.thresholds  # same order, same values
    for position in positions:
        np.testing.assert_array_equal(threaded.masks[position], result.masks[position])


def test_threshold_is_mode_minus_static_sig_sigma(rng):
    data = _chip(rng, sky=500.0, noise=20.0)
    threshold = low_pixel_threshold(data, static_sig=4.0)
    # noise clipped at +-3 sigma keeps sigma ~ 20 (the tails pile up at the clip values), and
    # the mode is within one 0.1-sigma bin (2.0) of the sky: threshold 500 - 4 x 20 within 2.5
    assert threshold == pytest.approx(500.0 - 4.0 * 20.0, abs=2.5)
    deeper = low_pixel_threshold(data, static_sig=5.0)
    assert threshold - deeper == pytest.approx(20.0, rel=0.02)  # exactly one sigma apart


def test_constant_nan_and_empty_chips_flag_nothing():
    constant = np.full(SHAPE, 7.0, dtype=np.float32)
    assert low_pixel_threshold(constant) is None  # one histogram bin: AstroDrizzle skips it
    assert not chip_static_mask(constant).any()
    all_nan = np.full(SHAPE, np.nan, dtype=np.float32)
    assert low_pixel_threshold(all_nan) is None
    assert not chip_static_mask(all_nan).any()


def test_nan_pixels_are_not_flagged_but_low_ones_are(rng):
    data = _chip(rng)
    data[10:20, 10:20] = np.nan
    data[50, 60] = -1000.0
    mask = chip_static_mask(data)
    assert mask[50, 60]
    assert not mask[10:20, 10:20].any()
    assert mask.sum() == 1


def test_statistics_mask_excludes_pixels_from_the_threshold(rng):
    data = _chip(rng, sky=300.0)
    bad_block = np.zeros(SHAPE, bool)
    bad_block[:, :150] = True
    data[bad_block] = 0.0  # half the chip dead: without a mask the mode would be 0
    assert low_pixel_threshold(data) < 1.0
    threshold = low_pixel_threshold(data, bad_block)
    assert threshold == pytest.approx(300.0 - 4.0 * 10.0, abs=1.5)  # as above, noise 10
    assert chip_static_mask(data, bad_block)[bad_block].all()  # dead pixels are low: flagged


def test_combine_static_masks_is_a_logical_or():
    first = np.zeros((3, 4), bool)
    second = np.zeros((3, 4), bool)
    first[0, 0] = True
    second[2, 3] = True
    combined = combine_static_masks([first, second])
    assert combined.sum() == 2 and combined[0, 0] and combined[2, 3]
    assert not first[2, 3]  # inputs are not modified
    with pytest.raises(ValueError):
        combine_static_masks([first, np.zeros((4, 3), bool)])
    with pytest.raises(ValueError):
        combine_static_masks([])


def test_position_with_two_shapes_is_rejected(rng):
    with pytest.raises(ValueError, match="one position must have one shape"):
        build_static_masks([("a", np.zeros((4, 4)), None), ("a", np.zeros((5, 4)), None)])


def test_static_sig_must_be_positive(rng):
    with pytest.raises(ValueError):
        low_pixel_threshold(_chip(rng), static_sig=0.0)


@pytest.mark.peer
def test_matches_astrodrizzle_static_mask_rule(rng):
    # AstroDrizzle's rule (drizzlepac/staticMask.py addMember) with stsci.imagestats, on Gaussian
    # noise with natural outliers on both sides and a column of low pixels.
    from stsci.imagestats import ImageStats

    stars = rng.random(SHAPE) < 0.02
    data = (rng.normal(80.0, 6.0, SHAPE) + stars * 400.0).astype(np.float32)
    data[:, 17] -= 60.0
    data.flat[0] = np.float32(80.0)  # typical first element (ImageStats' C min/max quirk)
    stats = ImageStats(data, nclip=3, fields="mode", lower=np.nanmin(data), upper=np.nanmax(data))
    expected = np.less(data, stats.mode - 4.0 * stats.stddev) if len(stats.histogram) >= 2 else None
    ours = chip_static_mask(data, static_sig=4.0)
    np.testing.assert_array_equal(ours, expected)  # same pixels, exactly
    assert ours[~stars[:, 17], 17].all()  # the low column (where no star lifts it)
    assert ours.sum() > (~stars[:, 17]).sum()  # plus natural low outliers
