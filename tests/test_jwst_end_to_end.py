"""JWST-shaped exposures end to end with ``cfg/jwst_imaging.asdf``.

Four dithered NIRCam-like ``_cal`` images (stdatamodels.jwst ImageModels with a gwcs, MJy/sr,
ERR, VAR_POISSON and VAR_RNOISE) of one field of stars, with Gaussian noise drawn from those
variances and cosmic rays injected at known pixels, are built here and run through the whole
pipeline. Checked: cosmic rays end up in the chips' DQ as OUTLIER|DO_NOT_USE, the final product
is MJy/sr and filled inside the common footprint, and star fluxes (surface brightness x pixel
solid angle, summed) are preserved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage
from scipy.special import erf

from drizzlepipe.pipelines import DrizzlePipeline
from fitsfactory import simple_gwcs

REPO = Path(__file__).resolve().parents[1]
JWST_CFG = REPO / "cfg" / "jwst_imaging.asdf"

PIXEL_SCALE = 0.031  # arcsec, NIRCam short-wavelength
SHAPE = (160, 170)  # (ny, nx) of each exposure
CRVAL = (53.1, -27.8)
STERADIANS_PER_PIXEL = (PIXEL_SCALE / 206264.806247) ** 2
PSF_FWHM = 2.0  # pixels (NIRCam F200W is about 2 SW pixels)
ELECTRONS_PER_SB = 5000.0  # e- per (MJy/sr) in one pixel of one exposure: sets the Poisson noise
READNOISE_E = 12.0  # e- per pixel (its variance is VAR_RNOISE)
# Dithers (pixels) and rotations (deg): sub-pixel phases all differ; the first is the reference.
DITHERS = [(0.0, 0.0), (3.4, 1.7), (-2.3, 4.6), (5.5, -3.2)]
ROTATIONS = [0.0, 0.3, -0.2, 0.15]
SKIES = [0.30, 0.33, 0.28, 0.31]  # MJy/sr, not subtracted (as in _cal files before skymatch)
N_STARS = 30
N_COSMIC_RAYS = 120  # per exposure
JWST_CR_FLAGS = 1 | 16  # DO_NOT_USE | OUTLIER


def _gwcs(offset, rotation_deg):
    """A gwcs imaging WCS: pixel -> (dithered, rotated) TAN plane at CRVAL -> ICRS."""
    return simple_gwcs(
        SHAPE, crval=CRVAL, scale_arcsec=PIXEL_SCALE, offset=offset, rotation=rotation_deg
    )


def _pixel_integrated_gaussian(x0, y0, sigma):
    """Fraction of a unit-flux circular Gaussian falling in every pixel of SHAPE (exact)."""
    ny, nx = SHAPE
    fraction_x = 0.5 * np.diff(erf((np.arange(nx + 1) - 0.5 - x0) / (np.sqrt(2) * sigma)))
    fraction_y = 0.5 * np.diff(erf((np.arange(ny + 1) - 0.5 - y0) / (np.sqrt(2) * sigma)))
    return np.outer(fraction_y, fraction_x)


def _write_exposures(directory, rng):
    """Write the four ``_cal`` files; return their paths, CR deposits and the star truth."""
    from stdatamodels.jwst import datamodels as jwst_datamodels

    reference = _gwcs((0.0, 0.0), 0.0)
    star_x = rng.uniform(15, SHAPE[1] - 15, N_STARS)
    star_y = rng.uniform(15, SHAPE[0] - 15, N_STARS)
    # Star "brightness" = surface brightness summed over pixels (MJy/sr x pixel), 10..200: every
    # star has S/N > 100 in one exposure; its flux is that times the pixel solid angle (MJy).
    summed_sb = 10 ** rng.uniform(1.0, 2.3, N_STARS)
    ra, dec = reference(star_x, star_y)
    sigma = PSF_FWHM / (2 * np.sqrt(2 * np.log(2)))
    paths, deposits = [], []
    for index, (dither, rotation, sky) in enumerate(zip(DITHERS, ROTATIONS, SKIES)):
        wcs = _gwcs(dither, rotation)
        x, y = wcs.invert(ra, dec)
        expected = np.full(SHAPE, sky)
        for xs, ys, total in zip(x, y, summed_sb):
            expected += total * _pixel_integrated_gaussian(xs, ys, sigma)
        var_poisson = expected / ELECTRONS_PER_SB
        var_rnoise = np.full(SHAPE, (READNOISE_E / ELECTRONS_PER_SB) ** 2)
        err = np.sqrt(var_poisson + var_rnoise)
        data = expected + rng.normal(size=SHAPE) * err
        # Cosmic rays: 8 to 200 sigma single pixels, 30% with a half-height neighbour in x.
        deposit = np.zeros(SHAPE)
        cy = rng.integers(2, SHAPE[0] - 2, N_COSMIC_RAYS)
        cx = rng.integers(2, SHAPE[1] - 2, N_COSMIC_RAYS)
        height = err[cy, cx] * rng.uniform(8.0, 200.0, N_COSMIC_RAYS)
        deposit[cy, cx] += height
        pair = rng.random(N_COSMIC_RAYS) < 0.3
        deposit[cy[pair], cx[pair] + 1] += 0.5 * height[pair]
        model = jwst_datamodels.ImageModel(SHAPE)
        model.data = (data + deposit).astype(np.float32)
        model.err = err.astype(np.float32)
        model.dq = np.zeros(SHAPE, np.uint32)
        model.var_poisson = var_poisson.astype(np.float32)
        model.var_rnoise = var_rnoise.astype(np.float32)
        model.meta.bunit_data = "MJy/sr"
        model.meta.bunit_err = "MJy/sr"
        model.meta.telescope = "JWST"
        model.meta.instrument.name = "NIRCAM"
        model.meta.instrument.detector = "NRCB1"
        model.meta.instrument.filter = "F200W"
        model.meta.exposure.exposure_time = 300.0
        model.meta.exposure.start_time = 60100.0 + 0.01 * index
        model.meta.exposure.end_time = 60100.0 + 0.01 * index + 0.0035
        observation = model.meta.observation
        observation.program_number = "01234"
        observation.observation_number = "001"
        observation.visit_number = "001"
        observation.visit_group = "01"
        observation.sequence_id = "1"
        observation.activity_id = "01"
        observation.exposure_number = str(index + 1)
        model.meta.background.subtracted = False
        model.meta.photometry.pixelarea_arcsecsq = PIXEL_SCALE**2
        model.meta.photometry.pixelarea_steradians = STERADIANS_PER_PIXEL
        model.meta.wcs = wcs
        path = Path(directory) / f"jw01234001001_0110{index + 1}_00001_nrcb1_cal.fits"
        model.meta.filename = path.name
        model.save(path)
        paths.append(path)
        deposits.append(deposit)
    truth = {"ra": ra, "dec": dec, "flux_mjy": summed_sb * STERADIANS_PER_PIXEL}
    return paths, deposits, truth


@pytest.fixture(scope="module")
def jwst_set(tmp_path_factory):
    directory = tmp_path_factory.mktemp("jwst_cal")
    rng = np.random.default_rng(20261122)  # the conftest seed (its rng fixture is per test)
    paths, deposits, truth = _write_exposures(directory, rng)
    return {"paths": paths, "deposits": deposits, "truth": truth, "directory": directory}


def _run(jwst_set, out, **driz_final):
    return DrizzlePipeline.call(
        [str(p) for p in jwst_set["paths"]],
        config_file=str(JWST_CFG),
        steps={"blot_cr": {"save_results": True}, "driz_final": driz_final},
        output_dir=str(out),
    )


@pytest.fixture(scope="module")
def jwst_run(jwst_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("jwst_out")
    return _run(jwst_set, out), out


def _product_wcs(out):
    """The celestial WCS of the saved final product (its SCI header)."""
    with fits.open(out / "final_drz.fits") as hdul:
        return WCS(hdul["SCI"].header)


def _star_flux_ratios(image, image_wcs, truth, radius=6.0):
    """Aperture flux (MJy) of every star in a surface-brightness image over its true flux.

    The sky left in the image (sky matching only equalises the exposures) is the median of an
    annulus of 9-12 pixels around each star.
    """
    scale_deg = np.sqrt(abs(np.linalg.det(image_wcs.pixel_scale_matrix)))
    steradians = np.deg2rad(scale_deg) ** 2
    x, y = image_wcs.world_to_pixel_values(truth["ra"], truth["dec"])
    half = 12
    ratios = []
    for xs, ys, flux in zip(x, y, truth["flux_mjy"]):
        xc, yc = int(round(float(xs))), int(round(float(ys)))
        stamp = image[yc - half : yc + half + 1, xc - half : xc + half + 1]
        if stamp.shape != (2 * half + 1, 2 * half + 1) or not np.isfinite(stamp).all():
            continue
        yy, xx = np.mgrid[yc - half : yc + half + 1, xc - half : xc + half + 1]
        distance = np.hypot(xx - xs, yy - ys)
        background = np.median(stamp[(distance >= 9) & (distance <= 12)])
        ratios.append((stamp - background)[distance <= radius].sum() * steradians / flux)
    return np.array(ratios)


def _near_stars(wcs, truth, radius):
    """Pixels of a chip within ``radius`` pixels of any star centre."""
    x, y = wcs.invert(truth["ra"], truth["dec"])
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    near = np.zeros(SHAPE, bool)
    for xs, ys in zip(x, y):
        near |= np.hypot(xx - xs, yy - ys) <= radius
    return near


@pytest.fixture(scope="module")
def cr_scores(jwst_set, jwst_run):
    """Cosmic-ray flags of the ``_crf`` copies scored against the injected deposits."""
    from stdatamodels.jwst import datamodels as jwst_datamodels

    _, out = jwst_run
    scores = {"found": 0, "strong": 0, "false": 0, "clean": 0, "flag_values": set()}
    for path, deposit in zip(jwst_set["paths"], jwst_set["deposits"]):
        with jwst_datamodels.open(str(out / path.name.replace("_cal", "_crf"))) as model:
            dq = np.asarray(model.dq)
            err = np.asarray(model.err)
            wcs = model.meta.wcs
        with jwst_datamodels.open(str(path)) as original:
            scores.setdefault("inputs_untouched", True)
            scores["inputs_untouched"] &= not np.asarray(original.dq).any()
        flagged = dq != 0
        scores["flag_values"] |= set(np.unique(dq[flagged]).tolist())
        # Score where every other exposure sees the same sky (dithers <= 6 px) and away from
        # stars, whose cores the derivative term protects on purpose.
        scored = np.zeros(SHAPE, bool)
        scored[8:-8, 8:-8] = True
        scored &= ~_near_stars(wcs, jwst_set["truth"], radius=5.0)
        strong = scored & (deposit > 10 * err)
        clean = scored & ~ndimage.binary_dilation(deposit > 0, np.ones((3, 3), bool))
        scores["found"] += np.count_nonzero(flagged & strong)
        scores["strong"] += np.count_nonzero(strong)
        scores["false"] += np.count_nonzero(flagged & clean)
        scores["clean"] += np.count_nonzero(clean)
    return scores


def test_cosmic_rays_are_flagged_outlier_and_do_not_use(cr_scores):
    assert cr_scores["inputs_untouched"]  # flags go to the _crf copies, never the inputs
    # Every flag the pipeline set (the inputs had none) is OUTLIER and DO_NOT_USE together.
    assert cr_scores["flag_values"] == {JWST_CR_FLAGS}
    assert cr_scores["strong"] > 300
    # Pure Gaussian noise exceeds 4 sigma (two-sided) in 6e-5 of the pixels, and must also have
    # a 5-sigma pixel next to it: 1e-3 leaves room for the median's own noise (measured: 0 of
    # 75931).
    assert cr_scores["false"] / cr_scores["clean"] < 1e-3


def test_cosmic_rays_above_ten_sigma_are_all_found(cr_scores):
    # A 10-sigma deposit exceeds the 5-sigma pass-1 and 4-sigma pass-2 thresholds of the JWST
    # settings by 5 sigma of noise: missing more than 1% would be a detection fault.
    # Measured: 454 of 454.
    assert cr_scores["found"] / cr_scores["strong"] >= 0.99


def test_final_product_is_mjy_per_sr_and_filled_in_the_common_footprint(jwst_set, jwst_run):
    final, out = jwst_run
    assert final.meta.bunit == "MJy/sr"
    assert final.meta.units == "surface_brightness"
    assert fits.getheader(out / "final_drz.fits", "SCI")["BUNIT"] == "MJy/sr"
    product_wcs = _product_wcs(out)
    # Output pixels whose centre lies at least one pixel inside all four exposures.
    ny, nx = final.data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = product_wcs.pixel_to_world_values(xx.ravel(), yy.ravel())
    common = np.ones(xx.size, bool)
    for dither, rotation in zip(DITHERS, ROTATIONS):
        x, y = _gwcs(dither, rotation).invert(ra, dec)
        common &= (x >= 0.5) & (x <= SHAPE[1] - 1.5) & (y >= 0.5) & (y <= SHAPE[0] - 1.5)
    common = common.reshape(ny, nx)
    assert common.sum() > 0.8 * SHAPE[0] * SHAPE[1]
    assert np.isfinite(final.data[common]).all()
    assert np.all(final.wht[common] > 0)
    assert np.isfinite(final.err[common]).all() and np.all(final.err[common] > 0)
    assert final.meta.resample.ndrizim == 4


def test_star_fluxes_are_preserved(jwst_set, jwst_run):
    # The cfg's ivm weights must not depend on the sources: VAR_POISSON would weight star peaks
    # down (a median flux ratio of 0.71 here); measured 1.0004 with VAR_RNOISE.
    final, out = jwst_run
    ratios = _star_flux_ratios(final.data, _product_wcs(out), jwst_set["truth"])
    _assert_fluxes(ratios)


def test_star_fluxes_are_preserved_with_exptime_weights(jwst_set, tmp_path):
    # Exposure-time weights, for comparison: measured 1.0003.
    final = _run(jwst_set, tmp_path, weight_type="exptime")
    ratios = _star_flux_ratios(final.data, _product_wcs(tmp_path), jwst_set["truth"])
    _assert_fluxes(ratios)


def _assert_fluxes(ratios):
    assert len(ratios) >= 25  # stars whose 12-pixel stamp lies on the product
    # Each star: S/N >= 100 over four exposures with the sky annulus error (< 1%), aperture loss
    # of a 2-pixel FWHM star within 6 pixels of its centre < 1e-6; the median of 25-30 stars is
    # good to ~0.3%, so 1% is a real failure of flux conservation.
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)
