"""Tests of the data simulator (``drizzlepipe.simulator``) and the ``drizzlepipe simulate`` CLI.

Every test measures a property of the written files: fluxes, sky, noise, cosmic rays, flags and
positions are checked against the truth files or against independent computations (astropy
WCS, scipy), never against the simulator's own intermediate numbers.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage

from drizzlepipe.cli import main
from drizzlepipe.simulator import read_simulation, simulate

EXPTIME = 500.0
SHAPE = (256, 256)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Three dithered exposures of 2 x 256 x 256 with many bright stars (~1 s to make)."""
    outdir = tmp_path_factory.mktemp("simulated")
    return simulate(
        outdir,
        exposures=3,
        shape=SHAPE,
        chips=2,
        seed=11,
        exptime=EXPTIME,
        n_stars=110,
        n_galaxies=30,
        star_flux_range=(50.0, 3000.0),
    )


def _chips(result):
    """Yield (rootname, extver, dict of arrays and header WCS) for every chip of the set."""
    for flt, truth in zip(result.flt_files, result.truth_files):
        with fits.open(flt) as hdus, fits.open(truth) as truths:
            rootname = hdus[0].header["ROOTNAME"]
            for extver in (1, 2):
                yield (
                    rootname,
                    extver,
                    {
                        "sci": hdus["SCI", extver].data.astype(float),
                        "err": hdus["ERR", extver].data.astype(float),
                        "dq": hdus["DQ", extver].data,
                        "cr": truths["CRDEP", extver].data.astype(float),
                        "model": truths["MODEL", extver].data.astype(float),
                        "wcs": WCS(hdus["SCI", extver].header, hdus),
                        "sky": result.sky[rootname],
                    },
                )


def _pixel_area(wcs, x, y, scale):
    """Area of pixel (x, y) on the sky / scale**2, from its four corners (shoelace formula)."""
    corners_x = x + np.array([-0.5, 0.5, 0.5, -0.5])
    corners_y = y + np.array([-0.5, -0.5, 0.5, 0.5])
    ra, dec = wcs.all_pix2world(corners_x, corners_y, 0)
    center = SkyCoord(*wcs.all_pix2world([x], [y], 0), unit="deg")
    dlon, dlat = center.spherical_offsets_to(SkyCoord(ra, dec, unit="deg"))
    u, v = dlon.to_value("arcsec"), dlat.to_value("arcsec")
    area = 0.5 * abs(np.dot(u, np.roll(v, -1)) - np.dot(v, np.roll(u, -1)))
    return area / scale**2


def _isolated_stars(catalog, x, y, shape, min_flux, border=12, isolation=15.0, wings=3.0):
    """Unsaturated stars >= min_flux, ``isolation`` px from any star, and ``isolation`` +
    ``wings`` r_eff from any galaxy (the broadest Gaussians of an n=4 galaxy reach ~10 r_eff)."""
    ny, nx = shape
    reach = isolation + wings * np.asarray(catalog["r_eff_pix"])
    chosen = []
    for i in range(len(catalog)):
        if catalog["type"][i] != "star" or catalog["saturated"][i] or catalog["flux"][i] < min_flux:
            continue
        if not (border <= x[i] < nx - border and border <= y[i] < ny - border):
            continue
        distance = np.hypot(x - x[i], y - y[i])
        distance[i] = np.inf
        if np.any(distance < reach):
            continue
        chosen.append(i)
    return chosen


