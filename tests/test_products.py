"""Products AstroDrizzle users can use as before (issue 16, item 6): the input's header cards and
photometry, per-input ``D%03d*`` keywords and the ``HDRTAB`` table, a 2-D context up to 32
inputs, a WCS on every image extension; for drz, single and median products and ``_crf``
copies. The peer comparison of the same keywords with AstroDrizzle's drz is in
``test_peer_products.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ModelLibrary, ResampledModel
from drizzlepipe.datamodels.product_header import MAX_KEYWORD_INPUTS, add_product_header
from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.steps import DrizFinalStep
from fitsfactory import make_jwst_cal, make_plain_fits, simple_gwcs


@pytest.fixture(scope="module")
def products(small_simulation, tmp_path_factory):
    out = tmp_path_factory.mktemp("products")
    final = DrizzlePipeline.call(
        [str(p) for p in small_simulation.flt_files], output_dir=str(out),
        save_intermediates=True, steps={"blot_cr": {"save_results": True}}, configure_log=False,
    )  # fmt: skip
    return final, out


def test_drz_primary_header_carries_the_first_inputs_description(small_simulation, products):
    _, out = products
    first_path, drz_path = small_simulation.flt_files[0], out / "final_drz.fits"
    with fits.open(first_path) as first, fits.open(drz_path) as drz:
        source, primary = first[0].header, drz[0].header
        for keyword in ("TARGNAME", "PROPOSID", "DATE-OBS", "INSTRUME", "DETECTOR", "FILTER",
                        "TELESCOP", "RA_TARG", "DEC_TARG"):  # fmt: skip
            assert primary[keyword] == source[keyword], keyword
        for keyword in ("PHOTMODE", "PHOTFLAM", "PHOTPLAM", "PHOTBW", "PHOTZPT"):
            expected = first["SCI", 1].header.get(keyword, source.get(keyword))
            if keyword == "PHOTMODE":
                assert primary[keyword] == expected
            else:
                assert primary[keyword] == pytest.approx(expected), keyword
            assert drz["SCI"].header[keyword] == primary[keyword]  # where AstroDrizzle has them
        assert primary["ROOTNAME"] == "final" and primary["FILENAME"] == "final_drz.fits"
        assert primary["EXPTIME"] == primary["TEXPTIME"] == pytest.approx(4 * 500.0)
        starts = [fits.getval(p, "EXPSTART") for p in small_simulation.flt_files]
        ends = [fits.getval(p, "EXPEND") for p in small_simulation.flt_files]
        assert primary["EXPSTART"] == pytest.approx(min(starts))
        assert primary["EXPEND"] == pytest.approx(max(ends))
        assert "ATODGNA" not in primary and "MDRIZSKY" not in primary  # exposure-specific


def test_drz_has_d_keywords_and_a_table_row_per_input_chip(small_simulation, products):
    final, out = products
    with fits.open(out / "final_drz.fits") as drz:
        primary, table = drz[0].header, drz["HDRTAB"].data
        assert primary["NDRIZIM"] == 8 == len(table)
        chips = [(p.name, n) for p in small_simulation.flt_files for n in (1, 2)]
        for number, ((name, extver), row) in enumerate(zip(chips, table), start=1):
            prefix = f"D{number:03d}"
            assert primary[f"{prefix}DATA"] == f"{name}[sci,{extver}]"
            assert primary[f"{prefix}DEXP"] == 500.0
            assert primary[f"{prefix}KERN"] == "square" and primary[f"{prefix}PIXF"] == 1.0
            assert primary[f"{prefix}OUUN"] == "cps" and primary[f"{prefix}COEF"] == "SIP"
            assert primary[f"{prefix}SCAL"] == pytest.approx(final.meta.resample.pixel_scale)
            assert primary[f"{prefix}ISCL"] == pytest.approx(0.0396, abs=1e-4)
            for key in ("OUDA", "OUWE", "OUCO", "MASK", "WTSC", "FVAL", "WKEY", "VER", "GEOM"):
                assert f"{prefix}{key}" in primary
            assert (row["FILENAME"], row["EXTNAME"], row["EXTVER"]) == (name, "SCI", extver)
            assert row["ROOTNAME"] == name.removesuffix("_flt.fits")
            assert row["MDRIZSKY"] == pytest.approx(primary[f"{prefix}SKY"])
            assert row["EXPTIME"] == 500.0 and row["FILTER"] == "F606W"
        assert "D009DATA" not in primary
    # the skies are those the chips were given (MDRIZSKY of the _crf copies)
    with fits.open(out / chips[2][0].replace("_flt", "_crf")) as crf:
        assert crf["SCI", 1].header["MDRIZSKY"] == pytest.approx(table[2]["MDRIZSKY"])


def test_context_is_2d_and_every_image_extension_has_the_wcs(products):
    _, out = products
    with fits.open(out / "final_drz.fits") as drz:
        assert drz["CTX"].data.ndim == 2 and drz["CTX"].data.dtype.newbyteorder("=") == np.int32
        reference = WCS(drz["SCI"].header)
        for name in ("SCI", "WHT", "ERR", "CTX"):
            wcs = WCS(drz[name].header)
            assert wcs.has_celestial, name
            np.testing.assert_allclose(
                wcs.pixel_to_world_values(10.0, 20.0), reference.pixel_to_world_values(10.0, 20.0)
            )


def test_singles_and_median_carry_the_header_too(small_simulation, products):
    _, out = products
    root = small_simulation.rootnames[1]
    with fits.open(out / f"{root}_single.fits") as single, fits.open(out / "final_med.fits") as med:
        assert single[0].header["TARGNAME"] == "SIMULATED-FIELD"
        assert single[0].header["D001DATA"] == f"{root}_flt.fits[sci,1]"
        assert single[0].header["NDRIZIM"] == 2 and len(single["HDRTAB"].data) == 2
        assert single[0].header["ROOTNAME"] == root
        assert med[0].header["TARGNAME"] == "SIMULATED-FIELD"
        assert med[0].header["PHOTFLAM"] == single[0].header["PHOTFLAM"]


def test_crf_copies_are_marked_as_drizzlepipe_products(small_simulation, products):
    _, out = products
    root = small_simulation.rootnames[0]
    with fits.open(out / f"{root}_crf.fits") as crf:
        assert crf[0].header["DPSOFT"] == "drizzlepipe"
        assert crf[0].header["DPPRODTP"] == "crf"
        assert crf[0].header["ROOTNAME"] == root  # otherwise the input's header


def test_a_product_read_back_and_saved_again_keeps_one_table(products, tmp_path):
    _, out = products
    again = dm.open(str(out / "final_drz.fits"))
    assert len(again.meta.resample.members) == 8
    path = again.save(str(tmp_path / "again_drz.fits"))
    with fits.open(path) as hdulist:
        assert [hdu.name for hdu in hdulist].count("HDRTAB") == 1
        assert len(hdulist["HDRTAB"].data) == 8
        assert hdulist[0].header["FILENAME"] == "again_drz.fits"


def test_more_than_32_inputs_give_a_context_cube_with_a_celestial_wcs(tmp_path):
    files = []
    for number in range(33):
        path = tmp_path / f"image{number:02d}.fits"
        make_plain_fits(path, shape=(12, 14))
        files.append(str(path))
    final = DrizFinalStep.call(ModelLibrary(files), configure_log=False)
    assert final.con.shape[0] == 2
    path = final.save(str(tmp_path / "cube_drz.fits"))
    with fits.open(path) as drz:
        assert drz["CTX"].data.shape[0] == 2
        wcs = WCS(drz["CTX"].header, naxis=2)
        np.testing.assert_allclose(
            wcs.pixel_to_world_values(3.0, 4.0),
            WCS(drz["SCI"].header).pixel_to_world_values(3.0, 4.0),
        )
        assert drz[0].header["D033DATA"] == "image32.fits[primary]"


def test_jwst_product_has_the_photometry_of_its_output_pixel(tmp_path):
    paths = []
    for number, offset in enumerate((0.0, 3.3)):
        path = tmp_path / f"jw01234001001_01101_0000{number + 1}_nrcb1_cal.fits"
        model = make_jwst_cal(path, seed=number)
        model.meta.observation.exposure_number = str(number + 1)
        model.meta.photometry.conversion_megajanskys = 0.31
        model.meta.photometry.conversion_microjanskys = 7.3
        model.meta.wcs = simple_gwcs((32, 36), offset=(offset, 0.0))
        model.meta.target.catalog_name = "NGC-TEST"
        model.save(str(path))
        paths.append(str(path))
    final = DrizFinalStep.call(ModelLibrary(paths), pixel_scale=0.02, configure_log=False)
    path = final.save(str(tmp_path / "jw_drz.fits"))
    with fits.open(path) as drz:
        assert drz[0].header["PHOTMJSR"] == pytest.approx(0.31)
        assert drz["SCI"].header["PHOTMJSR"] == pytest.approx(0.31)
        assert drz[0].header["PIXAR_A2"] == pytest.approx(0.02**2)
        assert drz[0].header["PIXAR_SR"] == pytest.approx(0.02**2 * (np.pi / 180 / 3600) ** 2)
        assert drz[0].header["TARGNAME"] == "NGC-TEST"
        assert drz[0].header["TELESCOP"] == "JWST"


def test_keywords_stop_at_999_inputs_and_the_table_holds_all():
    model = ResampledModel(data=np.zeros((2, 2), np.float32), wht=np.zeros((2, 2), np.float32))
    model.meta.filename = "big_drz.fits"
    model.meta.resample.kernel = "square"
    model.meta.resample.members = [
        {
            "data": f"x{n}.fits[sci,1]",
            "file": f"x{n}.fits",
            "extname": "SCI",
            "extver": 1,
            "exptime": 1.0,
            "sky": 0.5,
        }  # fmt: skip
        for n in range(MAX_KEYWORD_INPUTS + 2)
    ]
    hdulist = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(name="SCI")])
    add_product_header(model, hdulist)
    assert "D999DATA" in hdulist[0].header and "D1000DAT" not in hdulist[0].header
    assert len(hdulist["HDRTAB"].data) == MAX_KEYWORD_INPUTS + 2


def test_a_product_of_several_detectors_says_multiple(tmp_path, caplog):
    import logging

    from stdatamodels.jwst import datamodels as jdm

    from drizzlepipe.pipelines import DrizzlePipeline

    paths = []
    for number, (detector, offset) in enumerate((("NRCB1", 0.0), ("NRCB2", 30.0))):
        path = tmp_path / f"jw01234001001_01101_00001_{detector.lower()}_cal.fits"
        make_jwst_cal(path, seed=number)
        with jdm.open(str(path)) as model:
            model.meta.instrument.detector = detector
            model.meta.wcs = simple_gwcs((32, 36), offset=(offset, 0.0))
            model.save(str(path))
        paths.append(str(path))
    with caplog.at_level(logging.INFO, logger="drizzlepipe"):
        final = DrizzlePipeline.call(paths, configure_log=False)
    assert final.meta.instrument.detector == "MULTIPLE"
    assert final.meta.header_cards.instance["DETECTOR"] == "MULTIPLE"
    # the summary names a JWST exposure's chips by their detectors
    assert "NRCB1 NRCB2" in caplog.text
