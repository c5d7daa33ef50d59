"""Tests of ``drizzlepipe convert-pars`` (``drizzlepipe.convert_pars``).

Non-peer tests convert excerpts of real AstroDrizzle parameter files, copied below from
drizzlepac 3.11's ``pars/astrodrizzle_filter_hap.cfg`` and
``pars/hap_pars/svm_parameters/acs/wfc/acs_wfc_astrodrizzle_any_n6.json``, and check the
values in the tree against what those files say, AstroDrizzle's step auto-logic, the unmapped
list and that stpipe reads the written file back unchanged. Peer tests (``-m peer``) read every
parameter file shipped with the installed drizzlepac and compare our reader with drizzlepac's
own configobj loader.

All comparisons are exact: the converter copies values, it does not compute them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import asdf
import numpy as np
import pytest

from drizzlepipe import convert_pars as cp
from drizzlepipe.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

# Excerpt of drizzlepac 3.11 pars/astrodrizzle_filter_hap.cfg (inline comments, quoted section
# name and unquoted bit values as in the original; some lines left out).
FILTER_HAP_CFG = """\
_task_name_ = astrodrizzle#
input = ""# Input files (name, suffix, or @list)
output = ""# Rootname for output drizzled products
build = True# Create multi-extension output file for final drizzle?
crbit = 4096# Bit value for CR ident. in DQ array
stepsize = 10# Step size for drizzle coordinate computation
resetbits = 4096# Bit values to reset in all input DQ arrays
num_cores = None# Max CPU cores to use (n<2 disables, None = auto-decide)
in_memory = True# Process everything in memory to minimize disk I/O?

[STATE OF INPUT FILES]
clean = True# Delete temporary files after completion?

[STEP 1: STATIC MASK]
static = True# Create static bad-pixel mask from the data?
static_sig = 4.0# "Sigma*rms below mode to clip for static mask"

[STEP 2: SKY SUBTRACTION]
skysub = True# "Perform sky subtraction?"
skymethod = match# Sky computation method
skystat = mode# "Sky correction statistics parameter"
skywidth = 0.10000000149011612# "Bin width of histogram for sampling sky statistics (in sigma)"
skylower = -100.0# "Lower limit of usable data for sky (always in electrons)"
skyupper = None# "Upper limit of usable data for sky (always in electrons)"
sky_bits = 16# Integer mask bit values considered good pixels in DQ array

[STEP 3: DRIZZLE SEPARATE IMAGES]
driz_separate = True# "Drizzle onto separate output images?"
driz_sep_kernel = turbo# Shape of kernel function
driz_sep_wt_scl = exptime# "Weighting factor for input data image"
driz_sep_fillval = None# Value to be assigned to undefined output points
driz_sep_bits = 528# Integer mask bit values considered good

[STEP 3a: CUSTOM WCS FOR SEPARATE OUTPUTS]
driz_sep_wcs = True# "Define custom WCS for separate output images?"
driz_sep_rot = 0.0# "Position Angle of drizzled image's Y-axis w.r.t. North (degrees)"
driz_sep_scale = None# Absolute size of output pixels in arcsec/pixel

[STEP 4: CREATE MEDIAN IMAGE]
median = True# "Create a median image?"
combine_maskpt = 0.3# "Percentage of weight image value below which it is flagged as a bad pixel."
combine_type = median# "Type of combine operation"
combine_nsigma = 4 3# "Significance for accepting minimum instead of median"
combine_nhigh = 1# "minmax: Number of high pixels to reject"
combine_bufsize = None# "Size of buffer(in Mb) for each input image"

[STEP 5: BLOT BACK THE MEDIAN IMAGE]
blot = True# "Blot the median back to the input frame?"
blot_interp = poly5# Interpolant (nearest,linear,poly3,poly5,sinc)

["STEP 6: REMOVE COSMIC RAYS WITH DERIV, DRIZ_CR"]
driz_cr = True# Perform CR rejection with deriv and driz_cr?
driz_cr_snr = 5.0 4.0# "Driz_cr.SNR parameter"
driz_cr_scale = 3.0 2.4# Driz_cr.scale parameter

