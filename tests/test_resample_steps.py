"""DrizSeparate, CreateMedian, BlotCR and DrizFinal steps on simulated exposures with truth."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage

from conftest import library_with_true_sky
from drizzlepipe.algorithms.pixmap import compute_pixmap
from drizzlepipe.algorithms.resample import decode_context
from drizzlepipe.exceptions import DrizzlepipeInputError
from drizzlepipe.steps.blot_cr import BlotCRStep
from drizzlepipe.steps.create_median import CreateMedianStep
from drizzlepipe.steps.driz_final import DrizFinalStep
from drizzlepipe.steps.driz_separate import DrizSeparateStep


def _isolated_stars(simulation, min_flux=100.0, separation=12.0):
    """Unsaturated stars seen by every exposure, >= min_flux e-/s, without close neighbours."""
    catalog = Table.read(simulation.catalog_file)
    seen = catalog["n_exposures"] == len(simulation.flt_files)
    stars = catalog[(catalog["type"] == "star") & ~catalog["saturated"] & seen]
    x, y = np.asarray(catalog["x_truth"]), np.asarray(catalog["y_truth"])
    keep = []
    for row in stars:
        distance = np.hypot(x - row["x_truth"], y - row["y_truth"])
        if np.sort(distance)[1] > separation and row["flux"] > min_flux:
            keep.append(row)
    return keep


def _aperture_fluxes(image, stars, radius=6.0):
    """Sum of ``image`` within ``radius`` of each star (truth-grid positions)."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    ratios = []
    for star in stars:
        inside = np.hypot(xx - star["x_truth"], yy - star["y_truth"]) <= radius
        values = image[inside]
        if values.size and np.all(np.isfinite(values)):
            ratios.append(values.sum() / star["flux"])
    return np.array(ratios)


@pytest.fixture(scope="module")
def chain(small_simulation):
    """The four drizzle-side steps run in sequence on the truth grid (scene.fits)."""
    library = library_with_true_sky(small_simulation)
    refimage = str(small_simulation.scene_file)
    singles = DrizSeparateStep(refimage=refimage).run(library)
    median = CreateMedianStep().run(singles)
    flagged = BlotCRStep().run(library, median)
    final = DrizFinalStep(refimage=refimage).run(flagged)
    return {"library": flagged, "singles": singles, "median": median, "final": final}


def test_one_single_per_exposure_conserving_star_flux(small_simulation, chain):
    singles = chain["singles"]
    assert [s.meta.group_id for s in singles] == small_simulation.rootnames
    stars = _isolated_stars(small_simulation)
    assert len(stars) >= 5
    for single in singles:
        assert single.meta.product_type == "single"
        assert single.meta.exposure.exptime == small_simulation.exptime
        ratios = _aperture_fluxes(single.data, stars)
        # Isolated stars >= 100 e-/s x 500 s: Poisson + sky noise in a 6 px aperture <= 0.5%
        # per star, aperture loss of a 1.8 px FWHM star < 0.1%. Singles still hold the cosmic
        # rays (about 1 px in 100 of the 113 px aperture, biasing sums up), hence 1%.
        assert np.median(ratios) == pytest.approx(1.0, abs=0.01)


def test_final_matches_truth_within_propagated_errors(small_simulation, chain):
    final = chain["final"]
    truth = fits.getdata(small_simulation.scene_file)
    assert final.data.shape == truth.shape
    well_covered = final.wht >= 0.7 * np.median(final.wht[final.wht > 0])
    assert not np.isnan(final.data[final.wht > 0]).any()  # no NaN where any input contributes
    normalised = ((final.data - truth) / final.err)[well_covered]
    robust_sigma = 1.4826 * np.median(np.abs(normalised - np.median(normalised)))
    # The ERR image is the standard error of the weighted mean; residuals against the noiseless
    # truth must scatter by it (10% allows for the kernel's pixel-to-pixel correlations).
    assert robust_sigma == pytest.approx(1.0, abs=0.10)
    ratios = _aperture_fluxes(final.data, _isolated_stars(small_simulation))
    assert np.median(ratios) == pytest.approx(1.0, abs=0.005)
    assert final.meta.resample.texptime == pytest.approx(4 * small_simulation.exptime)
    assert final.meta.resample.ndrizim == 8