def test_star_counts_equal_flux_times_exptime_over_pixel_area(small_set):
    catalog = Table.read(small_set.catalog_file)
    placements = Table.read(small_set.placements_file)
    scale = small_set.parameters["pixel_scale"]
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    ratios, pulls, areas = [], [], []
    for rootname, extver, chip in _chips(small_set):
        x, y = chip["wcs"].all_world2pix(catalog["ra"], catalog["dec"], 0)
        for i in _isolated_stars(catalog, x, y, SHAPE, min_flux=200.0):
            radius = np.hypot(xx - x[i], yy - y[i])
            aperture = radius < 6  # the Gaussian PSF (sigma 0.76 px) is complete at 6 px
            annulus = (radius > 8) & (radius < 12) & (chip["dq"] == 0)
            if (chip["dq"][aperture] != 0).any():
                continue
            clean = chip["sci"] - chip["cr"]
            background = np.median(clean[annulus])
            measured = (clean[aperture] - background).sum()
            area = _pixel_area(chip["wcs"], x[i], y[i], scale)
            expected = catalog["flux"][i] * EXPTIME / area
            # noise: Poisson + read noise of the aperture and of the background estimate
            sigma = math.sqrt(
                (chip["err"][aperture] ** 2).sum()
                + (aperture.sum() * 1.25 * clean[annulus].std() / math.sqrt(annulus.sum())) ** 2
            )
            pulls.append((measured - expected) / sigma)
            ratios.append(measured / expected)
            areas.append(area)
            row = placements[
                (placements["rootname"] == rootname)
                & (placements["extver"] == extver)
                & (placements["source_id"] == i)
            ]
            # the truth table states the same expectation (corner vs Jacobian area: 1e-6)
            assert row["expected_counts"][0] == pytest.approx(expected, rel=1e-5)
    assert len(pulls) >= 15
    # each star within 4.5 sigma of flux * exptime / area (Poisson + read noise)
    assert np.max(np.abs(pulls)) < 4.5
    # and the mean over stars within 3 standard errors of exactly 1 (no flux bias)
    assert abs(np.mean(ratios) - 1) < 3 * np.std(ratios) / math.sqrt(len(ratios)) + 2e-4
    # the distortion makes the pixel area vary; ignoring it would be visible
    assert np.ptp(areas) > 0.003


def test_sky_level_is_the_truth_sky(small_set):
    for _, _, chip in _chips(small_set):
        sky_only = (chip["model"] - chip["sky"] < 0.01) & (chip["dq"] == 0) & (chip["cr"] == 0)
        values = chip["sci"][sky_only]
        assert values.size > 20000
        # mean of Poisson(sky + dark) - dark + read noise is the sky; 5 standard errors
        assert abs(values.mean() - chip["sky"]) < 5 * values.std() / math.sqrt(values.size)
    low, high = small_set.parameters["sky_range"]
    assert all(low <= sky <= high for sky in small_set.sky.values())
    assert len(set(small_set.sky.values())) == len(small_set.sky)  # per-exposure skies


def test_err_is_the_true_one_sigma(small_set):
    for _, _, chip in _chips(small_set):
        good = chip["dq"] == 0
        pull = ((chip["sci"] - chip["model"] - chip["cr"]) / chip["err"])[good]
        # ~120000 pixels: standard errors 0.003 (mean) and 0.002 (std)
        assert abs(pull.mean()) < 0.015
        assert abs(pull.std() - 1) < 0.01
        # scatter of pure-sky pixels equals their ERR (sqrt(sky + dark + readnoise**2))
        sky_only = good & (chip["model"] - chip["sky"] < 0.01) & (chip["cr"] == 0)
        assert chip["sci"][sky_only].std() == pytest.approx(
            np.median(chip["err"][sky_only]), rel=0.02
        )


def test_cosmic_rays_cover_one_percent_and_look_like_cosmic_rays(small_set):
    sizes, extents, peaks, pulls = [], [], [], []
    for _, _, chip in _chips(small_set):
        hit = chip["cr"] > 0
        # "about 1%": the generator stops at the event that reaches 1% (+ one event's pixels)
        assert 0.009 < hit.mean() < 0.011
        significant = chip["cr"] > 5 * chip["err"]
        labels, n = ndimage.label(significant, structure=np.ones((3, 3)))
        sizes.extend(np.bincount(labels.ravel())[1:])
        extents.extend(
            max(s[0].stop - s[0].start, s[1].stop - s[1].start)
            for s in ndimage.find_objects(labels)
        )
        peaks.extend(ndimage.maximum(chip["cr"], labels, np.arange(1, n + 1)))
        # the deposit is really in the data: residual after removing it is pure noise
        usable = hit & (chip["dq"] == 0)
        pulls.extend(((chip["sci"] - chip["model"] - chip["cr"]) / chip["err"])[usable])
    sizes = np.array(sizes)
    assert len(sizes) > 500
    assert np.mean(sizes == 1) > 0.03  # single-pixel hits exist (about 9%)
    assert 2 <= np.median(sizes) <= 8  # typical events are small blobs
    assert np.max(extents) >= 8  # and some are tracks
    assert 400 < np.median(peaks) < 2500  # peak deposits of ~1000 e- (Landau-like)
    assert abs(np.mean(pulls)) < 0.1 and np.std(pulls) < 1.1


