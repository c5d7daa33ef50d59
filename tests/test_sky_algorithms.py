"""Tests of drizzlepipe.algorithms.sky on simulated exposures with known sky levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from drizzlepipe.algorithms.sky import (
    SkyChip,
    SkyCoverage,
    SkyMatchError,
    SkyStatistic,
    brightness_factor,
    compute_sky,
    globalmin_match_sky,
    globalmin_sky,
    localmin_sky,
    match_sky,
    sky_coverage,
)

RA, DEC = 150.1, 2.2


def tan_wcs(crpix, scale_arcsec=0.1, rotation_deg=0.0):
    """TAN WCS with the given 1-based CRPIX, pixel scale and rotation (north up, east left)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [RA, DEC]
    wcs.wcs.crpix = list(crpix)
    cos, sin = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    wcs.wcs.cd = np.array([[-cos, sin], [sin, cos]]) * scale_arcsec / 3600.0
    return wcs


class Scene:
    """A sky scene sampled on a master grid of 0.1"/px; exposures are aligned cut-outs of it.

    The scene (a gentle gradient plus stars, in count rate per pixel) is common to all exposures;
    each exposure adds its own sky level and noise, so only the sky differs between overlaps.
    """

    def __init__(self, rng, shape=(620, 620), stars=400):
        ny, nx = shape
        y, x = np.mgrid[0:ny, 0:nx]
        self.rate = 0.002 * x + 0.001 * y  # gradient, counts/s/pixel
        for sx, sy, flux in zip(
            rng.uniform(0, nx, stars), rng.uniform(0, ny, stars), rng.exponential(40.0, stars)
        ):
            box = (slice(max(int(sy) - 6, 0), int(sy) + 7), slice(max(int(sx) - 6, 0), int(sx) + 7))
            self.rate[box] += flux * np.exp(-((x[box] - sx) ** 2 + (y[box] - sy) ** 2) / 3.0)
        self.centre = (nx / 2.0 + 0.5, ny / 2.0 + 0.5)  # 1-based CRPIX of the master grid

    def exposure(self, rng, name, origin, sky_rate, exptime, size=256, noise=1.0, chips=1):
        """Counts data of an exposure whose first pixel is master pixel ``origin`` (x, y)."""
        ox, oy = origin
        made = []
        for chip in range(chips):
            cy = oy + chip * size  # chips stacked in y, like two CCDs without a gap
            counts = (self.rate[cy : cy + size, ox : ox + size] + sky_rate) * exptime
            counts = counts + rng.normal(0.0, noise, counts.shape)
            wcs = tan_wcs((self.centre[0] - ox, self.centre[1] - cy))
            made.append(
                SkyChip(
                    counts.astype(np.float32), wcs, name, 0.1, exptime, True, name=f"{name}.{chip}"
                )
            )
        return made


def _relative(result, exposure_ids):
    sky = result.exposure_sky
    return np.array([sky[e] for e in exposure_ids]) - min(sky[e] for e in exposure_ids)


# ---------------------------------------------------------------------------------------------
# units


def test_brightness_factor_units():
    assert brightness_factor(0.1, 500.0, in_counts=False) == pytest.approx(100.0)
    assert brightness_factor(0.1, 500.0, in_counts=True) == pytest.approx(0.2)
    assert brightness_factor(0.05, 1.0, in_counts=False) == pytest.approx(400.0)
    assert brightness_factor(0.05, 10.0, in_counts=False, per_area=True) == 1.0  # e.g. MJy/sr
    with pytest.raises(ValueError):
        brightness_factor(0.0, 1.0, False)
    with pytest.raises(ValueError):
        brightness_factor(0.1, 0.0, True)


# ---------------------------------------------------------------------------------------------
# localmin / globalmin


def _flat_chip(rng, sky, exptime, name, scale=0.1, noise=5.0, in_counts=True, shape=(200, 200)):
    data = sky + rng.normal(0.0, noise, shape)
    stars = rng.random(shape) < 0.003
    data[stars] += rng.exponential(2000.0, stars.sum())  # sources the clipping must reject
    return SkyChip(
        data.astype(np.float32), tan_wcs((100, 100), scale), name, scale, exptime, in_counts
    )


