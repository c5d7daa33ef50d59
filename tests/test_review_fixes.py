"""Regression tests for defects found in review: sky restored before a new one, inputs never
overwritten by products, on-disk chips keep their names, rates and counts treated alike."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits

from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.exceptions import DrizzlepipeInputError
from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.steps import (
    BlotCRStep,
    CreateMedianStep,
    DrizFinalStep,
    DrizSeparateStep,
    SkySubStep,
)


def test_a_sky_already_subtracted_is_restored_before_the_new_one(small_simulation):
    library = ModelLibrary([str(p) for p in small_simulation.flt_files[:2]])
    with library:
        originals = []
        for index, model in enumerate(library):
            originals.append(model.data.copy())
            model.data = model.data - np.float32(5.0)  # the file's pixels are read-only
            model.meta.background.level = 5.0
            model.meta.background.subtracted = True
            library.shelve(model, index)
    SkySubStep(method="localmin").run(library)
    with library:
        for index, model in enumerate(library):
            assert model.meta.background.subtracted is False
            np.testing.assert_allclose(model.data, originals[index], atol=1e-3)
            truth = small_simulation.sky[model.meta.group_id]
            assert model.meta.background.level == pytest.approx(truth, abs=0.1)
            library.shelve(model, index, modify=False)


def test_products_never_overwrite_inputs(tmp_path, small_simulation):
    inputs = []
    for path in small_simulation.flt_files[:2]:
        target = tmp_path / path.name.replace("_flt", "_crf")
        shutil.copy(path, target)
        inputs.append(target)
    before = [p.read_bytes() for p in inputs]
    library = ModelLibrary([str(p) for p in inputs])
    median = CreateMedianStep().run(DrizSeparateStep().run(library))
    with pytest.raises(DrizzlepipeInputError, match="refusing to overwrite"):
        BlotCRStep(save_results=True, output_dir=str(tmp_path)).run(library, median)
    assert [p.read_bytes() for p in inputs] == before


def test_on_disk_chips_keep_their_input_names(tmp_path, small_simulation):
    library = ModelLibrary(
        [str(p) for p in small_simulation.flt_files[:1]], on_disk=True, temp_directory=tmp_path
    )
    with library:
        model = library.borrow(1)
        library.shelve(model, 1, modify=True)
        model = library.borrow(1)
        assert model.meta.filename == small_simulation.flt_files[0].name
        assert model.meta.chip == 2
        library.shelve(model, 1, modify=False)


def _plain(path, data, bunit):
    from fitsfactory import tan_sip_header

    hdu = fits.PrimaryHDU(data.astype(np.float32))
    hdu.header.update(tan_sip_header(data.shape, sip=False))
    hdu.header.update(EXPTIME=100.0, BUNIT=bunit, RDNOISE=5.0)
    hdu.writeto(path)


def test_count_rates_without_err_get_the_error_of_their_counts(tmp_path):
    rate = np.full((40, 50), 10.0)  # electrons/s
    _plain(tmp_path / "rate.fits", rate, "ELECTRONS/S")
    _plain(tmp_path / "counts.fits", rate * 100.0, "ELECTRONS")
    errors = []
    for name in ("rate.fits", "counts.fits"):
        final = DrizFinalStep(context=False).run(ModelLibrary(str(tmp_path / name)))
        errors.append(np.nanmedian(final.err))
    # both are e-/s products of 1000 e- + 5 e- read noise per pixel in 100 s
    expected = np.sqrt(1000.0 + 25.0) / 100.0
    assert errors == pytest.approx([expected, expected], rel=0.02)


def test_several_input_files_as_separate_arguments(small_simulation):
    # strun passes each file named on the command line as its own argument
    files = [str(p) for p in small_simulation.flt_files[:2]]
    final = DrizzlePipeline().run(*files)
    assert final.meta.resample.ndrizim == 4


def test_err_weights_need_an_err_array(tmp_path):
    _plain(tmp_path / "rate.fits", np.full((40, 50), 10.0), "ELECTRONS/S")
    with pytest.raises(DrizzlepipeInputError, match="no ERR array"):
        DrizFinalStep(weight_type="err").run(ModelLibrary(str(tmp_path / "rate.fits")))
