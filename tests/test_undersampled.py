"""Cosmic-ray detection around undersampled stars (issue 6).

Four exposures of a star field, dithered by random sub-pixel steps (``drizzlepipe.simulator``),
run through the whole pipeline with its built-in defaults (``preset='none'``, AstroDrizzle's:
minmed, snr "3.5 3.0", scale "1.2 0.7"; the simulator writes WFC3/UVIS headers, for which
``preset='auto'`` would choose few_exposures). Pixels within 2 px of unsaturated stars must
not be flagged more often than the rest of the sky: a star that the median and the blot do not
reproduce (the drizzle kernel and the interpolation smooth a 1-pixel core) must not be taken for
a cosmic ray.

Only pixels without cosmic-ray charge in their 3 x 3 neighbourhood (the simulator's truth) are
counted, so every flag counted is a false one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage
from scipy.stats import poisson

from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.simulator import simulate

CR_BIT = 4096
SATURATED = 256


def _run(tmp_path_factory, psf_fwhm, config_file=None):
    outdir = tmp_path_factory.mktemp(f"fwhm{psf_fwhm}")
    simulation = simulate(
        outdir / "sim", exposures=4, shape=(256, 256), chips=1, seed=11, psf_fwhm=psf_fwhm,
        n_stars=150, star_flux_range=(20.0, 3000.0),
    )  # fmt: skip
    extra = {"config_file": str(config_file)} if config_file else {"preset": "none"}
    DrizzlePipeline.call(
        [str(p) for p in simulation.flt_files],
        steps={"blot_cr": {"save_results": True}},
        output_dir=str(outdir / "out"),
        **extra,
    )
    return simulation, outdir / "out"


def false_flags_near_stars(simulation, out, radius=2.0, edge=8):
    """False cosmic-ray flags within ``radius`` px of unsaturated stars and elsewhere.

    Returns
    -------
    dict
        ``near``/``near_pixels`` and ``far``/``far_pixels`` (flagged and scored pixel counts),
        ``stars`` (star placements scored) and ``stars_hit`` (those with a flag within
        ``radius``). Scored pixels: DQ clean, no cosmic-ray charge in the 3 x 3 box, at least
        10 px from saturated pixels and ``edge`` px from the chip border (where fewer
        exposures overlap).
    """
    placements = Table.read(simulation.placements_file)
    catalog = Table.read(simulation.catalog_file)
    star_ids = set(catalog["id"][catalog["type"] == "star"].tolist())
    counts = dict.fromkeys(("near", "near_pixels", "far", "far_pixels", "stars", "stars_hit"), 0)
    for exposure, (root, path) in enumerate(zip(simulation.rootnames, simulation.flt_files)):
        dq = fits.getdata(path, ("DQ", 1))
        deposit = fits.getdata(simulation.truth_files[exposure], ("CRDEP", 1))
        flagged = (fits.getdata(out / f"{root}_crf.fits", ("DQ", 1)) & CR_BIT) != 0
        scored = (dq == 0) & ~ndimage.binary_dilation(deposit > 0, np.ones((3, 3), bool))
        scored &= ~ndimage.binary_dilation((dq & SATURATED) != 0, iterations=10)
        scored[:edge] = scored[-edge:] = False
        scored[:, :edge] = scored[:, -edge:] = False
        yy, xx = np.mgrid[0 : dq.shape[0], 0 : dq.shape[1]]
        near = np.zeros(dq.shape, bool)
        rows = placements[(placements["rootname"] == root) & (placements["extver"] == 1)]
        for row in rows:
            if row["source_id"] not in star_ids or row["peak_saturated"] or not row["on_chip"]:
                continue
            core = np.hypot(xx - row["x"], yy - row["y"]) <= radius
            near |= core
            if np.array_equal(core & scored, core):
                counts["stars"] += 1
                counts["stars_hit"] += bool((flagged & core).any())
        counts["near"] += np.count_nonzero(flagged & near & scored)
        counts["near_pixels"] += np.count_nonzero(near & scored)
        counts["far"] += np.count_nonzero(flagged & ~near & scored)
        counts["far_pixels"] += np.count_nonzero(~near & scored)
    return counts


def _assert_no_more_flags_near_stars(counts):
    assert counts["near_pixels"] > 3000 and counts["stars"] > 200
    # "No higher than elsewhere": the flags near stars must be what the rate elsewhere predicts
    # for that many pixels, up to its 99.9% Poisson quantile (a rate of 5e-5 predicts 0.2 of
    # ~4700 pixels, so one or two stray noise flags pass, a systematic effect does not).
    expected = counts["far"] / counts["far_pixels"] * counts["near_pixels"]
    assert counts["near"] <= poisson.ppf(0.999, expected)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "FWHM 1 px: 137 of 4677 pixels within 2 px of stars flagged (2.9e-2) vs 4.5e-5 "
        "elsewhere; 31% of star placements have a flagged core. AstroDrizzle on the same "
        "files: 2.65e-2 and 29%. With HAP's scale '1.5 1.2': 1.2e-2 and 14%. "
        "At FWHM 1.8 px: none"
    ),
)
def test_undersampled_star_cores_are_not_flagged(tmp_path_factory):
    simulation, out = _run(tmp_path_factory, psf_fwhm=1.0)
    _assert_no_more_flags_near_stars(false_flags_near_stars(simulation, out))


def test_well_sampled_star_cores_are_not_flagged(tmp_path_factory):
    # The same field with the default UVIS-like PSF (FWHM 1.8 px): measured 0 flags near stars.
    simulation, out = _run(tmp_path_factory, psf_fwhm=1.8)
    _assert_no_more_flags_near_stars(false_flags_near_stars(simulation, out))


def test_undersampled_parameter_file_leaves_star_cores_alone(tmp_path_factory):
    # cfg/undersampled.asdf (drizzlepac's WFC3/IR thresholds) on the same FWHM 1 px field.
    config = Path(__file__).resolve().parents[1] / "cfg" / "undersampled.asdf"
    simulation, out = _run(tmp_path_factory, psf_fwhm=1.0, config_file=config)
    _assert_no_more_flags_near_stars(false_flags_near_stars(simulation, out))
    # ... while the cosmic rays are still found: recall of deposits above 10 sigma.
    found = strong = 0
    for exposure, root in enumerate(simulation.rootnames):
        deposit = fits.getdata(simulation.truth_files[exposure], ("CRDEP", 1))
        with fits.open(out / f"{root}_crf.fits") as crf:
            dq, err = crf["DQ", 1].data, crf["ERR", 1].data
        big = (deposit > 10 * err) & ((dq & ~CR_BIT) == 0)
        found += np.count_nonzero(big & ((dq & CR_BIT) != 0))
        strong += np.count_nonzero(big)
    # Larger derivative multipliers also shield cosmic rays that land on the stars of this
    # crowded field (150 stars on 256 x 256 px): measured 0.954 of the > 10 sigma pixels found
    # (0.95 is the floor of that trade-off; the defaults find 0.99 but flag 31% of star cores).
    assert found / strong >= 0.95