def _coverage_on_chip(model, singles, grid_wcs):
    """Number of exposures whose single has a full weight where each chip pixel lands."""
    full = sum((s.wht >= 0.7 * np.median(s.wht[s.wht > 0])).astype(int) for s in singles)
    pixmap = compute_pixmap(model.meta.wcs, model.data.shape, grid_wcs, stepsize=10)
    x = np.clip(np.round(pixmap[..., 0]).astype(int), 0, full.shape[1] - 1)
    y = np.clip(np.round(pixmap[..., 1]).astype(int), 0, full.shape[0] - 1)
    return full[y, x]


def test_cosmic_rays_are_found_and_flagged_in_dq(small_simulation, chain):
    library, singles = chain["library"], chain["singles"]
    found = strong_total = false = clean_total = 0
    with library:
        for index, model in enumerate(library):
            truth_file = small_simulation.truth_dir / f"{model.meta.group_id}_truth.fits"
            deposit = fits.getdata(truth_file, ("CRDEP", int(model.meta.chip)))
            # A cosmic ray can only be recognised where other exposures see the same sky.
            seen = _coverage_on_chip(model, singles, chain["median"].meta.wcs) >= 3
            usable = seen & ((model.dq & ~np.uint32(4096)) == 0)  # DQ defects are not scored
            cr = (model.dq & 4096) != 0
            strong = usable & (deposit > 5 * model.err)
            clean = usable & ~ndimage.binary_dilation(deposit > 0)
            clean &= ~ndimage.binary_dilation((model.dq & 256) != 0, iterations=10)
            found += np.count_nonzero(cr & strong)
            strong_total += np.count_nonzero(strong)
            false += np.count_nonzero(cr & clean)
            clean_total += np.count_nonzero(clean)
            # counted where the input had no DQ flag (a bad column differs from the blot too)
            unflagged = (model.dq & ~np.uint32(4096)) == 0
            assert model.meta.cosmic_rays.npix == np.count_nonzero(cr & unflagged)
            library.shelve(model, index, modify=False)
    # Regression bounds of the default driz_cr parameters (snr 3.5/3.0, scale 1.2/0.7) on this
    # set, measured 0.985 and 1.6e-4: the misses are cosmic rays on stars (protected by the
    # derivative term), the false flags the 3.5-sigma Gaussian tail of the sky.
    assert found / strong_total >= 0.975
    assert false / clean_total < 3e-4


def _cr_masks(library):
    masks = []
    with library:
        for index, model in enumerate(library):
            masks.append(((model.dq & 4096) != 0, (model.dq & ~np.uint32(4096)) != 0))
            library.shelve(model, index, modify=False)
    return masks


def test_flagged_pixels_seed_no_cosmic_rays_unless_asked(small_simulation, chain):
    # With a low second pass, hot and warm pixels (DQ-flagged, far above the blot) would open
    # the search to their neighbours (AstroDrizzle). By default they do not: the masks differ
    # only next to flagged pixels, and only by flags fewer.
    library = library_with_true_sky(small_simulation)
    BlotCRStep(snr="4.0 2.0", seed_flagged=True).run(library, chain["median"])
    seeded = _cr_masks(library)
    BlotCRStep(snr="4.0 2.0").run(library, chain["median"])
    default = _cr_masks(library)
    removed = 0
    for (with_seeds, flagged_before), (without, _) in zip(seeded, default):
        assert not np.any(without & ~with_seeds)
        changed = with_seeds & ~without
        near = ndimage.binary_dilation(flagged_before, structure=np.ones((3, 3), bool))
        assert not np.any(changed & ~near)
        removed += np.count_nonzero(changed & ~flagged_before)
    # measured 60 pixels on this set (8 chips of 256 x 256, ~0.3% hot and warm pixels)
    assert removed > 20, removed