def test_dq_flags_every_defect_and_nothing_else_is_anomalous(small_set):
    with fits.open(small_set.defects_file) as defects:
        injected = {k: defects["DEFECTS", k].data for k in (1, 2)}
    for _, extver, chip in _chips(small_set):
        dq = chip["dq"]
        residual = chip["sci"] - chip["model"] - chip["cr"]
        # unflagged pixels are all consistent with noise (7 sigma: ~1e-6 false alarms in total)
        assert np.abs(residual[dq == 0] / chip["err"][dq == 0]).max() < 7
        # every injected defect is flagged, with its own bit
        assert np.all((dq & injected[extver]) == injected[extver])
        hot = (dq & 16) > 0
        assert hot.sum() == pytest.approx(0.001 * dq.size, abs=1)  # hot_pixel_fraction
        assert np.median(residual[hot]) > 30  # hot pixels hold a large dark excess
        bad = (dq & 4) > 0
        bad_columns = np.flatnonzero(bad.any(axis=0))
        assert len(bad_columns) == 2  # bad_columns default
        for column in bad_columns:
            rows = np.flatnonzero(bad[:, column])
            assert np.all(np.diff(rows) == 1)  # one contiguous segment ...
            assert rows[0] == 0 or rows[-1] == SHAPE[0] - 1  # ... reaching a chip edge
            assert abs(np.median(residual[rows, column])) > 50  # with a visible offset
        assert not np.any(dq & 4096)  # cosmic rays are never pre-flagged


def test_saturated_star_bleeds_along_its_column_conserving_charge(tmp_path):
    result = simulate(
        tmp_path,
        exposures=1,
        shape=(200, 64),
        chips=1,
        seed=3,
        n_stars=1,
        n_galaxies=0,
        cr_fraction=0.0,
        hot_pixel_fraction=0.0,
        warm_pixel_fraction=0.0,
        bad_columns=0,
    )
    catalog = Table.read(result.catalog_file)
    assert catalog["saturated"][0]
    with fits.open(result.flt_files[0]) as hdus, fits.open(result.truth_files[0]) as truth:
        sci = hdus["SCI", 1].data.astype(float)
        err = hdus["ERR", 1].data.astype(float)
        dq = hdus["DQ", 1].data
        model = truth["MODEL", 1].data.astype(float)
        x, y = WCS(hdus["SCI", 1].header).all_world2pix(catalog["ra"], catalog["dec"], 0)
    saturated = (dq & 256) > 0
    assert saturated[int(round(y[0])), int(round(x[0]))]
    rows, cols = np.nonzero(saturated)
    assert np.ptp(rows) > 3 * np.ptp(cols)  # a vertical bleed trail, not a blob
    # bleeding moves charge but keeps it (the trail stays on the chip): total within 5 sigma
    assert abs((sci - model).sum()) < 5 * math.sqrt((err**2).sum())
    # saturated pixels sit at (or, at the trail tips, below) the full well
    assert sci[saturated].max() < 65000 + 5 * 3.2