def test_localmin_recovers_each_exposure_sky(rng):
    # per-pixel sky (e-) of exposure A: chips at 300 and 330 -> both get 300 (minimum brightness);
    # exposure B: 420 in both chips
    chips = [
        _flat_chip(rng, 300.0, 100.0, "A"),
        _flat_chip(rng, 330.0, 100.0, "A"),
        _flat_chip(rng, 420.0, 200.0, "B"),
        _flat_chip(rng, 420.0, 200.0, "B"),
    ]
    result = localmin_sky(chips)
    # noise 5 e- on 40000 pixels: median error ~0.03 e-, plus < 0.02 e- of residual source bias
    np.testing.assert_allclose(result.sky, [300.0, 300.0, 420.0, 420.0], atol=0.1)
    assert result.chip_statistic[1] == pytest.approx(330.0, abs=0.1)
    assert result.exposure_sky["B"] == pytest.approx(420.0 / 200.0 / 0.01, rel=1e-3)


def test_globalmin_compares_brightness_not_pixel_values(rng):
    # A: 300 e- in 100 s at 0.1" -> 300 e-/s/arcsec^2; B: 400 e- in 200 s -> 200 (the minimum);
    # C: count rate 0.3 e-/s at 0.05" -> 120 e-/s/arcsec^2 would win if its pixel scale were
    # ignored... it is the darkest: 0.3 / 0.0025 = 120.
    chips = [
        _flat_chip(rng, 300.0, 100.0, "A"),
        _flat_chip(rng, 400.0, 200.0, "B"),
        _flat_chip(rng, 0.3, 50.0, "C", scale=0.05, noise=0.005, in_counts=False),
    ]
    result = globalmin_sky(chips)
    minimum = 120.0  # e-/s/arcsec^2
    expected = [minimum * 0.01 * 100.0, minimum * 0.01 * 200.0, minimum * 0.0025]
    np.testing.assert_allclose(result.sky[:2], expected[:2], atol=0.1)  # e- per pixel
    assert result.sky[2] == pytest.approx(expected[2], rel=1e-3)  # e-/s per pixel


def test_statistics_choices_agree_on_clean_sky(rng):
    chips = [_flat_chip(rng, 250.0, 1.0, "A", noise=4.0)]
    for stat in ("median", "mode", "mean", "midpt"):
        result = localmin_sky(chips, SkyStatistic(stat=stat))
        # all estimate the 250 e- sky; mode/midpt are histogram-based (0.1 sigma bins, and
        # ImageStats' bin placement can shift them by half a bin): 0.5 e- covers them all
        assert result.sky[0] == pytest.approx(250.0, abs=0.5), stat


def test_lower_upper_limits_apply_to_data(rng):
    chip = _flat_chip(rng, 100.0, 1.0, "A")
    data = chip.data.copy()
    data[:, :100] = 5000.0  # half the chip bright: only the limits keep it out
    limited = SkyChip(data, chip.wcs, "A", 0.1, 1.0, True)
    result = localmin_sky([limited], SkyStatistic(lower=0.0, upper=1000.0))
    assert result.sky[0] == pytest.approx(100.0, abs=0.1)


# ---------------------------------------------------------------------------------------------
# bad input


def test_masked_nan_and_constant_chips(rng):
    good = _flat_chip(rng, 300.0, 100.0, "A")
    masked = SkyChip(good.data, good.wcs, "A", 0.1, 100.0, True, mask=np.ones((200, 200), bool))
    nan_chip = SkyChip(np.full((50, 50), np.nan, np.float32), good.wcs, "B", 0.1, 100.0, True)
    constant = SkyChip(np.full((50, 50), 77.0, np.float32), good.wcs, "C", 0.1, 100.0, True)
    result = localmin_sky([good, masked, nan_chip, constant])
    assert result.empty_chips == (1, 2)
    assert result.empty_exposures == ("B",)
    assert result.sky[1] == result.sky[0]  # takes its exposure's other chip
    assert result.sky[2] == 0.0  # undefined: nothing subtracted
    assert result.sky[3] == 77.0  # sigma = 0 is fine
    assert math.isnan(result.chip_statistic[1])


