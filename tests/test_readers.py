"""Readers: HST FLT/FLC, JWST _cal, plain FITS and our own products, never modifying inputs."""

from __future__ import annotations

import hashlib
import importlib.resources

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ImageModel
from drizzlepipe.datamodels.readers.instruments import readout_direction
from fitsfactory import make_hst_flt, make_jwst_cal, make_plain_fits


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hst_flt_one_model_per_chip_with_arrays_and_metadata(tmp_path):
    path = tmp_path / "jtest01aq_flt.fits"
    arrays = make_hst_flt(path, chips=2)
    before = _digest(path)
    chips = dm.open(path)
    assert [c.meta.chip for c in chips] == [1, 2]
    for chip, expected in zip(chips, arrays):
        np.testing.assert_array_equal(chip.data, expected["sci"])
        np.testing.assert_array_equal(chip.err, expected["err"])
        # int16 DQ is read as its bit pattern: bit 15 (-32768) becomes 32768, not 2**32-32768.
        np.testing.assert_array_equal(chip.dq, expected["dq"].view(np.uint16).astype(np.uint32))
        assert chip.dq[7, 7] == 32768
        assert chip.data.dtype == np.float32 and chip.dq.dtype == np.uint32
        assert chip.meta.units == "counts" and chip.meta.detector.in_electrons is True
        assert chip.meta.exposure.exptime == 100.0
        # AstroDrizzle's rule: mean of the non-zero ATODGN*/READNSE* values.
        assert chip.meta.detector.gain == pytest.approx((1.5 + 1.6 + 1.7) / 3)
        assert chip.meta.detector.readnoise == pytest.approx((3.0 + 3.2 + 3.4) / 3)
        assert chip.meta.group_id == "jtest01aq"
        assert chip.meta.detector.pixel_scale == 0.04
        assert chip.meta.background.level == 0.0 and chip.meta.background.subtracted is False
        wcs = WCS(fits.Header(expected["wcs_header"]))
        y, x = np.mgrid[0:40:4, 0:50:4]
        np.testing.assert_allclose(
            chip.meta.wcs.all_pix2world(x, y, 0), wcs.all_pix2world(x, y, 0), rtol=0, atol=1e-12
        )
        assert chip.meta.wcs.sip is not None
    # UVIS readout: SCI,1 towards -y, SCI,2 towards +y.
    assert [c.meta.detector.readout_direction for c in chips] == [-1, 1]
    assert _digest(path) == before  # the input file is untouched


def test_hst_lookup_table_distortion_is_read(tmp_path):
    path = tmp_path / "jlook01aq_flt.fits"
    arrays = make_hst_flt(path, chips=1, lookup=True)
    chip = dm.open(path)
    assert isinstance(chip, ImageModel)
    reference = arrays[0]["lookup_wcs"]
    y, x = np.mgrid[0:40:3, 0:50:3].astype(float)
    ours = np.array(chip.meta.wcs.all_pix2world(x, y, 0))
    np.testing.assert_allclose(ours, reference.all_pix2world(x, y, 0), rtol=0, atol=1e-12)
    # ... and the lookup tables matter: SIP alone differs by up to ~0.3 px (0.012").
    sip_only = WCS(fits.Header(arrays[0]["wcs_header"]))
    shift = np.max(np.abs(ours - np.array(sip_only.all_pix2world(x, y, 0)))) * 3600
    assert shift > 0.004


def test_hst_chip_selector_and_constant_dq(tmp_path):
    path = tmp_path / "jconst1aq_flt.fits"
    make_hst_flt(path, chips=2, constant_dq=True)
    chip = dm.open(f"{path}[SCI,2]")
    assert chip.meta.chip == 2
    assert chip.dq.shape == chip.data.shape and not chip.dq.any()


@pytest.mark.parametrize(
    ("bunit", "kind", "electrons"),
    [("ELECTRONS/S", "countrate", True), ("COUNTS", "counts", False), ("DN/S", "countrate", False)],
)
def test_hst_units(tmp_path, bunit, kind, electrons):
    path = tmp_path / "junit1aq_flt.fits"
    make_hst_flt(path, chips=1, bunit=bunit)
    chip = dm.open(path)
    assert (chip.meta.units, chip.meta.detector.in_electrons) == (kind, electrons)