[STEP 7: DRIZZLE FINAL COMBINED IMAGE]
driz_combine = True# "Perform final drizzle image combination?"
final_wht_type = EXP# Type of weighting for final drizzle
final_fillval = 0# "Value to be assigned to undefined output points"
final_maskval = None# "Value to be assigned to regions outside SCI image"
final_bits = 528# Integer mask bit values considered good
final_units = cps# Units for final drizzle image (counts or cps)

[STEP 7a: CUSTOM WCS FOR FINAL OUTPUT]
final_wcs = True# "Define custom WCS for final output image?"
final_rot = 0.0# "Position Angle of drizzled image's Y-axis w.r.t. North (degrees)"

[INSTRUMENT PARAMETERS]
gnkeyword = "ATODGNA,ATODGNB,ATODGNC,ATODGND"#

[_RULES_]
"""

# Excerpt of drizzlepac 3.11 pars/hap_pars/svm_parameters/acs/wfc/acs_wfc_astrodrizzle_any_n6.json
ACS_WFC_N6 = {
    "_mdriztab_btn_": "Update From MDRIZTAB",
    "build": True,
    "crbit": 4096,
    "num_cores": 1,
    "in_memory": False,
    "STEP 1: STATIC MASK": {"static": True, "static_sig": 4.0},
    "STEP 2: SKY SUBTRACTION": {
        "skysub": True,
        "skymethod": "match",
        "skystat": "median",
        "skylower": -100.0,
        "sky_bits": "80",
        "skyupper": None,
        "skyuser": "",
    },
    "STEP 3: DRIZZLE SEPARATE IMAGES": {
        "driz_separate": True,
        "driz_sep_bits": "336",
        "driz_sep_kernel": "square",
        "driz_sep_fillval": None,
    },
    "STEP 4: CREATE MEDIAN IMAGE": {
        "median": True,
        "combine_type": "median",
        "combine_nlow": 0,
        "combine_nhigh": 1,
        "combine_maskpt": 0.3,
        "combine_nsigma": "4 3",
        "combine_bufsize": None,
    },
    "STEP 6: REMOVE COSMIC RAYS WITH DERIV, DRIZ_CR": {
        "driz_cr": True,
        "driz_cr_snr": "3.5 3.0",
        "driz_cr_scale": "1.2 0.7",
    },
    "STEP 7: DRIZZLE FINAL COMBINED IMAGE": {
        "driz_combine": True,
        "final_pixfrac": 0.8,
        "final_fillval": None,
        "final_bits": "336",
        "final_maskval": None,
        "final_wht_type": "EXP",
        "final_kernel": "square",
    },
    "STEP 7a: CUSTOM WCS FOR FINAL OUTPUT": {
        "final_wcs": True,
        "final_rot": 0.0,
        "final_scale": None,
        "final_outnx": None,
    },
    "STEP 3a: CUSTOM WCS FOR SEPARATE OUTPUTS": {"driz_sep_wcs": False, "driz_sep_rot": None},
}


def _steps(tree):
    return {step["name"]: step["parameters"] for step in tree["steps"]}


def _unmapped_names(unmapped):
    return [name for name, _value, _reason in unmapped]


@pytest.fixture
def filter_hap_cfg(tmp_path):
    path = tmp_path / "astrodrizzle_filter_hap.cfg"
    path.write_text(FILTER_HAP_CFG)
    return path


@pytest.fixture
def acs_wfc_n6_json(tmp_path):
    path = tmp_path / "acs_wfc_astrodrizzle_any_n6.json"
    path.write_text(json.dumps(ACS_WFC_N6, indent=4))
    return path


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_read_cfg_types_values_as_astrodrizzle(filter_hap_cfg):
    pars = cp.read_astrodrizzle_pars(filter_hap_cfg)
    expected = {
        "build": True,
        "crbit": 4096,
        "resetbits": "4096",
        "num_cores": None,
        "in_memory": True,
        "clean": True,
        "static_sig": 4.0,
        "skymethod": "match",
        "skywidth": 0.10000000149011612,
        "skylower": -100.0,
        "skyupper": None,
        "sky_bits": "16",
        "driz_sep_fillval": None,
        "driz_sep_rot": 0.0,
        "combine_nsigma": "4 3",
        "combine_bufsize": None,
        "final_fillval": 0.0,
        "final_maskval": None,
        "gnkeyword": "ATODGNA,ATODGNB,ATODGNC,ATODGND",
    }
    assert {name: pars[name] for name in expected} == expected
    # types as astrodrizzle.cfgspc gives them (bool is a subclass of int: check exactly)
    assert type(pars["static"]) is bool and type(pars["crbit"]) is int
    assert type(pars["final_fillval"]) is float
    # TEAL's internal entries are not parameters
    assert "_task_name_" not in pars and "_RULES_" not in pars


def test_read_json_nested_and_flat_layouts_agree(tmp_path, acs_wfc_n6_json):
    flat = {}
    for key, value in ACS_WFC_N6.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    flat_path = tmp_path / "flat.json"
    flat_path.write_text(json.dumps(flat))
    nested = cp.read_astrodrizzle_pars(acs_wfc_n6_json)
    assert nested == cp.read_astrodrizzle_pars(flat_path)
    assert nested["combine_type"] == "median" and nested["final_pixfrac"] == 0.8
    assert "_mdriztab_btn_" not in nested


def test_read_refuses_other_tasks_and_bad_values(tmp_path):
    tweakreg = tmp_path / "tweakreg.cfg"
    tweakreg.write_text("_task_name_ = tweakreg\ninput = '*flt.fits'\nrefimage = ''\n")
    with pytest.raises(ValueError, match="'tweakreg' task"):
        cp.read_astrodrizzle_pars(tweakreg)
    catalog = tmp_path / "catalog_generation_all.json"
    catalog.write_text(json.dumps({"dao": {"bthresh": 5.0}, "sourcex": {"bthresh": 5.0}}))
    with pytest.raises(ValueError, match="no AstroDrizzle step parameter"):
        cp.read_astrodrizzle_pars(catalog)
    broken = tmp_path / "broken.cfg"
    broken.write_text("[STEP 1: STATIC MASK]\nstatic = True\nstatic_sig = four\n")
    with pytest.raises(ValueError, match="'static_sig'"):
        cp.read_astrodrizzle_pars(broken)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"A": {"final_bits": "0"}, "B": {"final_bits": "336"}}))
    with pytest.raises(ValueError, match="'final_bits' is given twice"):
        cp.read_astrodrizzle_pars(twice)


def test_read_mdriztab_row_with_column_aliases(tmp_path):
    from astropy.io import fits

    indef = -2147483647  # MDRIZTAB's integer INDEF
    columns = [
        fits.Column("filter", "24A", array=["ANY", "ANY"]),
        fits.Column("numimages", "1J", array=[1, 4]),
        fits.Column("subsky", "1L", array=[False, True]),
        fits.Column("crbitval", "1J", array=[4096, 8192]),
        fits.Column("bits", "1J", array=[0, 336]),
        fits.Column("combine_type", "12A", array=["minmed", "median"]),
        fits.Column("combine_nhigh", "1J", array=[indef, 1]),
        fits.Column("final_scale", "1E", array=[math.nan, 0.05]),
        fits.Column("coeffs", "12A", array=["header", ""]),
        fits.Column("shiftfile", "12A", array=["", ""]),
    ]
    path = tmp_path / "mdriztab.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(path)
    with pytest.raises(ValueError, match="row 2: filter=ANY, numimages=4"):
        cp.read_astrodrizzle_pars(path)
    pars = cp.read_astrodrizzle_pars(path, row=2)
    assert pars == {
        "skysub": True,
        "crbit": 8192,
        "driz_sep_bits": "336",
        "final_bits": "336",
        "combine_type": "median",
        "combine_nhigh": 1,
        "final_scale": float(np.float32(0.05)),  # a float32 column, widened as drizzlepac does
        "coeffs": False,
    }
    first = cp.read_astrodrizzle_pars(path, row=1)
    # INDEF integer -> None -> AstroDrizzle's default (0); NaN float -> None
    assert first["combine_nhigh"] == 0 and first["final_scale"] is None
    assert first["skysub"] is False and first["coeffs"] is True


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


def test_convert_cfg_excerpt(filter_hap_cfg):
    tree, unmapped = cp.convert(cp.read_astrodrizzle_pars(filter_hap_cfg))
    assert tree["class"] == "drizzlepipe.pipelines.DrizzlePipeline"
    assert [s["name"] for s in tree["steps"]] == list(cp.STEP_CLASSES)
    assert [s["class"] for s in tree["steps"]] == list(cp.STEP_CLASSES.values())
    assert tree["parameters"] == {"preset": "none", "crbit": 4096, "resetbits": "4096"}
    steps = _steps(tree)
    assert steps["static_mask"] == {"skip": False, "sigma": 4.0}
    assert steps["sky_sub"] == {
        "skip": False,
        "method": "match",
        "stat": "mode",
        "nclip": 5,  # not in the excerpt: AstroDrizzle's default
        "lsigma": 4.0,
        "usigma": 4.0,
        "lower": -100.0,  # skyupper=None is left out (our None)
        "binwidth": 0.10000000149011612,
        "good_bits": "16",
        "use_static": True,
    }
    assert steps["driz_separate"] == {
        "skip": False,
        "stepsize": 10,
        "kernel": "turbo",
        "pixfrac": 1.0,
        "good_bits": "528",
        "rotation": 0.0,  # driz_sep_wcs=True
    }
    assert steps["create_median"] == {
        "skip": False,
        "combine_type": "median",
        "maskpt": 0.3,
        "nsigma": "4 3",
        "nlow": 0,
        "nhigh": 1,
        "grow": 1,
        "bufsize": 1.0,  # AstroDrizzle's None = 1 MiB
        "newmasks": True,
    }
    assert steps["blot_cr"] == {
        "skip": False,
        "crbit": 4096,
        "interp": "poly5",
        "sinscl": 1.0,
        "snr": "5.0 4.0",
        "scale": "3.0 2.4",
        "grow": 1,
        "ctegrow": 0,
        "corr": False,
    }
    assert steps["driz_final"] == {
        "skip": False,
        "crbit": 4096,
        "stepsize": 10,
        "context": True,
        "kernel": "square",
        "pixfrac": 1.0,
        "good_bits": "528",
        "fillval": "0.0",  # final_fillval = 0
        "rotation": 0.0,
        "weight_type": "exptime",
        "units": "cps",
    }
    # exactly the unmapped names present in the excerpt, in AstroDrizzle's order
    assert _unmapped_names(unmapped) == [
        "input",
        "build",
        "num_cores",
        "in_memory",
        "clean",
        "driz_sep_wt_scl",
        "gnkeyword",
    ]
    assert tree["parameters"]["resetbits"] == "4096"  # cleared in memory, inputs untouched
    assert ("num_cores", None) in [(n, v) for n, v, _r in unmapped]


def test_convert_hap_json_excerpt(acs_wfc_n6_json):
    tree, unmapped = cp.convert(cp.read_astrodrizzle_pars(acs_wfc_n6_json))
    steps = _steps(tree)
    assert tree["parameters"] == {"preset": "none", "crbit": 4096, "resetbits": "4096"}
    assert steps["sky_sub"]["good_bits"] == "80" and steps["sky_sub"]["method"] == "match"
    assert steps["driz_separate"]["kernel"] == "square"
    assert steps["driz_separate"]["good_bits"] == "336"
    assert "fillval" not in steps["driz_separate"]  # None: our None (0 where no data)
    assert steps["create_median"]["combine_type"] == "median"
    assert steps["create_median"]["nhigh"] == 1
    assert steps["blot_cr"]["scale"] == "1.2 0.7" and steps["blot_cr"]["snr"] == "3.5 3.0"
    final = steps["driz_final"]
    assert final["good_bits"] == "336" and final["pixfrac"] == 0.8
    assert final["fillval"] == "NaN"  # final_fillval = final_maskval = None
    assert final["rotation"] == 0.0 and "pixel_scale" not in final
    assert _unmapped_names(unmapped) == ["build", "num_cores", "in_memory"]


@pytest.mark.parametrize(
    ("switches", "skipped", "forced"),
    [
        # all on (AstroDrizzle's defaults)
        ({}, set(), []),
        # driz_cr forces blot, blot forces median, median forces driz_separate
        (
            {"driz_separate": False, "median": False, "blot": False},
            set(),
            ["driz_separate", "median", "blot"],
        ),
        # no CR rejection: blot still forces the median (and singles), blot_cr is skipped
        ({"driz_cr": False, "median": False}, {"blot_cr"}, ["median"]),
        # nothing but the final drizzle
        (
            {
                "static": False,
                "skysub": False,
                "driz_separate": False,
                "median": False,
                "blot": False,
                "driz_cr": False,
            },
            {"static_mask", "sky_sub", "driz_separate", "create_median", "blot_cr"},
            [],
        ),  # fmt: skip
        ({"driz_combine": False}, {"driz_final"}, []),
    ],
)
def test_step_switches_follow_astrodrizzle_auto_logic(switches, skipped, forced):
    tree, unmapped = cp.convert(switches)
    assert {name for name, pars in _steps(tree).items() if pars["skip"]} == skipped
    forced_names = [name for name, _v, reason in unmapped if reason.startswith("forced on")]
    assert forced_names == forced


def test_blot_without_driz_cr_is_reported():
    _tree, unmapped = cp.convert({"driz_cr": False})
    (reason,) = [reason for name, _v, reason in unmapped if name == "blot"]
    assert "blot_cr, which is skipped" in reason


@pytest.mark.parametrize(
    ("pars", "expected", "reported"),
    [
        # skysub=False + keyword: a sky the user already subtracted, read back from the header
        (
            {"skysub": "no", "skyuser": "MDRIZSKY", "skyfile": "sky.txt"},
            {"skip": False, "method": "localmin", "user_keyword": "MDRIZSKY"},
            ["skyfile"],
        ),
        # skysub=False + @file: skies from the file, subtracted on the fly
        (
            {"skysub": False, "skyuser": "@skies.txt"},
            {"skip": False, "method": "user", "skyfile": "skies.txt"},
            [],
        ),
        # skysub=True + skyfile: skies from the file, skymethod not used, skyuser ignored
        (
            {"skysub": True, "skymethod": "match", "skyuser": "MDRIZSKY", "skyfile": "sky.txt"},
            {"skip": False, "method": "user", "skyfile": "sky.txt"},
            ["skymethod", "skyuser"],
        ),
        ({"skysub": False}, {"skip": True, "method": "localmin"}, []),
    ],
)
def test_sky_sources_follow_astrodrizzle(pars, expected, reported):
    tree, unmapped = cp.convert(pars)
    sky = _steps(tree)["sky_sub"]
    assert {key: sky.get(key) for key in ("skip", "method", "user_keyword", "skyfile")} == {
        "user_keyword": None,
        "skyfile": None,
        **expected,
    }
    assert _unmapped_names(unmapped) == reported


def test_custom_grid_needs_its_switch_and_both_halves_of_pairs():
    pars = {
        "driz_sep_rot": 30.0,
        "driz_sep_refimage": "ref_drz.fits",
        "final_wcs": True,
        "final_scale": 0.04,
        "final_outnx": 2000,
        "final_outny": 1500,
        "final_ra": 150.1,
        "final_dec": 2.2,
        "final_crpix1": 1000.5,
    }
    tree, unmapped = cp.convert(pars)
    single, final = _steps(tree)["driz_separate"], _steps(tree)["driz_final"]
    assert not {"rotation", "refimage"} & set(single)
    assert final["pixel_scale"] == 0.04
    assert final["output_shape"] == [2000, 1500]
    assert final["crval"] == [150.1, 2.2]
    assert "crpix" not in final
    reasons = {name: reason for name, _v, reason in unmapped}
    assert "driz_sep_wcs=False" in reasons["driz_sep_rot"]
    assert "driz_sep_wcs=False" in reasons["driz_sep_refimage"]
    assert "needs both" in reasons["final_crpix1"] and "needs both" in reasons["final_crpix2"]


@pytest.mark.parametrize(
    ("pars", "single_fill", "final_fill"),
    [
        ({}, None, "NaN"),
        ({"final_maskval": 0.0}, None, "0.0"),
        ({"final_fillval": "INDEF", "final_maskval": "None"}, None, "NaN"),
        ({"final_fillval": -1, "final_maskval": 5.0}, None, "-1.0"),  # fillval wins
        ({"driz_sep_fillval": "nan"}, "NaN", "NaN"),
        ({"driz_sep_fillval": 0}, "0.0", "NaN"),
    ],
)
def test_fill_values(pars, single_fill, final_fill):
    tree, _unmapped = cp.convert(pars)
    assert _steps(tree)["driz_separate"].get("fillval") == single_fill
    assert _steps(tree)["driz_final"]["fillval"] == final_fill


def test_unsupported_values_are_reported_and_defaults_kept():
    pars = {
        "driz_sep_kernel": "tophat",
        "final_pixfrac": 0.0,
        "blot_interp": "sinc",
        "final_wht_type": "err",
        "final_wt_scl": "2.0",
        "blot_addsky": False,
        "blot_skyval": 12.0,
        "sky_bits": "",
        "final_bits": "~4",
        "combine_nsigma": "5,4",
    }
    tree, unmapped = cp.convert(pars)
    steps = _steps(tree)
    assert "kernel" not in steps["driz_separate"]  # our default (turbo) kept
    assert steps["driz_final"]["kernel"] == "point" and "pixfrac" not in steps["driz_final"]
    assert steps["blot_cr"]["interp"] == "lan5"
    assert steps["driz_final"]["weight_type"] == "err"
    assert steps["sky_sub"]["good_bits"] == "None"  # AstroDrizzle's "" = ignore DQ
    assert steps["driz_final"]["good_bits"] == "~4"
    assert steps["create_median"]["nsigma"] == "5 4"
    assert set(_unmapped_names(unmapped)) == {
        "driz_sep_kernel",
        "final_pixfrac",
        "blot_interp",
        "final_wt_scl",
        "blot_addsky",
        "blot_skyval",
    }
    with pytest.raises(ValueError, match="'driz_cr_snr'"):
        cp.convert({"driz_cr_snr": "3.5"})


def test_unknown_names_are_reported():
    _tree, unmapped = cp.convert({"imageList": "*flt.fits", "static": True})
    assert unmapped == [("imageList", "*flt.fits", "not an AstroDrizzle parameter")]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def test_written_file_is_read_back_unchanged_by_stpipe(tmp_path, acs_wfc_n6_json):
    from stpipe.config_parser import load_config_file

    tree, _unmapped = cp.convert(cp.read_astrodrizzle_pars(acs_wfc_n6_json))
    path = cp.write_pars(tree, tmp_path / "pars.asdf")
    with asdf.open(path) as af:
        assert af.tree["class"] == tree["class"] and af.tree["name"] == tree["name"]
        assert af.tree["steps"] == tree["steps"]
    loaded = load_config_file(str(path))
    assert loaded["steps"]["driz_final"]["pixfrac"] == 0.8
    assert loaded["steps"]["create_median"]["combine_type"] == "median"
    assert loaded["steps"]["driz_final"]["fillval"] == "NaN"
    # None values are left out, never written as null
    assert "null" not in path.read_text()


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "pars.asdf"
    path.write_text("previous content")
    good, _ = cp.convert({})
    with pytest.raises(FileExistsError):
        cp.write_pars(good, path)
    bad, _ = cp.convert({})
    _steps(bad)["blot_cr"]["grow"] = "wide"  # not an integer: stpipe would refuse the file
    with pytest.raises(ValueError, match="blot_cr/grow"):
        cp.write_pars(bad, path, overwrite=True)
    assert path.read_text() == "previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pars.asdf"]  # no temporary left
    cp.write_pars(good, path, overwrite=True)
    with asdf.open(path) as af:
        assert af.tree["steps"] == good["steps"]


def test_write_removes_its_temporary_file_when_the_check_fails(tmp_path, monkeypatch):
    def failing_check(path, tree):
        raise ValueError("round trip changed the file")

    monkeypatch.setattr(cp, "_check_written", failing_check)
    tree, _ = cp.convert({})
    with pytest.raises(ValueError, match="round trip"):
        cp.write_pars(tree, tmp_path / "pars.asdf")
    assert list(tmp_path.iterdir()) == []


def test_validation_rejects_unknown_steps_and_parameters():
    tree, _ = cp.convert({})
    tree["steps"].append({"class": "x.Y", "name": "extra", "parameters": {}})
    with pytest.raises(ValueError, match="step names"):
        cp.validate_tree(tree)
    tree, _ = cp.convert({})
    _steps(tree)["sky_sub"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        cp.validate_tree(tree)


def test_cli_convert_pars(tmp_path, filter_hap_cfg, capsys):
    out = tmp_path / "pars.asdf"
    assert main(["convert-pars", str(filter_hap_cfg), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not carried over as given (7)" in printed
    assert "gnkeyword" in printed and "docs/instruments.md" in printed
    assert f"to {out}" in printed
    with asdf.open(out) as af:
        assert {s["name"]: s["parameters"] for s in af.tree["steps"]}["blot_cr"]["snr"] == (
            "5.0 4.0"
        )
    # an existing output is an error (exit 1) unless --overwrite
    assert main(["convert-pars", str(filter_hap_cfg), "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["convert-pars", str(filter_hap_cfg), "-o", str(out), "--overwrite"]) == 0


def test_converted_file_runs_the_pipeline(tmp_path, filter_hap_cfg):
    """A converted file drives a real run: switches and fill value reach the steps (~2 s)."""
    import numpy as np

    from drizzlepipe.pipelines import DrizzlePipeline
    from drizzlepipe.simulator import simulate

    simulation = simulate(tmp_path / "sim", exposures=3, shape=(128, 128), chips=2, seed=3)
    pars = cp.read_astrodrizzle_pars(filter_hap_cfg)
    pars["skysub"] = False  # check that a switched-off step is skipped
    tree, _ = cp.convert(pars)
    config = cp.write_pars(tree, tmp_path / "pars.asdf")
    final = DrizzlePipeline.call(
        [str(path) for path in simulation.flt_files],
        config_file=str(config),
        output_dir=str(tmp_path / "out"),
        configure_log=False,
    )
    status = final.meta.cal_step.instance
    assert status["sky_sub"] == "SKIPPED"
    assert all(status[name] == "COMPLETE" for name in cp.STEP_CLASSES if name != "sky_sub")
    # final_fillval = 0 in the file: every pixel without weight is exactly 0 (the default
    # would be NaN); the north-up grid (final_rot = 0) has such pixels in its corners
    empty = final.wht == 0
    assert empty.any() and np.all(final.data[empty] == 0.0)
    assert np.isfinite(final.data).all()


# ---------------------------------------------------------------------------------------------
# Documentation and spec consistency
# ---------------------------------------------------------------------------------------------


def test_docs_table_names_every_astrodrizzle_parameter():
    text = (REPO_ROOT / "docs" / "parameters.md").read_text()
    first_cells = re.findall(r"^\| ([^|]*) \|", text, flags=re.MULTILINE)
    documented = set(re.findall(r"`([a-z0-9_]+)`", " ".join(first_cells)))
    assert set(cp.AD_PARAMETERS) <= documented
    assert documented - set(cp.AD_PARAMETERS) == set()


def _own_spec_defaults(spec_lines):
    from configobj import ConfigObj
    from stpipe.config_parser import config_from_dict

    spec = ConfigObj(spec_lines, list_values=False)
    checks = {key: re.sub(r"\s+", "", value) for key, value in spec.items()}
    return checks, dict(config_from_dict({}, spec=spec))


def test_converted_file_builds_the_pipeline(tmp_path, acs_wfc_n6_json):
    """stpipe builds DrizzlePipeline and its steps from a converted file (class must exist)."""
    from drizzlepipe.pipelines import DrizzlePipeline

    tree, _ = cp.convert(cp.read_astrodrizzle_pars(acs_wfc_n6_json))
    pipeline = DrizzlePipeline.from_config_file(str(cp.write_pars(tree, tmp_path / "p.asdf")))
    assert cp.validate_tree(tree) == "DrizzlePipeline"
    assert pipeline.in_memory is None and pipeline.crbit == 4096  # the memory model decides
    for name, parameters in _steps(tree).items():
        step = getattr(pipeline, name)
        assert {key: getattr(step, key) for key in parameters} == parameters, name


# ---------------------------------------------------------------------------------------------
# Peers: the parameter files shipped with drizzlepac, read by drizzlepac itself
# ---------------------------------------------------------------------------------------------


def _drizzlepac_pars_dir():
    import importlib.resources

    import drizzlepac

    return Path(str(importlib.resources.files(drizzlepac) / "pars"))


def _drizzlepac_flat(path):
    """drizzlepac's own reading of a .cfg (validated against astrodrizzle.cfgspc), flattened."""
    from drizzlepac import util

    config = util.getDefaultConfigObj("astrodrizzle", str(path), {}, loadOnly=True)
    flat = {}

    def walk(section):
        for key, value in section.items():
            if hasattr(value, "items"):
                walk(value)
            elif not (key.startswith("_") and key.endswith("_")):
                flat[key] = value

    walk(config)
    return flat