def test_positions_follow_the_header_wcs(small_set):
    catalog = Table.read(small_set.catalog_file)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    offsets_model, offsets_data = [], []
    for _, _, chip in _chips(small_set):
        x, y = chip["wcs"].all_world2pix(catalog["ra"], catalog["dec"], 0)
        for i in _isolated_stars(catalog, x, y, SHAPE, min_flux=200.0):
            aperture = np.hypot(xx - x[i], yy - y[i]) < 7
            if (chip["dq"][aperture] != 0).any():  # a bad column or hot pixel would pull it
                continue
            for image, offsets in (
                (chip["model"] - chip["sky"], offsets_model),
                (chip["sci"] - chip["cr"] - chip["sky"], offsets_data),
            ):
                weight = image[aperture]
                offsets.append(
                    (
                        (weight * xx[aperture]).sum() / weight.sum() - x[i],
                        (weight * yy[aperture]).sum() / weight.sum() - y[i],
                    )
                )
    offsets_model = np.array(offsets_model)
    offsets_data = np.array(offsets_data)
    assert len(offsets_model) >= 10
    # noiseless centroids: pixel integration biases a 0.76 px sigma Gaussian by <1e-4 px,
    # wings of neighbours by a few 1e-4 px
    assert np.abs(offsets_model).max() < 1e-3
    # noisy centroids: >1e5 e- stars, sky noise over a 7 px lever arm gives sigma ~0.005 px
    assert np.abs(offsets_data).max() < 0.03


def test_wcs_has_moderate_sip_distortion_and_dithers(small_set):
    half_diagonal = 0.5 * math.hypot(*SHAPE)
    centers = []
    for _, _, chip in _chips(small_set):
        wcs = chip["wcs"]
        assert wcs.sip is not None and wcs.wcs.has_cd()
        x = np.array([0, SHAPE[1] - 1, 0, SHAPE[1] - 1, SHAPE[1] / 2])
        y = np.array([0, 0, SHAPE[0] - 1, SHAPE[0] - 1, SHAPE[0] / 2])
        distorted = np.array(wcs.all_pix2world(x, y, 0))
        linear = np.array(wcs.wcs_pix2world(x, y, 0))
        dx, dy = wcs.wcs_world2pix(*distorted, 0) - np.array([x, y])
        # largest SIP displacement at the corners: 0.006 * half-diagonal (sampled 33x33 grid)
        assert np.hypot(dx, dy).max() == pytest.approx(0.006 * half_diagonal, rel=0.15)
        assert np.allclose(distorted[:, -1], linear[:, -1], atol=1e-9)  # none at CRPIX
        centers.append(wcs.all_pix2world([[128.0, 128.0]], 0)[0])
    centers = np.array(centers)[::2]  # SCI,1 of each exposure
    shift = SkyCoord(centers[0, 0], centers[0, 1], unit="deg").separation(
        SkyCoord(centers[1:, 0], centers[1:, 1], unit="deg")
    )
    pixels = shift.arcsec / small_set.parameters["pixel_scale"]
    assert np.all(pixels > 0.05) and np.all(pixels < 5 * math.sqrt(2) + 0.5)  # dithers


def test_truth_scene_holds_the_catalogue_flux(small_set):
    catalog = Table.read(small_set.catalog_file)
    with fits.open(small_set.scene_file) as hdus:
        scene = hdus[0].data.astype(float)
        header = hdus[0].header
    assert header["BUNIT"] == "ELECTRONS/S"
    wcs = WCS(header)
    x, y = wcs.all_world2pix(catalog["ra"], catalog["dec"], 0)
    assert np.allclose(x, catalog["x_truth"], atol=1e-6)
    # the grid is oriented like the first exposure (ORIENTAT = 45 deg)
    assert "CD1_1" in header  # a CD matrix, usable as AstroDrizzle's final_refimage
    matrix = wcs.pixel_scale_matrix
    assert math.degrees(math.atan2(matrix[0, 1], matrix[1, 1])) == pytest.approx(45.0)
    yy, xx = np.mgrid[: scene.shape[0], : scene.shape[1]]
    checked = 0
    for i in _isolated_stars(catalog, x, y, scene.shape, min_flux=50.0, wings=10.0):
        aperture = np.hypot(xx - x[i], yy - y[i]) < 6
        # noiseless: exact to the float32 storage and the flux budget outside stamps (1e-5)
        assert scene[aperture].sum() == pytest.approx(catalog["flux"][i], rel=1e-5)
        checked += 1
    assert checked >= 5
    assert scene.min() >= 0


