"""Bad input: one exception type naming file, extension and problem; nothing is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.exceptions import DrizzlepipeInputError
from fitsfactory import make_hst_flt, make_plain_fits


def _files(directory):
    return sorted(p.name for p in directory.rglob("*"))


def _expect(tmp_path, call, *fragments):
    before = _files(tmp_path)
    with pytest.raises(DrizzlepipeInputError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert _files(tmp_path) == before, "nothing may be written on bad input"
    return info.value


def test_missing_file(tmp_path):
    _expect(
        tmp_path, lambda: dm.open(tmp_path / "nothere_flt.fits"), "nothere_flt.fits", "not found"
    )


def test_not_fits_or_asdf(tmp_path):
    path = tmp_path / "notes_flt.fits"
    path.write_text("this is not a FITS file\n" * 10)
    _expect(tmp_path, lambda: dm.open(path), "notes_flt.fits", "not a FITS or ASDF file")


def test_truncated_fits(tmp_path):
    path = tmp_path / "jtrunc1aq_flt.fits"
    make_hst_flt(path, chips=1)
    path.write_bytes(path.read_bytes()[:5000])
    _expect(tmp_path, lambda: dm.open(path), "jtrunc1aq_flt.fits")


def test_no_celestial_wcs(tmp_path):
    path = tmp_path / "nowcs.fits"
    make_plain_fits(path, wcs=False)
    error = _expect(tmp_path, lambda: dm.open(path), "nowcs.fits[PRIMARY]", "no celestial WCS")
    assert error.extension == "PRIMARY"


def test_no_exposure_time(tmp_path):
    path = tmp_path / "jnoexp1aq_flt.fits"
    make_hst_flt(path, chips=1, exptime=None)
    _expect(tmp_path, lambda: dm.open(path), "jnoexp1aq_flt.fits[SCI,1]", "no exposure time")


def test_non_positive_exposure_time(tmp_path):
    path = tmp_path / "jzero01aq_flt.fits"
    make_hst_flt(path, chips=1, exptime=0.0)
    _expect(tmp_path, lambda: dm.open(path), "[SCI,1]", "must be positive")


def test_unknown_units(tmp_path):
    path = tmp_path / "junits1aq_flt.fits"
    make_hst_flt(path, chips=1, bunit="FURLONGS")
    _expect(tmp_path, lambda: dm.open(path), "junits1aq_flt.fits[SCI,1]", "unknown units")


@pytest.mark.parametrize("extname", ["DQ", "ERR"])
def test_dq_or_err_shape_differs_from_sci(tmp_path, extname):
    path = tmp_path / "jshape1aq_flt.fits"
    make_hst_flt(path, chips=2)
    with fits.open(path) as hdul:
        hdul[extname, 2].data = np.zeros((10, 10), hdul[extname, 2].data.dtype)
        hdul.writeto(path, overwrite=True)
    _expect(tmp_path, lambda: dm.open(path), f"jshape1aq_flt.fits[{extname},2]", "differs from")


def test_empty_association(tmp_path):
    asn = tmp_path / "empty_asn.json"
    asn.write_text(json.dumps({"products": [{"name": "x", "members": []}]}))
    _expect(tmp_path, lambda: ModelLibrary(str(asn)), "empty_asn.json", "no science members")


def test_association_member_missing(tmp_path):
    asn = tmp_path / "asn.json"
    members = [{"expname": "jgone01aq_flt.fits", "exptype": "science"}]
    asn.write_text(json.dumps({"products": [{"name": "x", "members": members}]}))
    _expect(tmp_path, lambda: ModelLibrary(str(asn)), "asn.json", "jgone01aq_flt.fits", "not found")


def test_association_not_json(tmp_path):
    asn = tmp_path / "broken_asn.json"
    asn.write_text("{not json")
    _expect(tmp_path, lambda: ModelLibrary(str(asn)), "broken_asn.json", "not a valid association")


def test_duplicate_inputs(tmp_path):
    path = tmp_path / "jdup001aq_flt.fits"
    make_hst_flt(path, chips=1)
    _expect(
        tmp_path,
        lambda: ModelLibrary([str(path), str(tmp_path / "." / path.name)]),
        "jdup001aq_flt.fits",
        "duplicate input",
    )


def test_glob_without_matches(tmp_path):
    _expect(tmp_path, lambda: ModelLibrary(str(tmp_path / "*_nomatch.fits")), "matches no files")


def test_missing_chip_selector(tmp_path):
    path = tmp_path / "jsel001aq_flt.fits"
    make_hst_flt(path, chips=2)
    _expect(tmp_path, lambda: dm.open(f"{path}[SCI,3]"), "[SCI,3]", "no such extension")