def test_context_names_the_contributing_chips(chain):
    final = chain["final"]
    inputs = list(final.meta.resample.inputs)
    assert len(inputs) == 8
    # up to 32 chips the context is one 2-D image, as AstroDrizzle writes it
    assert final.con.ndim == 2
    contributors = final.con
    covered = final.wht > 0
    # every covered pixel has at least one bit, uncovered ones none
    assert np.all(contributors[covered] != 0)
    assert np.all(contributors[~covered] == 0)
    y, x = np.argwhere(covered)[len(np.argwhere(covered)) // 2]
    chips = decode_context(final.con, [x], [y])[0]
    assert 1 <= len(chips) <= 8


def test_units_counts_multiplies_by_total_exposure(small_simulation, chain):
    library = chain["library"]
    refimage = str(small_simulation.scene_file)
    counts = DrizFinalStep(refimage=refimage, units="counts", context=False).run(library)
    rate = chain["final"]
    good = np.isfinite(rate.data)
    np.testing.assert_allclose(
        counts.data[good], rate.data[good] * rate.meta.resample.texptime, rtol=1e-5, atol=1e-3
    )
    assert counts.con is None


def test_saved_product_names(tmp_path, small_simulation, chain):
    library = chain["library"]
    DrizSeparateStep(output_dir=str(tmp_path), save_results=True).run(library)
    DrizFinalStep(output_dir=str(tmp_path), save_results=True).run(library)
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = sorted([f"{root}_single.fits" for root in small_simulation.rootnames])
    assert names == sorted(expected + ["final_drz.fits"])
    with fits.open(tmp_path / "final_drz.fits") as hdul:
        assert {"SCI", "ERR", "WHT", "CTX"} <= {hdu.name for hdu in hdul}
        assert hdul[0].header["EXPTIME"] == pytest.approx(4 * small_simulation.exptime)
        assert hdul[0].header["NDRIZIM"] == 8


def test_chips_off_the_grid_are_skipped_and_an_empty_product_refused(
    small_simulation, chain, caplog
):
    library = chain["library"]
    far_away = {"crval": [10.0, 10.0], "output_shape": [50, 50]}
    with caplog.at_level(logging.WARNING), pytest.raises(DrizzlepipeInputError):
        DrizFinalStep(**far_away).run(library)
    assert "skipped" in caplog.text


def test_median_needs_two_singles_on_one_grid(chain):
    singles = chain["singles"]
    with pytest.raises(DrizzlepipeInputError, match="at least two"):
        CreateMedianStep().run(singles[:1])
    other = DrizSeparateStep(pixel_scale_ratio=0.8).run(chain["library"])
    with pytest.raises(DrizzlepipeInputError, match="differs|different grid"):
        CreateMedianStep().run([singles[0], other[1]])


def test_blot_cr_refuses_bad_parameters(chain):
    with pytest.raises(ValueError, match="snr"):
        BlotCRStep(snr="3.5").run(chain["library"], chain["median"])
    with pytest.raises(DrizzlepipeInputError, match="median"):
        BlotCRStep().run(chain["library"])


def test_blot_cr_side_products(tmp_path, small_simulation, chain):
    """save_blot, save_crmask and corr write one file per exposure: the mask is the crbit set
    in the library's DQ, the blot is the chip's data less its noise and cosmic rays, and the
    cleaned copy is the input with its cosmic-ray pixels replaced by the blot."""
    library = library_with_true_sky(small_simulation)
    with library:  # chips of one exposure with different skies: headers cannot be swapped
        for index, model in enumerate(library):
            model.meta.background.level += 0.25 * (int(model.meta.chip) - 1)
            library.shelve(model, index)
    step = BlotCRStep(save_blot=True, save_crmask=True, corr=True, output_dir=str(tmp_path))
    flagged = step.run(library, chain["median"])
    roots = small_simulation.rootnames
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{root}_{suffix}.fits" for root in roots for suffix in ("blot", "crmask", "crclean")
    )
    inputs = dict(zip(roots, small_simulation.flt_files))
    with flagged:
        for index, model in enumerate(flagged):
            root, chip = model.meta.group_id, int(model.meta.chip)
            with fits.open(tmp_path / f"{root}_crmask.fits") as masks:
                crmask = masks["CRMASK", chip].data
                sky = masks["CRMASK", chip].header["MDRIZSKY"]
            with fits.open(tmp_path / f"{root}_blot.fits") as blots:
                blotted = blots["BLOT", chip].data
                assert blots["BLOT", chip].header["MDRIZSKY"] == sky
            cleaned = fits.getdata(tmp_path / f"{root}_crclean.fits", ("SCI", chip))
            original = fits.getdata(inputs[root], ("SCI", chip))
            err = fits.getdata(inputs[root], ("ERR", chip))
            flagged_dq = (model.dq & 4096) != 0
            chip_sky = model.meta.background.level
            flagged.shelve(model, index, modify=False)

            assert sky == chip_sky == small_simulation.sky[root] + 0.25 * (chip - 1)
            np.testing.assert_array_equal(crmask.astype(bool), flagged_dq)
            assert 0.001 < crmask.mean() < 0.05  # the simulator's ~0.7% of CR pixels
            cr = crmask.astype(bool) & np.isfinite(blotted)
            np.testing.assert_array_equal(cleaned[cr], blotted[cr])
            np.testing.assert_array_equal(cleaned[~cr], original[~cr])
            # the blot (sky included) is the data without noise: normalised residuals of the
            # unflagged, covered pixels centre near 0 with about unit scatter. Measured: median
            # 0.13-0.16 (minmed takes the minimum of the four where it departs from the median,
            # which sits ~1.3 e- below the sky) and robust sigma 0.86-0.93 (each exposure is one
            # of the four in the median, so the blot follows its noise a little)
            good = ~crmask.astype(bool) & np.isfinite(blotted) & (err > 0)
            residual = (original[good] - blotted[good]) / err[good]
            assert good.mean() > 0.8
            assert abs(np.median(residual)) < 0.25
            robust_sigma = 1.4826 * np.median(np.abs(residual - np.median(residual)))
            assert 0.8 < robust_sigma < 1.1


