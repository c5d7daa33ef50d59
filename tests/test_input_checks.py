"""Consistency checks and input errors (issue 16, items 5 and 7): mixed filters or instruments,
chips without a usable pixel, HST association tables, unreadable files, the output directory
and the grid size checked before any work, no empty directory left by a failed run.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from astropy.io import fits

from drizzlepipe.algorithms.grid import OutputGridTooLargeError
from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.exceptions import DrizzlepipeInputError
from drizzlepipe.pipelines import DrizzlePipeline
from instrument_files import as_stis_crsplit, copy_as, make_hst_asn, with_filter


def _copies(simulation, directory, count=None):
    directory.mkdir(parents=True, exist_ok=True)
    files = simulation.flt_files[:count] if count else simulation.flt_files
    return [shutil.copy(p, directory / p.name) for p in files]


def test_mixed_filters_are_refused_unless_allowed(small_simulation, tmp_path, caplog):
    files = _copies(small_simulation, tmp_path, 2)
    other = with_filter(small_simulation.flt_files[2], tmp_path / "iother0aq_flt.fits", "F814W")
    with pytest.raises(DrizzlepipeInputError) as error:
        ModelLibrary([str(p) for p in [*files, other]])
    message = str(error.value)
    assert "F606W" in message and "F814W" in message and "allow_mixed=True" in message
    with caplog.at_level(logging.WARNING):
        library = ModelLibrary([str(p) for p in [*files, other]], allow_mixed=True)
    assert "different instruments or filters" in caplog.text
    assert len(library.group_indices) == 3


def test_mixed_instruments_are_refused_by_the_pipeline(small_simulation, tmp_path):
    uvis = _copies(small_simulation, tmp_path / "uvis", 2)
    one_chip = tmp_path / "one"
    one_chip.mkdir()
    with fits.open(small_simulation.flt_files[3]) as hdulist:
        fits.HDUList([hdulist[0].copy(), *(hdulist[n, 1].copy() for n in ("SCI", "ERR", "DQ"))]
                     ).writeto(one_chip / "single_flt.fits")  # fmt: skip
    (stis,) = as_stis_crsplit([one_chip / "single_flt.fits"], tmp_path / "stis")
    with pytest.raises(DrizzlepipeInputError, match="STIS"):
        DrizzlePipeline.call([str(p) for p in [*uvis, stis]], configure_log=False)


def test_an_all_nan_exposure_is_reported_and_left_out(small_simulation, tmp_path, caplog):
    files = _copies(small_simulation, tmp_path)
    with fits.open(files[1], mode="update") as hdulist:
        for number in (1, 2):
            hdulist["SCI", number].data[:] = np.nan
    with caplog.at_level(logging.WARNING):
        final = DrizzlePipeline.call([str(p) for p in files], configure_log=False)
    name = files[1].name
    assert f"{name}[SCI,1]: no usable pixel" in caplog.text
    assert f"Exposure {name.removesuffix('_flt.fits')} left out" in caplog.text
    assert final.meta.resample.ndrizim == 6
    assert final.meta.exposure.exptime == pytest.approx(3 * 500.0)
    assert final.meta.cal_step.blot_cr == "COMPLETE"  # the rest ran


def test_a_fully_flagged_chip_is_left_out_and_its_exposure_kept(small_simulation, tmp_path):
    files = _copies(small_simulation, tmp_path)
    with fits.open(files[0], mode="update") as hdulist:
        hdulist["DQ", 2].data[:] = 4  # every pixel a bad detector pixel
    final = DrizzlePipeline.call([str(p) for p in files], configure_log=False)
    assert final.meta.resample.ndrizim == 7
    assert f"{files[0].name}[SCI,2]" not in list(final.meta.resample.inputs)
    assert final.meta.exposure.exptime == pytest.approx(4 * 500.0)


def test_only_one_usable_exposure_skips_the_cosmic_ray_steps(small_simulation, tmp_path):
    files = _copies(small_simulation, tmp_path, 2)
    with fits.open(files[0], mode="update") as hdulist:
        for number in (1, 2):
            hdulist["SCI", number].data[:] = np.nan
    final = DrizzlePipeline.call([str(p) for p in files], configure_log=False)
    assert final.meta.cal_step.blot_cr == "SKIPPED"
    assert final.meta.resample.ndrizim == 2


def test_hst_association_table_reads_its_members(small_simulation, tmp_path):
    files = _copies(small_simulation, tmp_path)
    roots = [p.name.removesuffix("_flt.fits") for p in files]
    asn = make_hst_asn(tmp_path / "j8bt06040_asn.fits", roots, present=[True, True, True, False])
    library = ModelLibrary(str(asn))
    assert sorted(library.group_indices) == sorted(roots[:3])  # MEMPRSNT=F left out
    assert library.product_name == "j8bt06040"  # the PROD-DTH member names the product
    final = DrizzlePipeline.call(str(asn), output_dir=str(tmp_path / "out"), configure_log=False)
    assert (tmp_path / "out" / "j8bt06040_drz.fits").exists()
    assert final.meta.resample.ndrizim == 6
    # an association table caught by a glob is not read as an exposure
    library = ModelLibrary(str(tmp_path / "*.fits"))
    assert len(library.group_indices) == 4


def test_hst_association_with_flt_and_flc_of_a_member_is_refused(small_simulation, tmp_path):
    files = _copies(small_simulation, tmp_path, 2)
    roots = [p.name.removesuffix("_flt.fits") for p in files]
    copy_as(files[0], tmp_path / f"{roots[0]}_flc.fits")
    asn = make_hst_asn(tmp_path / "x_asn.fits", roots)
    with pytest.raises(DrizzlepipeInputError) as error:
        ModelLibrary(str(asn))
    assert f"{roots[0]}_flt.fits and {roots[0]}_flc.fits" in str(error.value)


def test_hst_association_with_a_missing_member_names_it(small_simulation, tmp_path):
    files = _copies(small_simulation, tmp_path, 2)
    roots = [p.name.removesuffix("_flt.fits") for p in files]
    asn = make_hst_asn(tmp_path / "x_asn.fits", [*roots, "jmissing0q"])
    with pytest.raises(DrizzlepipeInputError, match="jmissing0q"):
        ModelLibrary(str(asn))


def test_a_truncated_exposure_is_named_by_the_library(small_simulation, tmp_path):
    files = _copies(small_simulation, tmp_path, 2)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(DrizzlepipeInputError) as error:
        DrizzlePipeline.call([str(p) for p in files], configure_log=False)
    assert files[1].name in str(error.value)
    assert "truncated" in str(error.value) or "unreadable" in str(error.value)


def test_an_unwritable_output_directory_is_reported_before_any_work(small_simulation, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(DrizzlepipeInputError) as error:
        # /sys refuses new files even to root (a chmod-ed directory would not stop root)
        DrizzlePipeline.call([str(p) for p in small_simulation.flt_files],
                             output_dir="/sys/drizzlepipe-out", configure_log=False)  # fmt: skip
    assert "/sys/drizzlepipe-out" in str(error.value) and "cannot be written" in str(error.value)
    assert "Step static_mask" not in caplog.text


def test_a_too_large_grid_is_reported_before_any_work(small_simulation, tmp_path, caplog):
    out = tmp_path / "new" / "out"
    with caplog.at_level(logging.INFO), pytest.raises(OutputGridTooLargeError) as error:
        DrizzlePipeline.call(
            [str(p) for p in small_simulation.flt_files], output_dir=str(out),
            steps={"driz_final": {"pixel_scale": 0.0004}}, configure_log=False,
        )  # fmt: skip
    assert "steps.driz_final.max_pixels" in str(error.value)
    assert "Step static_mask" not in caplog.text  # reported before the first step ran
    assert not (tmp_path / "new").exists()  # the directories the run created are gone
    # the parameter a user can set accepts a larger grid (here it then fits)
    final = DrizzlePipeline.call(
        [str(p) for p in small_simulation.flt_files[:2]],
        steps={"driz_final": {"pixel_scale": 0.02, "max_pixels": 10_000_000},
               "blot_cr": {"skip": True}}, configure_log=False,
    )  # fmt: skip
    assert final.data.size < 10_000_000


def test_a_failed_run_keeps_a_directory_that_existed(small_simulation, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputGridTooLargeError):
        DrizzlePipeline.call(
            [str(p) for p in small_simulation.flt_files], output_dir=str(out),
            steps={"driz_final": {"max_pixels": 10}}, configure_log=False,
        )  # fmt: skip
    assert out.is_dir()


def test_a_truncated_association_table_is_named(small_simulation, tmp_path):
    roots = [p.name.removesuffix("_flt.fits") for p in _copies(small_simulation, tmp_path, 2)]
    asn = make_hst_asn(tmp_path / "x_asn.fits", roots)
    data = asn.read_bytes()
    asn.write_bytes(data[: len(data) - 2880])  # the table's data block cut off
    with pytest.raises(DrizzlepipeInputError) as error:
        ModelLibrary(str(asn))
    assert "x_asn.fits" in str(error.value)


def test_max_pixels_refuses_and_accepts_as_set(small_simulation):
    files = [str(p) for p in small_simulation.flt_files[:2]]

    def steps(max_pixels):
        return {"blot_cr": {"skip": True},
                "driz_final": {"pixel_scale": 0.02, "max_pixels": max_pixels}}  # fmt: skip

    with pytest.raises(OutputGridTooLargeError, match="max_pixels"):
        DrizzlePipeline.call(files, configure_log=False, steps=steps(100_000))
    final = DrizzlePipeline.call(files, configure_log=False, steps=steps(2_000_000))
    assert 100_000 < final.data.size <= 2_000_000


def test_leaving_a_chip_out_keeps_allow_mixed_for_models(small_simulation, tmp_path):
    import drizzlepipe.datamodels as dm

    files = _copies(small_simulation, tmp_path, 3)
    other = with_filter(small_simulation.flt_files[3], tmp_path / "iother0aq_flt.fits", "F814W")
    models = [dm.open(str(p)) for p in [*files, other]]
    models[0][0].data[:] = np.nan  # a chip without a usable pixel: the library is subset
    final = DrizzlePipeline.call(models, allow_mixed=True, configure_log=False)
    assert final.meta.resample.ndrizim == 7


def test_ivm_weights_of_surface_brightness_need_var_rnoise(tmp_path):
    from stdatamodels.jwst import datamodels as jdm

    from drizzlepipe.steps import DrizFinalStep
    from fitsfactory import make_jwst_cal

    path = tmp_path / "jw01234001001_01101_00001_nrcb1_cal.fits"
    make_jwst_cal(path)
    with jdm.open(str(path)) as model:
        del model.var_rnoise
        model.save(str(path))
    with pytest.raises(DrizzlepipeInputError, match="VAR_RNOISE"):
        DrizFinalStep.call(str(path), weight_type="ivm", configure_log=False)


def test_surface_brightness_and_per_pixel_inputs_are_refused(tmp_path):
    from stdatamodels.jwst import datamodels as jdm

    from fitsfactory import make_jwst_cal

    cal = tmp_path / "jw01234001001_01101_00001_nrcb1_cal.fits"
    make_jwst_cal(cal)
    rate = tmp_path / "jw01234001001_01101_00002_nrcb1_rate.fits"
    with jdm.open(str(cal)) as model:
        model.meta.bunit_data = "DN/s"  # a _rate file among _cal files
        model.meta.observation.exposure_number = "2"
        model.save(str(rate))
    with pytest.raises(DrizzlepipeInputError, match="surface brightness"):
        ModelLibrary([str(cal), str(rate)])


def test_an_association_among_other_inputs_is_refused_clearly(small_simulation, tmp_path):
    asn = tmp_path / "x_asn.json"
    asn.write_text('{"products": [{"members": []}]}')
    with pytest.raises(DrizzlepipeInputError, match="association must be the only input"):
        ModelLibrary([str(asn), str(small_simulation.flt_files[0])])


def test_stated_units_without_bunit_say_they_are_taken_as_electrons(tmp_path, caplog):
    from fitsfactory import make_plain_fits

    make_plain_fits(tmp_path / "frame.fits", bunit=None)
    with caplog.at_level(logging.WARNING):
        ModelLibrary(str(tmp_path / "frame.fits"), units="counts")
    assert "units=counts stated without a readable BUNIT: taken as electrons" in caplog.text
