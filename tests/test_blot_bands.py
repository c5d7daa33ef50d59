"""BlotCR's per-chip task works a band of rows at a time: the bands must not change a flag.

``blot_and_detect`` processes ``BAND_ROWS`` chip rows at a time with ``2 + grow + ctegrow`` rows
of margin. Here the same job runs with bands of 7-16 rows (band edges cut cosmic rays, grown
boxes and CTE trails) and as one band holding the whole chip; the masks, counts and blots must
be identical, also for ``noise='err'`` and the median's noise, and in a chip half outside the
median (bands without any median data).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from drizzlepipe.algorithms.blot import fill_holes
from drizzlepipe.execution import ArrayRef
from drizzlepipe.steps import _tasks
from drizzlepipe.steps._tasks import BlotCRJob, blot_and_detect


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


def _job(noise, grow, ctegrow, median_offset=(0.0, 0.0), interp="poly5"):
    rng = np.random.default_rng(7)
    shape = (150, 120)
    median_shape = (170, 160)
    yy, xx = np.mgrid[0 : median_shape[0], 0 : median_shape[1]]
    median = np.full(median_shape, 0.2, np.float32)
    for x0, y0 in rng.uniform(10, 150, (25, 2)):
        median += np.float32(40 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 3.0))
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
    err = np.full(shape, 6.0, np.float32)
    return BlotCRJob(
        data=ArrayRef(array=data),
        err=ArrayRef(array=err) if noise == "err" else None,
        wcs=chip_wcs,
        shape=shape,
        label="chip",
        median=ArrayRef(array=filled),
        holes=ArrayRef(array=holes),
        median_wcs=median_wcs,
        blot_iscale=500.0,
        sky=sky,
        to_counts=1.0,
        readnoise=3.0,
        readout_direction=1,
        noise=noise,
        snr=(3.5, 3.0),
        scale=(1.2, 0.7),
        grow=grow,
        ctegrow=ctegrow,
        interp=interp,
        sinscl=1.0,
        stepsize=10,
        keep_blot=True,
        median_weight=ArrayRef(array=weight),
        exptime=500.0,
    )


@pytest.mark.parametrize(
    ("noise", "grow", "ctegrow", "band_rows", "offset", "interp"),
    [
        ("detector", 1, 0, 7, (0.0, 0.0), "poly5"),
        ("detector", 3, 2, 16, (0.0, 0.0), "poly5"),
        ("err", 2, 3, 11, (0.0, 0.0), "poly5"),
        ("detector", 1, 0, 9, (0.0, 120.0), "poly5"),  # the chip's lower half is off the median
        ("detector", 1, 0, 13, (0.0, 0.0), "lan3"),  # normalised by a blot of ones
    ],
)
def test_bands_give_the_masks_of_the_whole_chip(
    monkeypatch, noise, grow, ctegrow, band_rows, offset, interp
):
    job = _job(noise, grow, ctegrow, offset, interp)
    monkeypatch.setattr(_tasks, "BAND_ROWS", 10**6)
    whole = blot_and_detect(job)
    monkeypatch.setattr(_tasks, "BAND_ROWS", band_rows)
    banded = blot_and_detect(job)
    assert whole.packed_mask is not None
    assert whole.n_flagged > 250  # the cosmic rays are found, so the comparison means something
    assert banded.n_flagged == whole.n_flagged
    np.testing.assert_array_equal(banded.mask(), whole.mask())
    np.testing.assert_allclose(banded.blotted, whole.blotted, rtol=1e-6, equal_nan=True)
    if offset[1]:
        assert np.isnan(whole.blotted[:40]).all()  # bands without median data were there