def test_sersic_mixtures_follow_the_sersic_profile():
    from scipy.special import gammaincinv

    from drizzlepipe.simulator import _sersic_mixture

    radius = np.geomspace(0.1, 3.0, 60)
    for sersic_n, tolerance in ((1.0, 0.01), (4.0, 0.05)):
        amplitudes, variances, r_half = _sersic_mixture(sersic_n)
        assert amplitudes.sum() == pytest.approx(1.0)
        mixture = (
            amplitudes * np.exp(-(radius[:, None] ** 2) / (2 * variances)) / (2 * np.pi * variances)
        ).sum(axis=1)
        b = gammaincinv(2 * sersic_n, 0.5)
        profile = np.exp(-b * (radius ** (1 / sersic_n) - 1))
        ratio = mixture / profile
        assert np.ptp(ratio) / ratio.mean() < 2 * tolerance
        if sersic_n == 1.0:
            # within 8 r_eff an exponential keeps all its light: half-light radius = r_eff
            assert r_half == pytest.approx(1.0, rel=0.01)
        else:
            # n=4 loses its far wings to the 4-8 r_eff cut: a smaller half-light radius
            assert 0.7 < r_half < 1.0


def test_rendering_integrates_gaussians_over_pixels(rng):
    from scipy.stats import multivariate_normal

    from drizzlepipe.simulator import _render_gaussians

    shape = (48, 48)
    for _ in range(6):
        image = np.zeros(shape)
        sigma_x, sigma_y = rng.uniform(0.4, 2.5, 2)
        rho = rng.uniform(-0.6, 0.6)
        cov = np.array(
            [[sigma_x**2, rho * sigma_x * sigma_y], [rho * sigma_x * sigma_y, sigma_y**2]]
        )
        x0, y0 = rng.uniform(20, 28, 2)
        _render_gaussians(
            image, np.array([x0]), np.array([y0]), cov[None], np.array([1000.0]), np.array([6.0])
        )
        # flux-exact: the whole Gaussian lands in the image
        assert image.sum() == pytest.approx(1000.0, rel=1e-7)
        # pixel values are integrals over the pixel (scipy's bivariate normal CDF)
        ix, iy = int(round(x0)), int(round(y0))
        for dx, dy in ((0, 0), (1, 0), (0, -1), (2, 1), (-1, -2)):
            px, py = ix + dx, iy + dy
            exact = 1000.0 * multivariate_normal.cdf(
                [px + 0.5, py + 0.5],
                mean=[x0, y0],
                cov=cov,
                lower_limit=[px - 0.5, py - 0.5],
                abseps=1e-9,
                releps=1e-9,
            )
            # sub-pixel sampling at >= 4 samples per sigma: midpoint error < 0.3% of the peak
            assert image[py, px] == pytest.approx(exact, abs=3e-3 * image.max())


def _read_arrays(path):
    with fits.open(path) as hdus:
        return [hdu.data.copy() for hdu in hdus[1:]]


def test_same_seed_same_files_and_exposures_independent_of_their_number(tmp_path):
    kwargs = {"shape": (64, 64), "chips": 2, "n_stars": 20, "n_galaxies": 5}
    first = simulate(tmp_path / "a", exposures=2, seed=21, **kwargs)
    again = simulate(tmp_path / "b", exposures=2, seed=21, **kwargs)
    alone = simulate(tmp_path / "c", exposures=1, seed=21, **kwargs)
    other = simulate(tmp_path / "d", exposures=1, seed=22, **kwargs)
    for path_a, path_b in zip(first.flt_files, again.flt_files):
        for a, b in zip(_read_arrays(path_a), _read_arrays(path_b)):
            assert np.array_equal(a, b)
    assert np.array_equal(
        Table.read(first.catalog_file)["ra"], Table.read(again.catalog_file)["ra"]
    )
    # exposure 0 does not depend on how many exposures follow it
    for a, b in zip(_read_arrays(first.flt_files[0]), _read_arrays(alone.flt_files[0])):
        assert np.array_equal(a, b)
    assert not np.array_equal(
        _read_arrays(first.flt_files[0])[0], _read_arrays(other.flt_files[0])[0]
    )
    assert first.rootnames != other.rootnames  # rootnames carry the seed
    assert len(set(first.rootnames)) == len(first.rootnames)