def test_invalid_arguments(rng):
    chip = _flat_chip(rng, 300.0, 100.0, "A")
    with pytest.raises(ValueError):
        compute_sky([chip], "median")
    with pytest.raises(ValueError):
        SkyStatistic(stat="average")
    with pytest.raises(ValueError):
        compute_sky([chip], "user")  # needs values
    with pytest.raises(ValueError):
        compute_sky([chip], "user", user_values=[1.0, 2.0])
    with pytest.raises(ValueError, match="mask shape"):
        localmin_sky([SkyChip(chip.data, chip.wcs, "A", 0.1, 1.0, True, mask=np.zeros((3, 3)))])


def test_user_values_pass_through(rng):
    chips = [_flat_chip(rng, 300.0, 100.0, "A"), _flat_chip(rng, 300.0, 100.0, "B")]
    result = compute_sky(chips, "user", user_values=[12.5, 7.0])
    assert result.sky == (12.5, 7.0) and result.method == "user"


# ---------------------------------------------------------------------------------------------
# match


def _check_offsets(result, ids, true_rates, exptime=1.0):
    """Matched offsets equal the true relative sky (brightness) within 0.1% of each offset."""
    true = np.array(true_rates) / 0.01  # e-/s/pixel at 0.1" -> e-/s/arcsec^2
    true = true - true.min()
    found = _relative(result, ids)
    nonzero = true > 0
    np.testing.assert_allclose(found[nonzero], true[nonzero], rtol=1e-3)
    assert found[~nonzero] == pytest.approx(0.0, abs=1e-3 * true.max())


def test_match_recovers_offsets_of_four_overlapping_exposures(rng):
    scene = Scene(rng)
    rates = [100.0, 220.0, 140.0, 300.0]  # e-/s per pixel, 1 s exposures: e- per pixel
    origins = [(40, 40), (140, 90), (90, 170), (190, 200)]
    chips = []
    for k, (rate, origin) in enumerate(zip(rates, origins)):
        chips += scene.exposure(rng, f"e{k}", origin, rate, 1.0)
    result = match_sky(chips)
    ids = [f"e{k}" for k in range(4)]
    # The shared stars and gradient cancel exactly (aligned cut-outs, both members of a pair are
    # measured on the same cells), so only noise limits the result: overlaps of >= 20000 pixels
    # with 1 e- noise give each level to ~0.01 e-, against 0.1% of the smallest offset (0.04 e-)
    _check_offsets(result, ids, rates)
    assert result.match_groups == (tuple(ids),) and result.unmatched_exposures == ()
    assert result.sky[0] == pytest.approx(0.0, abs=1e-9)  # lowest set to zero
    # without matching, the stars and gradient bias each exposure differently
    local = _relative(localmin_sky(chips), ids)
    assert np.abs(local - _relative(result, ids)).max() > 0.5


def test_match_when_one_exposure_overlaps_only_one_other(rng):
    scene = Scene(rng)
    rates = [100.0, 200.0, 160.0, 320.0]
    origins = [(0, 0), (100, 50), (60, 150), (200, 320)]  # e3 touches e2 only (116 x 86 px)
    chips = []
    for k, (rate, origin) in enumerate(zip(rates, origins)):
        chips += scene.exposure(rng, f"e{k}", origin, rate, 1.0)
    overlap = sky_coverage(chips).overlapping_exposures()
    assert overlap[3].tolist() == [False, False, True, True]
    result = match_sky(chips)
    # e3 is tied by one 10000-pixel overlap: its offset (160 e-) to ~0.02 e-, 0.1% is 0.16 e-
    _check_offsets(result, [f"e{k}" for k in range(4)], rates)


def test_match_with_perfectly_coincident_exposures(rng):
    # AstroDrizzle/skypac failed on identical footprints (drizzlepac #376)
    scene = Scene(rng)
    rates = [150.0, 110.0, 190.0]
    chips = []
    for k, rate in enumerate(rates):
        chips += scene.exposure(rng, f"e{k}", (100, 100), rate, 1.0)
    result = match_sky(chips)
    _check_offsets(result, ["e0", "e1", "e2"], rates)
    assert result.overlap_npix[0, 1] > 0.9 * 256 * 256  # whole chip, less clipped star pixels


