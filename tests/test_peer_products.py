"""Real data against AstroDrizzle (issue 16, peer tests): the ACS/HRC pair's drz header keywords
equal AstroDrizzle's, our final on AstroDrizzle's grid equals its final, and the small real
WFC3 UVIS/IR files drizzlepac installs (``tests/hap/sample_*.fits``) read as what they are.

Sky and cosmic-ray flags among pixels with input DQ 0 against AstroDrizzle on the same pair are
in ``test_real_hrc.py`` (``test_sky_matches_astrodrizzle_mdrizsky``,
``test_cosmic_ray_fraction_in_the_overlap_is_astrodrizzles``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.exceptions import DrizzlepipeInputError
from drizzlepipe.pipelines import DrizzlePipeline
from test_real_hrc import _astrodrizzle, _hrc_files

pytestmark = pytest.mark.peer

#: Primary-header keywords a drz carries of its first input (issue 16, item 6).
CARRIED = ("TELESCOP", "TARGNAME", "PROPOSID", "DATE-OBS", "INSTRUME", "DETECTOR", "FILTER1",
           "FILTER2")  # fmt: skip
PHOTOMETRY = ("PHOTMODE", "PHOTFLAM", "PHOTPLAM", "PHOTBW", "PHOTZPT")
#: Per-input keywords whose meaning is the same in both products.
PER_INPUT = ("DATA", "DEXP", "KERN", "PIXF", "OUUN", "WTSC", "COEF", "ISCL", "SCAL", "GEOM")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """AstroDrizzle and drizzlepipe on the HRC pair, global sky, their default grids; then
    ours again on AstroDrizzle's grid."""
    pytest.importorskip("drizzlepac")
    files = _hrc_files()
    theirs = _astrodrizzle(files, tmp_path_factory.mktemp("ad_products"), skymethod="globalmin")
    out = tmp_path_factory.mktemp("ours_products")
    steps = {"sky_sub": {"method": "globalmin"}}
    # preset 'none': AstroDrizzle's defaults (auto would choose few_exposures for the pair)
    DrizzlePipeline.call([str(p) for p in files], steps=steps, output_dir=str(out),
                         configure_log=False, preset="none")  # fmt: skip
    drz = theirs.workdir / "final_drz.fits"
    on_their_grid = DrizzlePipeline.call(
        [str(p) for p in files], configure_log=False, preset="none",
        steps={**steps, "driz_final": {"refimage": str(drz)}},
    )  # fmt: skip
    return {"ours": out / "final_drz.fits", "theirs": drz, "on_their_grid": on_their_grid}


def _keyword(hdulist, keyword):
    """A keyword from the primary header, else the SCI header (AstroDrizzle's PHOT*)."""
    for hdu in (hdulist[0], hdulist["SCI"]):
        if keyword in hdu.header:
            return hdu.header[keyword]
    raise KeyError(keyword)


def test_drz_header_keywords_equal_astrodrizzles(shared_data, both):
    with fits.open(both["ours"]) as ours, fits.open(both["theirs"]) as theirs:
        for keyword in CARRIED + ("PHOTMODE",):
            assert _keyword(ours, keyword) == _keyword(theirs, keyword), keyword
        for keyword in PHOTOMETRY[1:] + ("EXPTIME", "TEXPTIME", "EXPSTART", "EXPEND"):
            assert _keyword(ours, keyword) == pytest.approx(_keyword(theirs, keyword),
                                                            rel=1e-9), keyword  # fmt: skip
        assert ours[0].header["NDRIZIM"] == theirs[0].header["NDRIZIM"] == 2
        for number in (1, 2):
            for key in PER_INPUT:
                name = f"D{number:03d}{key}"
                mine, reference = ours[0].header[name], theirs[0].header[name]
                if isinstance(reference, (int, float)):
                    # SCAL: our grid's scale is the chip's IDCSCALE to 1e-9 (0.02500000001)
                    assert float(mine) == pytest.approx(reference, rel=1e-6), name
                else:
                    assert str(mine) == str(reference), name
        # the per-input table names the same exposures (HDRTAB: one row per input chip)
        assert list(ours["HDRTAB"].data["ROOTNAME"]) == list(theirs["HDRTAB"].data["ROOTNAME"])
        assert ours["CTX"].data.ndim == theirs["CTX"].data.ndim == 2