def test_existing_files_are_never_overwritten_without_permission(tmp_path):
    kwargs = {"exposures": 1, "shape": (48, 48), "chips": 1, "seed": 5, "n_stars": 5}
    result = simulate(tmp_path, **kwargs)
    before = {path: path.read_bytes() for path in result.flt_files + [result.catalog_file]}
    with pytest.raises(FileExistsError, match="already exist"):
        simulate(tmp_path, **kwargs)
    result.flt_files[0].unlink()  # even one remaining truth file blocks a new simulation
    with pytest.raises(FileExistsError):
        simulate(tmp_path, **kwargs)
    assert result.catalog_file.read_bytes() == before[result.catalog_file]
    simulate(tmp_path, overwrite=True, **kwargs)
    assert result.flt_files[0].read_bytes() == before[result.flt_files[0]]
    assert read_simulation(tmp_path).flt_files == result.flt_files


def test_headers_carry_what_astrodrizzle_needs(small_set):
    rootnames = set()
    for path in small_set.flt_files:
        with fits.open(path) as hdus:
            primary = hdus[0].header
            for key in ("EXPTIME", "EXPSTART", "EXPEND", "PA_V3", "ATODGNA", "READNSED"):
                assert isinstance(primary[key], float)
            assert (primary["TELESCOP"], primary["INSTRUME"], primary["DETECTOR"]) == (
                "HST",
                "WFC3",
                "UVIS",
            )
            for key in ("NPOLFILE", "D2IMFILE", "DGEOFILE", "IDCTAB"):
                assert primary[key] == "N/A"
            assert primary["EXPEND"] - primary["EXPSTART"] == pytest.approx(EXPTIME / 86400)
            rootnames.add(primary["ROOTNAME"])
            assert [hdu.header.get("EXTNAME") for hdu in hdus[1:]] == ["SCI", "ERR", "DQ"] * 2
            for extver, ccdchip in ((1, 2), (2, 1)):  # UVIS order: SCI,1 is CCDCHIP 2
                sci = hdus["SCI", extver]
                assert sci.header["CCDCHIP"] == ccdchip
                assert (
                    sci.data.dtype.str[1:] == "f4"
                    and hdus["ERR", extver].data.dtype.str[1:] == "f4"
                )
                assert hdus["DQ", extver].data.dtype.str[1:] == "i2"
                assert sci.header["BUNIT"] == "ELECTRONS"
                good = (hdus["DQ", extver].data & sci.header["SDQFLAGS"]) == 0
                assert sci.header["NGOODPIX"] == good.sum()
                assert sci.header["MEANDARK"] == pytest.approx(0.0005 * EXPTIME)
                assert sci.header["IDCSCALE"] == small_set.parameters["pixel_scale"]
                assert sci.header["EXPNAME"] == primary["ROOTNAME"]
                assert sci.header["ORIENTAT"] == pytest.approx(45.0, abs=0.06)  # +-rotation
    assert len(rootnames) == len(small_set.flt_files)


def test_cli_simulate_writes_the_requested_layout(tmp_path, capsys):
    outdir = tmp_path / "cli"
    argv = ["simulate", str(outdir), "--exposures", "2", "--shape", "64", "80"]
    argv += ["--chips", "1", "--seed", "4", "--stars", "10", "--psf-fwhm", "1.0"]
    assert main(argv) == 0
    assert "wrote 2 exposures" in capsys.readouterr().out
    result = read_simulation(outdir)
    assert len(result.flt_files) == 2
    with fits.open(result.flt_files[0]) as hdus:
        assert len(hdus) == 4  # primary + SCI, ERR, DQ of one chip
        assert hdus["SCI", 1].data.shape == (64, 80)
    assert result.parameters["psf_fwhm"] == 1.0
    assert np.sum(Table.read(result.catalog_file)["type"] == "star") == 10
    assert result.parameters["n_stars"] == 10
    # the same command again must refuse to overwrite; bad values are reported, not raised
    assert main(argv) == 1
    assert "already exist" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "x"), "--exposures", "0"]) == 1
    assert "exposures must be between" in capsys.readouterr().err