@pytest.mark.parametrize(
    ("instrument", "detector", "extver", "amp", "expected"),
    [
        ("ACS", "WFC", 1, "", -1),
        ("ACS", "WFC", 2, "", 1),
        ("ACS", "HRC", 1, "C", -1),
        ("ACS", "HRC", 1, "A", 1),
        ("WFC3", "IR", 1, "", 0),
        ("ACS", "SBC", 1, "", 0),
    ],
)
def test_readout_direction_table(instrument, detector, extver, amp, expected):
    assert readout_direction(instrument, detector, extver, amp) == expected


def test_real_acs_hrc_exposure_from_spherical_geometry():
    # A real calibrated ACS/HRC FLT shipped in spherical-geometry's test data.
    resource = importlib.resources.files("spherical_geometry") / "tests" / "data"
    path = resource / "j8bt06nyq_flt.fits"
    with importlib.resources.as_file(path) as real:
        chip = dm.open(real)
        header = fits.getheader(real, ("SCI", 1))
    assert isinstance(chip, ImageModel)
    assert chip.data.shape == (1024, 1024)
    assert (chip.meta.instrument.name, chip.meta.instrument.detector) == ("ACS", "HRC")
    assert chip.meta.units == "counts" and chip.meta.detector.in_electrons
    assert chip.meta.exposure.exptime == pytest.approx(60.0)
    # The reader's WCS reproduces the header's reference point exactly.
    ra, dec = chip.meta.wcs.wcs_pix2world([[header["CRPIX1"], header["CRPIX2"]]], 1)[0]
    assert ra == pytest.approx(header["CRVAL1"], abs=1e-9)
    assert dec == pytest.approx(header["CRVAL2"], abs=1e-9)
    # Real data: the median count level of an HRC frame of 47 Tuc is positive and finite.
    assert np.isfinite(np.median(chip.data)) and np.median(chip.data) > 0


def test_real_hrc_pair_from_shared_data(shared_data):
    for name in ("j8bt06nyq_flt.fits", "j8bt06o6q_flt.fits"):
        chip = dm.open(shared_data / "hrc_f606w" / name)
        assert chip.meta.wcs.sip is not None
        assert chip.meta.detector.readout_direction in (-1, 1)
        assert chip.meta.group_id == name.split("_")[0]


def test_jwst_cal_image(tmp_path):
    path = tmp_path / "jw01234001001_01101_00001_nrcb1_cal.fits"
    source = make_jwst_cal(path)
    chip = dm.open(path)
    assert chip.meta.units == "surface_brightness"
    assert chip.meta.dq_convention == "jwst"
    np.testing.assert_array_equal(chip.data, source.data)
    np.testing.assert_array_equal(chip.var_rnoise, source.var_rnoise)
    np.testing.assert_array_equal(chip.dq, source.dq)
    assert chip.meta.exposure.exptime == 300.0
    assert chip.meta.background.level == pytest.approx(0.2)
    assert chip.meta.group_id == "jw01234001001_01101_1"
    assert chip.meta.detector.pixel_scale == pytest.approx(0.031)
    x, y = np.meshgrid(np.arange(0, 36, 5.0), np.arange(0, 32, 5.0))
    np.testing.assert_array_equal(chip.meta.wcs(x, y), source.meta.wcs(x, y))


def test_plain_fits_with_keywords_and_with_user_statements(tmp_path):
    path = tmp_path / "plain.fits"
    data = make_plain_fits(path)
    chip = dm.open(path)
    np.testing.assert_array_equal(chip.data, data)
    assert (chip.meta.units, chip.meta.exposure.exptime) == ("countrate", 50.0)
    assert chip.meta.has_err is False
    bare = tmp_path / "bare.fits"
    make_plain_fits(bare, exptime=None, bunit=None)
    chip = dm.open(bare, units="counts", exptime=30.0)
    assert (chip.meta.units, chip.meta.exposure.exptime) == ("counts", 30.0)