def test_median_from_single_files_on_disk_equals_in_memory(tmp_path, chain):
    singles = chain["singles"]
    paths = [single.save(tmp_path / f"s{i}_single.fits") for i, single in enumerate(singles)]
    from_disk = CreateMedianStep(bufsize=0.05).run(paths)
    in_memory = chain["median"]
    np.testing.assert_array_equal(from_disk.data, in_memory.data)  # sections change nothing
    np.testing.assert_array_equal(from_disk.wht, in_memory.wht)
    assert from_disk.meta.resample.combine_type == "minmed"
    # in memory the rows are combined in one band per worker: the same median and weight
    for scheduler in ("serial", "threads", "processes"):
        median = CreateMedianStep(scheduler=scheduler, n_workers=2).run(singles)
        np.testing.assert_array_equal(median.data, in_memory.data)
        np.testing.assert_array_equal(median.wht, in_memory.wht)


def test_all_masked_and_nan_chips_are_skipped_with_a_warning(small_simulation, chain, caplog):
    library = library_with_true_sky(small_simulation)
    with library:
        model = library.borrow(0)
        model.dq[:] = 4  # every pixel bad
        library.shelve(model, 0)
        model = library.borrow(1)
        model.data = np.full(model.shape, np.nan, np.float32)  # nothing usable
        library.shelve(model, 1)
    with caplog.at_level(logging.WARNING):
        final = DrizFinalStep(context=False).run(library)
    assert final.meta.resample.ndrizim == 6
    assert caplog.text.count("skipped") == 2


def test_median_step_warns_about_minmed_with_many_inputs_and_refuses_bad_settings(chain, caplog):
    singles = chain["singles"]
    many = singles + singles[:2]  # six inputs
    with caplog.at_level(logging.WARNING):
        CreateMedianStep(combine_type="minmed").run(many)
    assert "biased low" in caplog.text and "nhigh=1" in caplog.text
    with pytest.raises(ValueError, match="bufsize"):
        CreateMedianStep(bufsize=-1.0).run(singles)
    with pytest.raises(ValueError, match="nlow"):
        CreateMedianStep(combine_type="median", nlow=2, nhigh=2).run(singles)
    with pytest.raises(Exception, match="combine_type"):
        CreateMedianStep(combine_type="mode")


@pytest.mark.parametrize(
    "options", [{}, {"kernel": "lanczos3", "pixel_scale_ratio": 0.5}], ids=["square", "lanczos3"]
)
def test_final_runs_change_only_rounding_and_never_the_context(small_simulation, options):
    # runs by position: every run but the first holds only the rows its chips reach, which
    # must include the reach of the kernel's drops (lanczos3 on pixels half the input's:
    # 6 output pixels beyond a centre)
    library = library_with_true_sky(small_simulation)
    products = {runs: DrizFinalStep(runs=runs, **options).run(library) for runs in (1, 2, 8)}
    one = products[1]
    for runs in (2, 8):
        other = products[runs]
        np.testing.assert_array_equal(other.con, one.con)
        np.testing.assert_array_equal(np.isnan(other.data), np.isnan(one.data))
        # weights are sums in another order (lanczos lobes are negative: compared to the
        # largest weight); means and errors are merged in float64, stored in float32
        np.testing.assert_allclose(other.wht, one.wht, rtol=1e-6, atol=1e-7 * one.wht.max())
        covered = one.wht > 1e-3 * one.wht.max()
        np.testing.assert_allclose(other.data[covered], one.data[covered], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.err[covered], one.err[covered], rtol=1e-5, atol=1e-7)
