"""Instrument metadata (issue 16, item 2): gain, read noise, units, DQ source and readout
direction per instrument, as AstroDrizzle's instrument classes, with user overrides and
warnings for what had to be assumed.

Expected values come from drizzlepac's instrument classes (``wfpc2Data.WFPC2_GAINS``,
``nicmosData``, ``stisData``, ``acsData``/``wfc3Data``) and from the headers written here.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.datamodels.conversions import detector_variance, electrons_factor
from drizzlepipe.datamodels.readers.instruments import INSTRUMENTS
from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.simulator import simulate
from fitsfactory import make_hst_flt, make_plain_fits
from instrument_files import (
    STIS_GAIN_TEST,
    as_stis_crsplit,
    as_wfpc2,
    make_ir_flt,
    make_nicmos,
    make_wfpc2_c0m,
)

REPO_DOCS = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def two_chip_simulation(tmp_path_factory):
    return simulate(
        tmp_path_factory.mktemp("sim2chip"), exposures=3, shape=(96, 128), chips=2, seed=5,
        n_stars=40, star_flux_range=(50.0, 3000.0),
    )  # fmt: skip


def test_wfpc2_c0m_reads_gain_and_readnoise_per_chip_and_dq_from_c1m(two_chip_simulation, tmp_path):
    c0m, c1m, _ = as_wfpc2(two_chip_simulation.flt_files[0], tmp_path)
    chips = dm.open(str(c0m))
    # drizzlepac's WFPC2_GAINS at ATODGAIN 7: WF3 (6.90, 5.22), WF4 (7.10, 5.19)
    assert [(c.meta.detector.gain, c.meta.detector.readnoise) for c in chips] == [
        (6.90, 5.22),
        (7.10, 5.19),
    ]
    assert all(c.meta.detector.in_electrons is False for c in chips)  # DN
    assert all(c.meta.detector.readout_direction == -1 for c in chips)
    assert all(c.meta.has_err is False for c in chips)
    with fits.open(c1m) as dq_file, fits.open(two_chip_simulation.flt_files[0]) as original:
        for number, chip in enumerate(chips, start=1):
            expected = original["DQ", number].data.astype(np.uint16).astype(np.uint32)
            np.testing.assert_array_equal(chip.dq, expected)
            assert np.count_nonzero(dq_file["SDQ", number].data) > 0
    assert chips[0].meta.instrument.filter == "F606W"  # FILTNAM1


def test_wfpc2_four_chip_c0m_at_gain_15(tmp_path):
    c0m, _, dqs = make_wfpc2_c0m(tmp_path)
    library = ModelLibrary(str(c0m))
    assert list(library.group_indices) == ["u2ab0101t"]  # one exposure of four chips
    with library:
        chips = [library.borrow(i) for i in range(4)]
        # drizzlepac's WFPC2_GAINS at ATODGAIN 15, chips 1-4
        expected = [(13.99, 7.02), (14.50, 7.84), (13.95, 6.99), (13.95, 8.32)]
        assert [(c.meta.detector.gain, c.meta.detector.readnoise) for c in chips] == expected
        for chip, dq in zip(chips, dqs):
            np.testing.assert_array_equal(chip.dq, dq.astype(np.uint32))
        assert [round(c.meta.photometry.photflam / 3.5e-18) for c in chips] == [1, 2, 3, 4]
        for index, chip in enumerate(chips):
            library.shelve(chip, index, modify=False)


def test_wfpc2_without_its_c1m_warns_that_every_pixel_is_good(
    two_chip_simulation, tmp_path, caplog
):
    c0m, _, _ = as_wfpc2(two_chip_simulation.flt_files[0], tmp_path, c1m=False)
    with caplog.at_level(logging.WARNING):
        library = ModelLibrary(str(c0m))
    assert f"DQ file {c0m.name.replace('c0m', 'c1m')} not found" in caplog.text
    assert len(library) == 2


def test_wfpc2_end_to_end_gives_the_electron_product_and_photflam_per_electron(
    two_chip_simulation, tmp_path
):
    c0ms = [as_wfpc2(f, tmp_path / f"e{i}")[0] for i, f in enumerate(two_chip_simulation.flt_files)]
    gains = as_wfpc2(two_chip_simulation.flt_files[0], tmp_path / "gains")[2]
    steps = {"sky_sub": {"method": "globalmin"}}
    ours = DrizzlePipeline.call([str(p) for p in c0ms], steps=steps, output_dir=str(tmp_path / "o"),
                                configure_log=False)  # fmt: skip
    original = DrizzlePipeline.call(
        [str(p) for p in two_chip_simulation.flt_files], steps=steps, configure_log=False
    )
    bright = (original.data > 1.0) & (ours.wht > 0) & (original.wht > 0)
    # DN x each chip's own gain = the original electrons (before the fix: 7x too faint)
    assert np.median(ours.data[bright] / original.data[bright]) == pytest.approx(1.0, abs=1e-4)
    with fits.open(tmp_path / "o" / "final_drz.fits") as drz:
        assert drz["SCI"].header["BUNIT"] == "ELECTRONS/S"
        assert drz[0].header["PHOTFLAM"] == pytest.approx(1.9e-18 / gains[0])
        assert drz[0].header["INSTRUME"] == "WFPC2"


def test_stis_ccd_gain_readnoise_and_fallbacks(two_chip_simulation, tmp_path):
    sim_one_chip = simulate(tmp_path / "s", exposures=1, shape=(32, 40), chips=1, seed=2)
    (path,) = as_stis_crsplit(sim_one_chip.flt_files, tmp_path / "stis")
    chip = dm.open(str(path))
    assert (chip.meta.detector.gain, chip.meta.detector.readnoise) == (STIS_GAIN_TEST, 5.4)
    assert chip.meta.units == "counts" and chip.meta.detector.in_electrons is False
    assert electrons_factor(chip) == STIS_GAIN_TEST
    # without ATODGAIN the commanded CCDGAIN is the gain (drizzlepac reads ATODGAIN)
    with fits.open(path, mode="update") as hdulist:
        del hdulist[0].header["ATODGAIN"]
        hdulist[0].header["CCDGAIN"] = 2
    assert dm.open(str(path)).meta.detector.gain == 2.0
    # MAMA detectors count photons: gain 1, no read noise
    with fits.open(path, mode="update") as hdulist:
        hdulist[0].header["DETECTOR"] = "FUV-MAMA"
    mama = dm.open(str(path))
    assert (mama.meta.detector.gain, mama.meta.detector.readnoise) == (1.0, 0.0)
    assert mama.meta.detector.readout_direction == 0


def test_wfc3_ir_reads_time_and_uses_it_for_the_rate_variance(tmp_path):
    path = tmp_path / "ib4606cpq_flt.fits"
    time_map = make_ir_flt(path)
    chip = dm.open(str(path))
    assert chip.meta.units == "countrate" and chip.meta.detector.in_electrons is True
    assert chip.meta.detector.gain == pytest.approx(2.34)
    assert chip.meta.detector.readnoise == pytest.approx(np.mean([20.2, 19.8, 19.9, 20.1]))
    assert chip.meta.detector.readout_direction == 0
    np.testing.assert_array_equal(chip.time, time_map)
    rate = np.full(chip.data.shape, 2.0, np.float32)
    variance = detector_variance(chip, 1.0, rate)
    # (rate t + rn^2) / t^2 with each pixel's own integration time
    rn2 = chip.meta.detector.readnoise**2
    assert variance[0, 0] == pytest.approx((2.0 * 602.9 + rn2) / 602.9**2, rel=1e-6)
    assert variance[2, 3] == pytest.approx((2.0 * 102.9 + rn2) / 102.9**2, rel=1e-6)


def test_nicmos_camera_gain_readnoise_and_rate_units(tmp_path):
    path = tmp_path / "n8u301abq_cal.fits"
    make_nicmos(path, camera=3)
    chip = dm.open(str(path))
    assert (chip.meta.detector.gain, chip.meta.detector.readnoise) == (6.5, 29.0)
    assert chip.meta.units == "countrate" and chip.meta.detector.in_electrons is False
    assert chip.time is not None


def test_hst_file_without_bunit_uses_the_instruments_units_and_says_so(tmp_path, caplog):
    path = tmp_path / "jtest01aq_flt.fits"
    make_hst_flt(path, instrument="ACS", detector="WFC")
    with fits.open(path, mode="update") as hdulist:
        for hdu in hdulist:
            hdu.header.remove("BUNIT", ignore_missing=True)
    with caplog.at_level(logging.WARNING):
        library = ModelLibrary(str(path))
    assert "no BUNIT: ELECTRONS, the instrument's calibrated units, assumed" in caplog.text
    with library:
        model = library.borrow(0)
        assert model.meta.units == "counts" and model.meta.detector.in_electrons
        library.shelve(model, 0, modify=False)


def test_plain_fits_gain_and_readnoise_from_keywords_parameters_or_warned_defaults(
    tmp_path, caplog
):
    path = tmp_path / "image.fits"
    make_plain_fits(path, bunit="ADU")
    with caplog.at_level(logging.WARNING):
        ModelLibrary(str(path))
    assert "no GAIN keyword: 1 e-/DN assumed for data in DN; pass gain=" in caplog.text
    assert "no RDNOISE keyword: read noise 0 e- assumed; pass readnoise=" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        library = ModelLibrary(str(path), gain=2.5, readnoise=7.0)
    assert "assumed" not in caplog.text  # stated by the user: nothing to warn about
    with library:
        model = library.borrow(0)
        assert (model.meta.detector.gain, model.meta.detector.readnoise) == (2.5, 7.0)
        assert electrons_factor(model) == 2.5
        library.shelve(model, 0, modify=False)
    with fits.open(path, mode="update") as hdulist:
        hdulist[0].header["GAIN"] = 3.0
        hdulist[0].header["RDNOISE"] = 4.0
    chip = dm.open(str(path))
    assert (chip.meta.detector.gain, chip.meta.detector.readnoise) == (3.0, 4.0)


def test_pipeline_gain_and_readnoise_reach_every_chip(tmp_path):
    for number in range(2):
        path = tmp_path / f"jexp0{number}aq_flt.fits"
        make_hst_flt(path, rootname=f"jexp0{number}aq", seed=number)
        with fits.open(path, mode="update") as hdulist:
            hdulist[0].header["EXPSTART"] = 60000.0 + number
    pipeline = DrizzlePipeline(gain=3.0, readnoise=9.0)
    library = ModelLibrary(str(tmp_path / "*.fits"), **pipeline._open_options())
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            assert (model.meta.detector.gain, model.meta.detector.readnoise) == (3.0, 9.0)
            library.shelve(model, index, modify=False)


def test_the_instrument_table_in_the_docs_is_the_code_table():
    text = (REPO_DOCS / "instruments.md").read_text()
    for row in INSTRUMENTS:
        assert "| " + " | ".join(row) + " |" in text, row


@pytest.mark.shared_data
def test_real_hrc_exposure_metadata(shared_data):
    chip = dm.open(str(shared_data / "hrc_f606w" / "j8bt06nyq_flt.fits"))
    # mean of the non-zero ATODGN*/READNSE* (amp C only): 2.216, 4.71; amp C reads towards -y
    assert chip.meta.detector.gain == pytest.approx(2.216, rel=1e-6)
    assert chip.meta.detector.readnoise == pytest.approx(4.71, rel=1e-6)
    assert chip.meta.detector.readout_direction == -1
    assert chip.meta.photometry.photflam == pytest.approx(1.2781042e-19)
    assert chip.meta.header_cards.instance["TARGNAME"] == "NGC104"


def test_stated_units_with_a_gain_are_dn_and_converted(tmp_path, caplog):
    """A plain DN image without BUNIT (units= required): with gain= it is converted; the
    review of issue 16 found the gain ignored then (electrons assumed)."""
    path = tmp_path / "frame.fits"
    make_plain_fits(path, bunit=None)
    library = ModelLibrary(str(path), units="counts", gain=2.5)
    with library:
        model = library.borrow(0)
        assert model.meta.detector.in_electrons is False
        assert electrons_factor(model) == 2.5
        library.shelve(model, 0, modify=False)
    # stated units without a gain: what BUNIT says (ADU: DN, so the missing gain is warned)
    make_plain_fits(path, bunit="ADU")
    with caplog.at_level(logging.WARNING):
        chip = ModelLibrary(str(path), units="countrate")
    assert "1 e-/DN assumed" in caplog.text
    assert len(chip) == 1
    with pytest.raises(ValueError, match="gain must be a positive"):
        dm.open(str(path), gain=0.0)


def test_jwst_variance_includes_var_flat(tmp_path):
    from stdatamodels.jwst import datamodels as jdm

    from drizzlepipe.datamodels.conversions import chip_variance
    from fitsfactory import make_jwst_cal

    path = tmp_path / "jw01234001001_01101_00001_nrcb1_cal.fits"
    make_jwst_cal(path)
    with jdm.open(str(path)) as model:
        model.var_flat = np.full(model.data.shape, 3e-5, np.float32)
        model.save(str(path))
    chip = dm.open(str(path))
    # VAR_POISSON 4e-5 + VAR_RNOISE 6e-5 + VAR_FLAT 3e-5, as JWST's ERR is made
    np.testing.assert_allclose(chip_variance(chip, 1.0), 1.3e-4, rtol=1e-6)