def test_own_products_open_as_their_model(tmp_path):
    path = tmp_path / "jtest01aq_flt.fits"
    make_hst_flt(path, chips=2)
    chip = dm.open(path)[1]
    saved = chip.save(tmp_path / "chip2.fits")
    again = dm.open(saved)
    assert isinstance(again, ImageModel) and again.meta.chip == 2
    np.testing.assert_array_equal(again.data, chip.data)
    assert again.meta.source.format == "hst"  # provenance of the original reader kept


def _rewrite_scaled(path, extension, stored, header):
    """Replace ``extension`` of ``path`` by integer values ``stored`` with scaling keywords
    (written without astropy's own scaling, as a camera or an archive writes them)."""
    with fits.open(path) as hdulist:
        hdus = [hdu.copy() for hdu in hdulist]
    index = next(i for i, hdu in enumerate(hdus) if (hdu.name, hdu.ver) == extension)
    old = hdus[index]
    new = (fits.PrimaryHDU if index == 0 else fits.ImageHDU)(stored, header=old.header)
    new.header.update(header)
    hdus[index] = new
    fits.HDUList(hdus).writeto(path, overwrite=True)


def test_scaled_integer_images_read_as_their_physical_values(tmp_path):
    # an unsigned 16-bit camera image (int16 + BZERO 32768), a BSCALE/BZERO image with BLANK
    # pixels, and DQ stored as unsigned 16 bits: the values astropy's own scaling gives, NaN
    # at BLANK; a band of rows read alone equals the whole read
    from drizzlepipe.datamodels import ModelLibrary
    from drizzlepipe.datamodels.pixels import pixel_rows

    camera = tmp_path / "camera.fits"
    make_plain_fits(camera)
    counts = np.arange(1200, dtype=np.int64).reshape(30, 40) * 50  # 0..59950: needs uint16
    _rewrite_scaled(camera, ("PRIMARY", 1), (counts - 32768).astype(np.int16),
                    {"BZERO": 32768, "BSCALE": 1})  # fmt: skip
    np.testing.assert_array_equal(dm.open(str(camera)).data, counts.astype(np.float32))

    flt = tmp_path / "jscal1aq_flt.fits"
    make_hst_flt(flt, chips=1, rootname="jscal1aq")
    stored = np.arange(2000, dtype=np.int16).reshape(40, 50) - 1000
    stored[3, 4] = -32768
    _rewrite_scaled(flt, ("SCI", 1), stored, {"BSCALE": 0.5, "BZERO": 100.0, "BLANK": -32768})
    flags = np.zeros((40, 50), np.int64)
    flags[2, 2], flags[5, 6] = 4096, 40000
    _rewrite_scaled(flt, ("DQ", 1), (flags - 32768).astype(np.int16), {"BZERO": 32768})
    expected = stored * np.float32(0.5) + np.float32(100.0)
    expected[3, 4] = np.nan
    with fits.open(flt) as hdulist:  # astropy's own scaling agrees
        np.testing.assert_array_equal(hdulist["SCI", 1].data, expected)
    chip = dm.open(str(flt) + "[SCI,1]")
    np.testing.assert_array_equal(chip.data, expected)
    np.testing.assert_array_equal(chip.dq, flags.astype(np.uint32))
    library = ModelLibrary([str(flt)])
    library.preload()
    with library:
        model = library.borrow(0)
        np.testing.assert_array_equal(pixel_rows(model, "data", slice(2, 9)), expected[2:9])
        library.shelve(model, 0, modify=False)


def test_flags_scaled_to_fractions_are_refused_with_the_extension_named(tmp_path):
    flt = tmp_path / "jscal2aq_flt.fits"
    make_hst_flt(flt, chips=1, rootname="jscal2aq")
    _rewrite_scaled(flt, ("DQ", 1), np.zeros((40, 50), np.int16), {"BSCALE": 0.5})
    from drizzlepipe.exceptions import DrizzlepipeInputError

    with pytest.raises(DrizzlepipeInputError, match="not whole numbers") as caught:
        dm.open(str(flt) + "[SCI,1]")
    assert "jscal2aq_flt.fits" in str(caught.value) and "DQ,1" in str(caught.value)
