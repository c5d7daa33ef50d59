"""BlotCR's per-chip work goes a band of rows at a time: the bands must not change a flag.

``drizzlepipe.algorithms.blotcr.blot_and_detect`` processes ``BAND_ROWS`` chip rows at a time
with ``2 + grow + ctegrow`` rows of margin. Here the same chip runs with bands of 12-40 rows
(band edges cut cosmic rays, grown boxes and CTE trails; many faint hits near the threshold,
where a wrong derivative at a band edge changes flags) and as one band holding the whole chip;
the masks, counts and blots must be identical, also for ``noise='err'``, the median's noise,
both readout directions, Lanczos, and a chip half outside the median (bands without any median
data). One case is also checked against the algorithms called directly on the whole chip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from astropy.wcs import WCS

from drizzlepipe.algorithms import blotcr
from drizzlepipe.algorithms.blot import blot, fill_holes, sample_nearest
from drizzlepipe.algorithms.blotcr import BlotMedian, ChipScaling, CosmicRayTest
from drizzlepipe.algorithms.crdetect import detect_cosmic_rays
from drizzlepipe.algorithms.pixmap import compute_pixmap
from drizzlepipe.chipwork import prepare_median
from drizzlepipe.execution import Executor


def _tan(crpix, rotation=0.0, scale=0.05):
    theta = math.radians(rotation)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = crpix
    s = scale / 3600
    wcs.wcs.cd = s * np.array(
        [[-math.cos(theta), math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    return wcs


@dataclass
class _Chip:
    """One chip with its median, scaling and test: the arguments of ``blot_and_detect``."""

    data: np.ndarray
    err: Any
    wcs: Any
    median: BlotMedian
    scaling: ChipScaling
    test: CosmicRayTest

    def run(self):
        return blotcr.blot_and_detect(
            self.data, self.wcs, self.median, self.scaling, self.test, err=self.err,
            keep_blot=True, label="chip",
        )  # fmt: skip


def _job(
    noise, grow, ctegrow, median_offset=(0.0, 0.0), interp="poly5", seed=7, direction=1, faint=1500
):
    rng = np.random.default_rng(seed)
    shape = (150, 120)
    median_shape = (170, 160)
    yy, xx = np.mgrid[0 : median_shape[0], 0 : median_shape[1]]
    median = np.full(median_shape, 0.2, np.float32)
    for x0, y0 in rng.uniform(5, 155, (150, 2)):  # narrow stars: a steep blot derivative
        peak = rng.uniform(2, 40)
        median += np.float32(peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 2.0))
    median[60:64, 20:30] = np.nan  # a hole in the median
    filled, holes = fill_holes(median)
    weight = np.full(median_shape, 4 * 500.0, np.float32)
    sky = 30.0
    chip_wcs = _tan([60.0 + median_offset[0], 75.0 + median_offset[1]], rotation=7.0)
    median_wcs = _tan([80.0, 85.0])
    truth = np.full(shape, sky, np.float32) + rng.normal(0, 6.0, shape).astype(np.float32)
    data = truth.copy()
    hits = rng.integers(0, shape[0] * shape[1], 300)
    data.flat[hits] += rng.uniform(50, 2000, hits.size).astype(np.float32)
    faint = rng.integers(0, shape[0] * shape[1], faint)  # 1.5-12 sigma: near the thresholds
    data.flat[faint] += rng.uniform(10, 80, faint.size).astype(np.float32)
    err = np.full(shape, 6.0, np.float32)
    return _Chip(
        data=data,
        err=err if noise == "err" else None,
        wcs=chip_wcs,
        median=BlotMedian(filled, holes.astype(np.float32), weight, False, median_wcs),
        scaling=ChipScaling(
            blot_iscale=500.0, sky=sky, to_counts=1.0, exptime=500.0, readnoise=3.0,
            readout_direction=direction,
        ),
        test=CosmicRayTest(
            snr=(3.5, 3.0), scale=(1.2, 0.7), grow=grow, ctegrow=ctegrow, noise=noise,
            interp=interp, sinscl=1.0, stepsize=10,
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("noise", "grow", "ctegrow", "band_rows", "offset", "interp", "direction"),
    [
        ("detector", 1, 0, 12, (0.0, 0.0), "poly5", 1),
        ("detector", 1, 0, 17, (0.0, 0.0), "poly5", 1),
        ("detector", 3, 2, 28, (0.0, 0.0), "poly5", 1),
        ("detector", 3, 4, 40, (0.0, 0.0), "poly5", -1),
        ("err", 2, 3, 31, (0.0, 0.0), "poly5", 1),
        ("detector", 1, 0, 13, (0.0, 120.0), "poly5", 1),  # lower half off the median
        ("detector", 1, 0, 13, (0.0, 0.0), "lan3", 1),  # normalised by a blot of ones
    ],
)
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_bands_give_the_masks_of_the_whole_chip(
    monkeypatch, noise, grow, ctegrow, band_rows, offset, interp, direction, seed
):
    job = _job(noise, grow, ctegrow, offset, interp, seed, direction)
    assert band_rows >= 4 * (2 + grow + ctegrow)  # the band really has this many rows
    monkeypatch.setattr(blotcr, "BAND_ROWS", 10**6)
    whole = job.run()
    monkeypatch.setattr(blotcr, "BAND_ROWS", band_rows)
    banded = job.run()
    assert whole.packed_mask is not None
    assert whole.n_flagged > 500  # the cosmic rays are found, so the comparison means something
    assert banded.n_flagged == whole.n_flagged
    np.testing.assert_array_equal(banded.mask(), whole.mask())
    np.testing.assert_allclose(banded.blotted, whole.blotted, rtol=1e-6, equal_nan=True)
    if offset[1]:
        assert np.isnan(whole.blotted[:40]).all()  # bands without median data were there


def test_whole_chip_task_is_the_algorithms_on_the_whole_chip(monkeypatch):
    # The reference above is the work with one band; here it is checked against blot() and
    # detect_cosmic_rays() called directly on the whole chip (noise=err: no median noise term
    # to rebuild, so the median's weight is left out).
    job = _job("err", 3, 2)
    job.median = replace(job.median, weight=None)
    monkeypatch.setattr(blotcr, "BAND_ROWS", 28)
    banded = job.run()
    pixmap = compute_pixmap(job.wcs, job.data.shape, job.median.wcs, stepsize=job.test.stepsize)
    iscale = job.scaling.blot_iscale
    blotted = blot(job.median.filled, pixmap, iscale=iscale, fill_value=np.nan)
    blotted[sample_nearest(job.median.holes, pixmap, 1.0) > 0.5] = np.nan
    blotted += np.float32(job.scaling.sky)
    expected = detect_cosmic_rays(
        job.data, blotted, noise="err", err=job.err, grow=3, ctegrow=2, readout_direction=1,
    )  # fmt: skip
    np.testing.assert_array_equal(banded.mask(), expected)


@pytest.mark.parametrize(("grow", "ctegrow"), [(1, 0), (3, 2)])
def test_many_band_edges_with_faint_cosmic_rays(monkeypatch, grow, ctegrow):
    # The shortest bands the task allows (4 x the margin) put a band edge every 12-28 rows, and
    # 2000 hits of 1.5-12 sigma sit near the thresholds: a margin one row short of what the
    # derivative, the neighbourhood and the growths reach changes flags here (checked).
    for seed in range(3):
        job = _job("detector", grow, ctegrow, seed=seed, faint=2000)
        monkeypatch.setattr(blotcr, "BAND_ROWS", 10**6)
        whole = job.run()
        monkeypatch.setattr(blotcr, "BAND_ROWS", 1)
        banded = job.run()
        np.testing.assert_array_equal(banded.mask(), whole.mask())


@pytest.mark.parametrize("with_weight", [True, False])
def test_the_median_is_prepared_alike_in_bands_on_every_scheduler(with_weight, rng):
    ny, nx = 530, 300
    median = rng.uniform(1, 2, (ny, nx)).astype(np.float32)
    median[:40, :] = np.nan  # uncovered rows across the first band
    median[rng.random((ny, nx)) < 0.01] = np.nan
    weight = rng.uniform(100, 2000, (ny, nx)).astype(np.float32) if with_weight else None
    whole = BlotMedian.prepare(median, None, weight=weight)
    holes = np.isnan(median)
    np.testing.assert_array_equal(whole.filled, fill_holes(median)[0])
    if with_weight:
        assert whole.holes_in_weight and whole.holes is None
        np.testing.assert_array_equal(whole.weight, np.where(holes, np.float32(-1), weight))
    else:
        np.testing.assert_array_equal(whole.holes, holes.astype(np.float32))
    for scheduler in ("serial", "threads", "processes"):
        with Executor(scheduler, n_workers=2) as executor:
            banded = prepare_median(executor, median, None, weight=weight)
        for name in ("filled", "holes", "weight"):
            np.testing.assert_array_equal(getattr(banded, name), getattr(whole, name))
        assert banded.holes_in_weight == whole.holes_in_weight
    # without holes nothing marks them
    clean = BlotMedian.prepare(np.ones((ny, nx), np.float32), None, weight=weight)
    assert clean.holes is None and not clean.holes_in_weight


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.0, 120.0)])  # all on, half off the median
def test_holes_carried_in_the_weight_give_the_same_masks_and_blot(offset):
    # BlotCR looks up one array (the median's weight, -1 at its holes) instead of two; the
    # result must be that of the separate holes map and weight (and BlotMedian.prepare makes
    # exactly that array from the median and its weight).
    prepared = BlotMedian.prepare(
        np.where(_job("detector", 1, 0).median.holes > 0.5, np.nan, 1.0).astype(np.float32),
        None,
        weight=np.full((170, 160), 2000.0, np.float32),
    )
    assert prepared.holes is None and prepared.holes_in_weight
    assert (prepared.weight == -1).sum() == 40
    separate = _job("detector", 1, 0, offset)
    combined = _job("detector", 1, 0, offset)
    holes, weight = separate.median.holes, separate.median.weight
    assert (holes > 0.5).sum() == 40  # the median's hole is there
    merged = np.where(holes > 0.5, np.float32(-1.0), weight)
    combined.median = replace(combined.median, holes=None, weight=merged, holes_in_weight=True)
    expected, got = separate.run(), combined.run()
    assert expected.n_flagged > 500 and got.n_flagged == expected.n_flagged
    np.testing.assert_array_equal(got.mask(), expected.mask())
    np.testing.assert_array_equal(np.isnan(got.blotted), np.isnan(expected.blotted))
    np.testing.assert_allclose(got.blotted, expected.blotted, rtol=0, equal_nan=True)
    assert np.isnan(expected.blotted).sum() > 0  # the hole (and the part off the median) left out