def test_match_with_no_overlap_keeps_own_statistics(rng):
    scene = Scene(rng)
    chips = []
    for k, origin in enumerate([(0, 0), (300, 0), (0, 300)]):
        chips += scene.exposure(rng, f"e{k}", origin, 100.0 + 40 * k, 1.0)
    result = match_sky(chips)
    assert result.unmatched_exposures == ("e0", "e1", "e2")
    assert result.match_groups == ()
    local = localmin_sky(chips)
    # own statistic = the localmin value (computed by the region-union path: ~1e-6 agreement)
    np.testing.assert_allclose(result.sky, local.sky, rtol=1e-6)


def test_match_with_two_disconnected_groups(rng):
    scene = Scene(rng)
    rates = [100.0, 250.0, 300.0, 120.0]
    origins = [(0, 0), (30, 20), (300, 300), (330, 310)]  # overlaps of ~10000 pixels each
    chips = []
    for k, (rate, origin) in enumerate(zip(rates, origins)):
        chips += scene.exposure(rng, f"e{k}", origin, rate, 1.0, size=128)
    result = match_sky(chips)
    assert result.match_groups == (("e0", "e1"), ("e2", "e3"))
    sky = result.exposure_sky
    # each group has its own zero; offsets (150, 180 e-) within a group are right to 0.1%
    # (0.15 e-) while the noise of a 10000-pixel overlap difference is ~0.02 e-
    assert sky["e0"] == 0.0 and sky["e3"] == 0.0
    assert sky["e1"] == pytest.approx(150.0 / 0.01, rel=1e-3)
    assert sky["e2"] == pytest.approx(180.0 / 0.01, rel=1e-3)


def test_globalmin_match_gives_absolute_levels(rng):
    scene = Scene(rng)
    rates = [100.0, 220.0, 140.0]
    chips = []
    for k, (rate, origin) in enumerate(zip(rates, [(40, 40), (140, 90), (90, 170)])):
        chips += scene.exposure(rng, f"e{k}", origin, rate, 2.0, chips=2)
    result = globalmin_match_sky(chips)
    # matched offsets plus the lowest brightness of the darkest chip: close to the true sky
    # (e- per pixel = rate x 2 s); the offset from the scene's own faint light is < 1.5 e-
    expected = np.repeat(np.array(rates) * 2.0, 2)
    np.testing.assert_allclose(result.sky, expected, atol=1.5)
    relative = np.array(result.sky) - result.sky[0]
    np.testing.assert_allclose(relative, expected - expected[0], rtol=1e-3, atol=0.1)


def test_match_with_different_pixel_scales(rng):
    # Two exposures of one sky surface brightness, at 0.1"/px and 0.05"/px, in count rate.
    # Brightness offsets 500 and 800 e-/s/arcsec^2 give 5.0 and 2.0 e-/s per pixel.
    def surface_brightness(lon, lat):
        xi = (lon - RA) * math.cos(math.radians(DEC)) * 3600.0
        eta = (lat - DEC) * 3600.0
        stars = sum(
            800.0 * np.exp(-((xi - sx) ** 2 + (eta - sy) ** 2) / 0.05)
            for sx, sy in [(1.0, 2.0), (-3.0, 0.5), (2.5, -4.0), (-1.0, -2.0)]
        )
        return 2.0 * xi + 1.0 * eta + stars  # a gentle gradient (arcsec units) and stars

    chips = []
    for name, scale, offset, shape, crpix in [
        ("coarse", 0.1, 500.0, (160, 160), (60.0, 70.0)),
        ("fine", 0.05, 800.0, (300, 300), (180.0, 160.0)),
    ]:
        wcs = tan_wcs(crpix, scale, rotation_deg=10.0 if name == "fine" else 0.0)
        y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
        lon, lat = wcs.pixel_to_world_values(x, y)
        rate = (surface_brightness(lon, lat) + offset) * scale**2
        rate += rng.normal(0.0, 0.002 * offset * scale**2, shape)
        chips.append(SkyChip(rate.astype(np.float32), wcs, name, scale, 100.0, False))
    result = match_sky(chips)
    difference = result.exposure_sky["fine"] - result.exposure_sky["coarse"]
    assert difference == pytest.approx(300.0, rel=1e-3)
    assert result.sky[0] == 0.0
    assert result.sky[1] == pytest.approx(300.0 * 0.05**2, rel=1e-3)  # e-/s per fine pixel