@pytest.mark.peer
def test_peer_reads_cfg_files_as_drizzlepac_does():
    paths = sorted(_drizzlepac_pars_dir().glob("astrodrizzle*.cfg"))
    assert len(paths) >= 4  # astrodrizzle.cfg and the three HAP files
    for path in paths:
        ours = cp.read_astrodrizzle_pars(path)
        theirs = _drizzlepac_flat(path)
        assert {name: theirs[name] for name in ours} == ours, path.name


@pytest.mark.peer
def test_peer_astrodrizzle_defaults_match_drizzlepac():
    theirs = _drizzlepac_flat(_drizzlepac_pars_dir() / "astrodrizzle.cfg")
    ours = {name: default for name, (_kind, default) in cp.AD_PARAMETERS.items()}
    ours.pop("mdriztab")  # a keyword of astrodrizzle.AstroDrizzle(), not part of the .cfg
    assert set(ours) == set(theirs)
    assert ours == theirs


@pytest.mark.peer
def test_peer_converts_every_shipped_astrodrizzle_file(tmp_path):
    from stpipe.config_parser import load_config_file

    root = _drizzlepac_pars_dir()
    step_files = {"staticMask.cfg", "sky.cfg", "createMedian.cfg", "drizCR.cfg"}
    converted, refused = [], []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in (
            ".cfg",
            ".cfgspc",
            ".json",
            ".config",
            ".spec",
        ):
            continue
        is_astrodrizzle = "astrodrizzle" in path.name or path.name in step_files
        if not is_astrodrizzle:
            with pytest.raises(ValueError):
                cp.read_astrodrizzle_pars(path)
            refused.append(path.name)
            continue
        if path.suffix == ".cfgspc":  # a spec, not a parameter file
            with pytest.raises(ValueError):
                cp.read_astrodrizzle_pars(path)
            continue
        tree, unmapped = cp.convert(cp.read_astrodrizzle_pars(path))
        out = cp.write_pars(tree, tmp_path / f"{len(converted)}.asdf")
        loaded = load_config_file(str(out))
        assert list(loaded["steps"]) == list(cp.STEP_CLASSES), path.name
        assert all(len(item) == 3 and item[2] for item in unmapped), path.name
        converted.append(path)
        if re.search(r"_n[26]\.json$", path.name):
            given = {}
            for key, value in json.loads(path.read_text()).items():
                given.update(value if isinstance(value, dict) else {key: value})
            steps = {name: dict(pars) for name, pars in loaded["steps"].items()}
            assert steps["create_median"]["combine_type"] == given["combine_type"], path.name
            assert steps["blot_cr"]["scale"] == given["driz_cr_scale"], path.name
            assert steps["blot_cr"]["snr"] == given["driz_cr_snr"], path.name
            assert steps["sky_sub"]["good_bits"] == str(given["sky_bits"]), path.name
            assert steps["driz_separate"]["good_bits"] == str(given["driz_sep_bits"]), path.name
            assert steps["driz_final"]["good_bits"] == str(given["final_bits"]), path.name
            assert steps["driz_final"]["pixfrac"] == given["final_pixfrac"], path.name
    hap_json = [p for p in converted if p.suffix == ".json"]
    assert len(hap_json) >= 50 and len([p for p in hap_json if "_n6" in p.name]) >= 4
    assert len(converted) - len(hap_json) == 8  # 4 astrodrizzle*.cfg + 4 per-step files
    assert "tweakreg.cfg" in refused and "acs_wfc_alignment_all.json" in refused


def test_instrument_values_and_resetbits_are_carried_over():
    """AstroDrizzle's gain/rdnoise/exptime values and resetbits become the pipeline's
    parameters (the keyword names stay unmapped: the instrument table reads the keywords)."""
    tree, unmapped = cp.convert(
        {"gain": "2.5", "rdnoise": "4.2", "exptime": "", "resetbits": "0", "gnkeyword": "X"}
    )
    pars = tree["parameters"]
    assert (pars["gain"], pars["readnoise"], pars["resetbits"]) == (2.5, 4.2, "0")
    assert "exptime" not in pars
    assert [name for name, _value, _reason in unmapped] == ["gnkeyword"]
    cp.validate_tree(tree)