def test_final_on_astrodrizzles_grid_equals_its_final(shared_data, both):
    with fits.open(both["theirs"]) as theirs:
        their_sci, their_wht = theirs["SCI"].data, theirs["WHT"].data
    ours = both["on_their_grid"]
    assert ours.data.shape == their_sci.shape
    covered = (ours.wht > 0) & (their_wht > 0) & np.isfinite(their_sci)
    # Both: square kernel, exposure-time weights, the same sky, DQ and static masks. Pixel
    # maps differ by ~1e-4 pixel (how each interpolates the WCS between its stepsize-10 grid
    # points): weights and values differ by a few 1e-5 relative (median 6e-5). The rest are
    # pixels where the cosmic-ray masks differ (ours 7691, theirs 9382 pixels in the
    # overlap, test_real_hrc). Measured: 99.8% of covered pixels within 1e-3 (relative, or
    # 1e-3 e-/s, 1/80 of the sky noise of one pixel), weights likewise.
    close = np.isclose(ours.data[covered], their_sci[covered], rtol=1e-3, atol=1e-3)
    assert close.mean() > 0.99
    relative = np.abs(ours.data[covered] / their_sci[covered] - 1)
    assert np.median(relative) < 2e-4
    assert np.isclose(ours.wht[covered], their_wht[covered], rtol=1e-3).mean() > 0.99


def _hap_sample(name):
    spec = importlib.util.find_spec("drizzlepac")
    if spec is None or spec.origin is None:
        pytest.skip("drizzlepac is not installed")
    path = Path(spec.origin).parents[1] / "tests" / "hap" / name
    if not path.is_file():
        pytest.skip(f"drizzlepac's sample {name} is not installed here")
    return path


def test_real_wfc3_uvis_sample_reads_as_two_chips_in_electrons():
    path = _hap_sample("sample_svm_flc.fits")
    chips = dm.open(str(path))
    assert [c.meta.chip for c in chips] == [1, 2]
    assert {c.meta.group_id for c in chips} == {"sample_svm"}
    for chip in chips:
        assert chip.meta.units == "counts" and chip.meta.detector.in_electrons
        assert chip.meta.detector.gain == pytest.approx(1.5599999)
        assert chip.meta.detector.readnoise == pytest.approx(np.mean([3.03, 3.13, 3.08, 3.18]))
        assert chip.meta.photometry.photflam == pytest.approx(1.8379346e-19)
        assert chip.meta.rootname == "ib4606c6q"
    assert [c.meta.detector.readout_direction for c in chips] == [-1, 1]
    # NPOL and D2IM lookup tables of the real file are part of the WCS
    assert chips[0].meta.wcs.cpdis1 is not None and chips[0].meta.wcs.det2im1 is not None


def test_real_wfc3_ir_sample_reads_its_time_extension():
    path = _hap_sample("sample_svm_flt.fits")
    chip = dm.open(str(path))
    assert chip.meta.units == "countrate" and chip.meta.detector.in_electrons
    with fits.open(path) as hdulist:
        np.testing.assert_array_equal(chip.time, hdulist["TIME", 1].data)
        assert chip.meta.photometry.photflam == pytest.approx(hdulist[0].header["PHOTFLAM"])
    assert chip.meta.detector.readout_direction == 0


def test_real_samples_of_one_exposure_are_refused_and_mixed_detectors_too():
    ir = _hap_sample("sample_ipppssoot_flt.fits")
    same = _hap_sample("sample_ipppssoot_flt_w_skycell_header_keyword.fits")
    with pytest.raises(DrizzlepipeInputError) as error:
        ModelLibrary([str(ir), str(same)])  # both ib4606cpq, EXPSTART 55611.11275703
    assert ir.name in str(error.value) and same.name in str(error.value)
    uvis = _hap_sample("sample_ipppssoot_flc.fits")
    with pytest.raises(DrizzlepipeInputError, match="F555W.*F110W|F110W.*F555W"):
        ModelLibrary([str(uvis), str(ir)])