def test_match_errors_for_the_fallback(rng):
    scene = Scene(rng)
    single = scene.exposure(rng, "e0", (0, 0), 100.0, 1.0)
    with pytest.raises(SkyMatchError):
        match_sky(single)
    masked = scene.exposure(rng, "e1", (50, 50), 120.0, 1.0)[0]
    masked = SkyChip(masked.data, masked.wcs, "e1", 0.1, 1.0, True, mask=np.ones((256, 256), bool))
    with pytest.raises(SkyMatchError):
        compute_sky(single + [masked], "globalmin+match")
    # what the step does: fall back to localmin / globalmin
    try:
        result = compute_sky(single + [masked], "match")
    except SkyMatchError:
        result = compute_sky(single + [masked], "localmin")
    assert result.empty_exposures == ("e1",) and result.sky[1] == 0.0


def test_match_reports_exposure_without_valid_pixels(rng):
    scene = Scene(rng)
    chips = []
    for k, origin in enumerate([(0, 0), (60, 60), (30, 90)]):
        chips += scene.exposure(rng, f"e{k}", origin, 100.0 + 50 * k, 1.0)
    nan_data = np.full((256, 256), np.nan, np.float32)
    chips[2] = SkyChip(nan_data, chips[2].wcs, "e2", 0.1, 1.0, True)
    result = match_sky(chips)
    assert result.empty_exposures == ("e2",) and result.empty_chips == (2,)
    assert result.sky[2] == 0.0
    assert result.exposure_sky["e1"] == pytest.approx(50.0 / 0.01, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# overlap geometry


def test_coverage_agrees_with_exact_pixel_mapping_for_rotated_chips(rng):
    size = 200
    chips = [
        SkyChip(
            np.zeros((size, size), np.float32), tan_wcs((100, 100), 0.1, 30.0), "a", 0.1, 1, False
        ),
        SkyChip(
            np.zeros((size, size), np.float32), tan_wcs((40, 160), 0.08, -15.0), "b", 0.08, 1, False
        ),
    ]
    coverage = sky_coverage(chips, grid_step=32)
    inside = coverage.region_covers[coverage.pixel_labels(0), 1]
    y, x = np.mgrid[0:size, 0:size]
    lon, lat = chips[0].wcs.pixel_to_world_values(x, y)
    bx, by = chips[1].wcs.world_to_pixel_values(lon, lat)
    exact = (bx >= -0.5) & (bx < size - 0.5) & (by >= -0.5) & (by < size - 0.5)
    assert 0.2 * exact.size < exact.sum() < 0.8 * exact.size  # a real partial overlap
    wrong = inside != exact
    # cells are one finest pixel (0.08") wide: only pixels within ~1.5 px of b's edge may differ
    edge_distance = np.minimum.reduce([bx + 0.5, size - 0.5 - bx, by + 0.5, size - 0.5 - by])
    assert np.all(np.abs(edge_distance[wrong]) < 1.5 * 0.1 / 0.08)
    assert wrong.sum() < 0.01 * exact.sum()


def test_aligned_overlaps_are_pixel_exact(rng):
    n = 128
    shifts = [(0, 0), (30, 10), (-20, 45)]
    chips = [
        SkyChip(np.zeros((n, n), np.float32), tan_wcs((64 + dx, 64 + dy)), f"e{k}", 0.1, 1, False)
        for k, (dx, dy) in enumerate(shifts)
    ]
    coverage = sky_coverage(chips)
    labels = coverage.pixel_labels(0)
    y, x = np.mgrid[0:n, 0:n]
    for k, (dx, dy) in enumerate(shifts[1:], start=1):
        exact = (x + dx >= 0) & (x + dx < n) & (y + dy >= 0) & (y + dy < n)
        np.testing.assert_array_equal(coverage.region_covers[labels, k], exact)


def test_gwcs_and_astropy_wcs_give_the_same_overlaps():
    from astropy.coordinates import ICRS
    from gwcs import coordinate_frames, utils
    from gwcs import wcs as gwcs_wcs

    n = 96
    fits_wcs = tan_wcs((20.0, 70.0), 0.1, 12.0)
    transform = utils.make_fitswcs_transform(fits_wcs.to_header())
    generalized = gwcs_wcs.WCS(
        forward_transform=transform,
        input_frame=coordinate_frames.Frame2D(name="detector"),
        output_frame=coordinate_frames.CelestialFrame(reference_frame=ICRS(), name="world"),
    )
    reference = SkyChip(np.zeros((n, n), np.float32), tan_wcs((50, 50)), "ref", 0.1, 1, False)
    pairs = []
    for wcs in (fits_wcs, generalized):
        other = SkyChip(np.zeros((n, n), np.float32), wcs, "other", 0.1, 1, False)
        coverage = sky_coverage([reference, other])
        pairs.append(coverage.region_covers[coverage.pixel_labels(0), 1])
    np.testing.assert_array_equal(pairs[0], pairs[1])
    assert 0 < pairs[0].sum() < n * n


# ---------------------------------------------------------------------------------------------
# independent oracle: stsci.skypac.skymatch (AstroDrizzle's sky engine)


def _run_skypac(tmp_path, chips, method):
    """Write the chips as FITS files, run skypac's skymatch, read MDRIZSKY back (data units)."""
    from astropy.io import fits
    from spherical_geometry.polygon import SphericalPolygon
    from stsci.skypac.skymatch import skymatch

    if not hasattr(SphericalPolygon, "iter_polygons_flat"):
        # skypac 1.0.12 calls an API that spherical-geometry 1.4 no longer has (in AstroDrizzle
        # this makes every 'match' fall back to localmin); provide it for the comparison.
        def iter_polygons_flat(polygon):
            for part in polygon.polygons:
                if isinstance(part, SphericalPolygon):
                    yield from iter_polygons_flat(part)
                else:
                    yield part

        SphericalPolygon.iter_polygons_flat = iter_polygons_flat

    names = []
    for index, chip in enumerate(chips):
        header = chip.wcs.to_header()
        header["EXTNAME"], header["EXTVER"] = "SCI", 1
        header["BUNIT"] = "ELECTRONS" if chip.in_counts else "ELECTRONS/S"
        header["IDCSCALE"] = chip.pixel_scale
        primary = fits.Header(
            {"TELESCOP": "HST", "INSTRUME": "WFC3", "DETECTOR": "UVIS", "EXPTIME": chip.exptime}
        )
        path = tmp_path / f"chip{index}.fits"
        fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(chip.data, header)]).writeto(
            path
        )
        names.append(f"{path}[sci,1]")
    (tmp_path / "inputs.lst").write_text("\n".join(names) + "\n")
    skymatch(
        f"@{tmp_path / 'inputs.lst'}",
        skymethod=method,
        skystat="median",
        nclip=5,
        lsigma=4.0,
        usigma=4.0,
        binwidth=0.1,
        skyuser_kwd="MDRIZSKY",
        readonly=False,
        subtractsky=False,
        verbose=False,
        flog=None,
    )
    return np.array(
        [fits.getval(tmp_path / f"chip{i}.fits", "MDRIZSKY", ext=1) for i in range(len(chips))]
    )