def test_cli_runs_as_a_program(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "drizzlepipe.cli", "simulate", str(tmp_path), "--exposures", "1"]
        + ["--shape", "40", "40", "--chips", "1", "--stars", "3", "--galaxies", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:drizzlepipe"},
    )
    assert completed.returncode == 0, completed.stderr
    assert len(list(Path(tmp_path).glob("*_flt.fits"))) == 1


def test_datamodels_open_reads_a_simulated_exposure(small_set):
    from drizzlepipe import datamodels

    catalog = Table.read(small_set.catalog_file)
    path = small_set.flt_files[1]
    models = datamodels.open(path)
    assert isinstance(models, list) and len(models) == 2
    with fits.open(path) as hdus:
        for extver, model in enumerate(models, start=1):
            assert np.array_equal(model.data, hdus["SCI", extver].data)
            assert np.array_equal(model.err, hdus["ERR", extver].data)
            assert np.array_equal(model.dq, hdus["DQ", extver].data.astype(np.uint32))
            assert model.meta.exposure.exptime == EXPTIME
            header_wcs = WCS(hdus["SCI", extver].header, hdus)
            expected = header_wcs.all_world2pix(catalog["ra"], catalog["dec"], 0)
            got = model.meta.wcs.all_world2pix(catalog["ra"], catalog["dec"], 0)
            assert np.allclose(got, expected, atol=1e-6)


@pytest.mark.peer
def test_astrodrizzle_accepts_simulated_exposures(small_set, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("ASTROMETRY_STEP_CONTROL", "OFF")  # no remote astrometry service
    from drizzlepac import astrodrizzle

    monkeypatch.chdir(tmp_path)
    for path in small_set.flt_files:  # AstroDrizzle edits its inputs: work on copies
        shutil.copy(path, tmp_path / path.name)
    astrodrizzle.AstroDrizzle(
        sorted(p.name for p in small_set.flt_files),
        output="final",
        updatewcs=False,
        num_cores=1,
        build=True,
        context=True,
        clean=True,
        preserve=False,
    )
    with fits.open(tmp_path / "final_drz.fits") as drz:
        sci = drz["SCI"].data.astype(float)
        weight = drz["WHT"].data
        assert "CTX" in drz
        wcs = WCS(drz["SCI"].header)
    catalog = Table.read(small_set.catalog_file)
    x, y = wcs.all_world2pix(catalog["ra"], catalog["dec"], 0)
    yy, xx = np.mgrid[: sci.shape[0], : sci.shape[1]]
    ratios = []
    for i in _isolated_stars(catalog, x, y, sci.shape, min_flux=200.0):
        radius = np.hypot(xx - x[i], yy - y[i])
        aperture = radius < 6
        if (weight[aperture] == 0).any():
            continue
        annulus = (radius > 8) & (radius < 12) & (weight > 0)
        ratios.append((sci[aperture] - np.median(sci[annulus])).sum() / catalog["flux"][i])
    assert len(ratios) >= 6
    # AstroDrizzle's e-/s output returns the catalogue flux: median within 0.5% (noise of the
    # ~S/N 500 stars: 0.2%); individual stars within 3% (its CR step may clip a star core)
    assert np.median(ratios) == pytest.approx(1.0, abs=0.005)
    assert np.mean(np.abs(np.array(ratios) - 1) < 0.03) >= 0.8
    recalled = []
    for path, truth_path in zip(small_set.flt_files, small_set.truth_files):
        with fits.open(tmp_path / path.name) as hdus, fits.open(truth_path) as truth:
            for extver in (1, 2):
                # its sky (MDRIZSKY, e- per pixel) finds the truth sky within 0.5 e-
                assert hdus["SCI", extver].header["MDRIZSKY"] == pytest.approx(
                    small_set.sky[hdus[0].header["ROOTNAME"]], abs=0.5
                )
                strong = truth["CRDEP", extver].data > 5 * hdus["ERR", extver].data
                flagged = (hdus["DQ", extver].data & 4096) > 0
                recalled.append(flagged[strong].mean())
    # its CR flags find the simulated cosmic rays (measured 0.92-0.98 per chip)
    assert np.min(recalled) > 0.85