@pytest.mark.peer
@pytest.mark.parametrize("method", ["localmin", "globalmin", "match", "globalmin+match"])
def test_agrees_with_skypac(rng, tmp_path, method):
    scene = Scene(rng)
    chips = []
    for k, (rate, exptime, origin) in enumerate(
        [(100.0, 2.0, (40, 40)), (220.0, 1.0, (140, 90)), (140.0, 1.5, (90, 170))]
    ):
        chips += scene.exposure(rng, f"e{k}", origin, rate, exptime, noise=2.0)
    ours = np.array(compute_sky(chips, method).sky)
    peer = _run_skypac(tmp_path, chips, method)
    if method in ("localmin", "globalmin"):
        # same ImageStats statistic on the same pixels: float rounding only
        np.testing.assert_allclose(ours, peer, rtol=1e-5)
    else:
        # skypac rasterises rounded polygon intersections (boundaries differ by <= 1 pixel) and
        # averages per-chip statistics; the matched levels agree to 0.1% of their spread
        spread = np.ptp(peer)
        np.testing.assert_allclose(ours, peer, atol=1e-3 * spread)


def test_unusable_wcs_raises_sky_match_error(rng):
    class BrokenWCS:
        def pixel_to_world_values(self, x, y):
            return np.full(np.shape(x), np.nan), np.full(np.shape(y), np.nan)

    scene = Scene(rng)
    chips = scene.exposure(rng, "e0", (0, 0), 100.0, 1.0, size=64)
    chips.append(SkyChip(np.ones((64, 64), np.float32), BrokenWCS(), "e1", 0.1, 1.0, True))
    with pytest.raises(SkyMatchError, match="non-finite"):
        match_sky(chips)
    assert localmin_sky(chips).sky[1] == 1.0  # the fallback needs no WCS


# ---------------------------------------------------------------------------------------------
# block-wise labelling and grouping (the fast paths of match)


def _rotated_chips(size=300):
    """Three chips with different rotations, scales and offsets: many regions, slanted edges."""
    return [
        SkyChip(np.zeros((size, size), np.float32), tan_wcs((150, 150), 0.1, 30.0), "a", 0.1, 1, 0),
        SkyChip(
            np.zeros((size, size), np.float32), tan_wcs((60, 230), 0.08, -15.0), "b", 0.1, 1, 0
        ),
        SkyChip(np.zeros((size, size), np.float32), tan_wcs((250, 90), 0.1, 4.0), "c", 0.1, 1, 0),
    ]


def test_block_labels_equal_per_pixel_labels(monkeypatch):
    # Blocks whose cells all carry one label are filled without interpolating each pixel; that
    # must give exactly the labels of the per-pixel computation.
    coverage = sky_coverage(_rotated_chips(), grid_step=16)
    original = SkyCoverage._uniform_blocks
    uniform_fraction = []

    def spy(self, grid_u, grid_v):
        blocks = original(self, grid_u, grid_v)
        uniform_fraction.append(float(np.mean(blocks >= 0)))
        return blocks

    monkeypatch.setattr(SkyCoverage, "_uniform_blocks", spy)
    fast = [coverage.pixel_labels(index) for index in range(3)]
    monkeypatch.setattr(
        SkyCoverage,
        "_uniform_blocks",
        lambda self, u, v: np.full((u.shape[0] - 1, u.shape[1] - 1), -1),
    )
    for index in range(3):
        np.testing.assert_array_equal(fast[index], coverage.pixel_labels(index))
    assert min(uniform_fraction) > 0.5  # the shortcut really covers most blocks
    assert coverage.nregions >= 5


def test_group_pixels_groups_like_pixel_labels(rng):
    coverage = sky_coverage(_rotated_chips(), grid_step=16)
    data = rng.normal(100.0, 10.0, (300, 300)).astype(np.float32)
    flags = rng.random((300, 300)) < 0.1
    labels = coverage.pixel_labels(1)
    (values, grouped_flags), region_labels, sizes = coverage.group_pixels(1, [data, flags])
    np.testing.assert_array_equal(region_labels, np.unique(labels))
    first = 0
    for label, size in zip(region_labels, sizes):
        inside = labels == label
        assert size == inside.sum()
        # same pixels in each region, in another order: compare (value, flag) pairs sorted
        expected = np.sort(data[inside] + 1000.0 * flags[inside])
        found = np.sort(values[first : first + size] + 1000.0 * grouped_flags[first : first + size])
        np.testing.assert_array_equal(found, expected)
        first += size
    assert first == data.size


@pytest.mark.parametrize("method", ["localmin", "globalmin", "match", "globalmin+match"])
def test_a_thread_pool_measures_the_same_skies_as_one_thread(rng, method):
    from concurrent.futures import ThreadPoolExecutor

    scene = Scene(rng)
    chips = []
    for k, (rate, exptime, origin) in enumerate(
        [(100.0, 2.0, (40, 40)), (220.0, 1.0, (140, 90)), (140.0, 1.5, (90, 170)), (60, 1, (0, 90))]
    ):
        chips += scene.exposure(rng, f"e{k}", origin, rate, exptime, noise=2.0)
    used = []

    def recording_map(function, items):
        items = list(items)
        used.append(len(items))
        return pool.map(function, items)

    alone = compute_sky(chips, method)
    with ThreadPoolExecutor(3) as pool:
        threaded = compute_sky(chips, method, map_=recording_map)
    # chips (localmin, globalmin) or exposures (match methods) went through the pool
    assert used == [len(chips) if method in ("localmin", "globalmin") else 4]
    assert threaded.sky == alone.sky  # bit for bit: same work, other threads
    np.testing.assert_array_equal(threaded.overlap_npix, alone.overlap_npix)
