"""DrizzlePipeline end to end: truth, parameter plumbing, intermediate products, skips."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from stpipe import Step

from drizzlepipe.pipelines import DrizzlePipeline
from test_resample_steps import _aperture_fluxes, _isolated_stars

REPO = Path(__file__).resolve().parents[1]
STRUN = Path(sys.executable).parent / "strun"


def _asn(simulation, directory, name="mymosaic"):
    members = [{"expname": str(p), "exptype": "science"} for p in simulation.flt_files]
    path = Path(directory) / "asn.json"
    path.write_text(json.dumps({"products": [{"name": name, "members": members}]}))
    return path


def _strun(args, cwd):
    env = dict(os.environ)
    env["CRDS_SERVER_URL"] = "https://127.0.0.1:9"  # any CRDS access would fail loudly
    run = subprocess.run(
        [str(STRUN), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


@pytest.fixture(scope="module")
def pipeline_run(small_simulation, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    final = DrizzlePipeline.call(
        [str(p) for p in small_simulation.flt_files],
        steps={
            "sky_sub": {"method": "globalmin+match"},
            "driz_final": {"refimage": str(small_simulation.scene_file)},
        },
        output_dir=str(out),
    )
    return final, out


def test_end_to_end_matches_the_noiseless_truth(small_simulation, pipeline_run):
    final, out = pipeline_run
    truth = fits.getdata(small_simulation.scene_file)
    well_covered = final.wht >= 0.7 * np.median(final.wht[final.wht > 0])
    normalised = ((final.data - truth) / final.err)[well_covered]
    robust_sigma = 1.4826 * np.median(np.abs(normalised - np.median(normalised)))
    assert robust_sigma == pytest.approx(1.0, abs=0.10)  # issue: within 10% of 1
    ratios = _aperture_fluxes(final.data, _isolated_stars(small_simulation))
    assert np.median(ratios) == pytest.approx(1.0, abs=0.005)  # isolated stars within 0.5%
    assert not np.isnan(final.data[final.wht > 0]).any()
    assert [p.name for p in out.iterdir()] == ["final_drz.fits"]  # nothing else by default
    for name in ("static_mask", "sky_sub", "driz_separate", "create_median", "blot_cr"):
        assert getattr(final.meta.cal_step, name) == "COMPLETE"


def test_cfg_file_and_command_line_precedence_through_strun(small_simulation, tmp_path):
    asn = _asn(small_simulation, tmp_path)
    log = _strun(
        [
            REPO / "cfg" / "few_exposures.asdf", asn, "--steps.create_median.combine_type=median",
            f"--output_dir={tmp_path / 'out'}", "--verbose",  # the parameters are logged at DEBUG
        ],
        tmp_path,
    )  # fmt: skip
    # command line beats the file (minmed -> median); the file beats the defaults (snr, sky)
    assert "Median of 4 images (median)" in log
    assert re.search(r"snr: 5\.0 2\.0", log)
    assert re.search(r"method: globalmin\+match", log)  # sky method from the file (localmin)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mymosaic_drz.fits"]


def test_save_parameters_writes_a_file_that_reproduces_the_run(tmp_path):
    _strun(
        ["drizzle_pipeline", "--save-parameters=p.asdf", "--steps.blot_cr.snr=4.0 3.5"], tmp_path
    )
    pipeline = Step.from_config_file(str(tmp_path / "p.asdf"))
    pars = pipeline.get_pars()
    assert isinstance(pipeline, DrizzlePipeline)
    assert pars["steps"]["blot_cr"]["snr"] == "4.0 3.5"
    defaults = DrizzlePipeline().get_pars()
    assert pars["steps"]["create_median"] == defaults["steps"]["create_median"]


def test_intermediate_products_appear_exactly_when_asked(small_simulation, tmp_path):
    files = [str(p) for p in small_simulation.flt_files]
    roots = small_simulation.rootnames
    out = tmp_path / "one"
    steps = {"driz_separate": {"save_results": True}}
    DrizzlePipeline.call(files, steps=steps, output_dir=str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{r}_single.fits" for r in roots] + ["final_drz.fits"]
    )
    out = tmp_path / "all"
    DrizzlePipeline.call(files, save_intermediates=True, output_dir=str(out))
    expected = ["final_drz.fits", "final_med.fits", "final_staticmask.fits"]
    for root in roots:
        expected += [f"{root}_single.fits", f"{root}_sky.fits", f"{root}_crf.fits"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    # the _crf copies carry the cosmic rays in DQ and MDRIZSKY, the inputs are untouched
    with fits.open(out / f"{roots[0]}_crf.fits") as crf, fits.open(files[0]) as original:
        assert np.count_nonzero(crf["DQ", 1].data & 4096) > 100
        assert not np.any(original["DQ", 1].data & 4096)
        assert "MDRIZSKY" in crf["SCI", 1].header


def test_skipped_steps_are_recorded(small_simulation):
    # in the product and in every chip: static_mask is skipped by stpipe (its input is the
    # library), create_median too (its input is the singles: the pipeline records it in the
    # chips), blot_cr is not run (no median)
    from drizzlepipe.datamodels import ModelLibrary

    library = ModelLibrary([str(p) for p in small_simulation.flt_files])
    final = DrizzlePipeline.call(
        library, steps={"create_median": {"skip": True}, "static_mask": {"skip": True}}
    )
    assert final.meta.cal_step.create_median == "SKIPPED"
    assert final.meta.cal_step.blot_cr == "SKIPPED"  # nothing to compare with
    assert final.meta.cal_step.static_mask == "SKIPPED"
    assert final.meta.cal_step.driz_separate == "COMPLETE"
    with library:
        for index, model in enumerate(library):
            steps = model.meta.cal_step
            assert (steps.static_mask, steps.create_median, steps.blot_cr) == ("SKIPPED",) * 3
            library.shelve(model, index, modify=False)


def test_one_exposure_skips_median_and_cosmic_rays(small_simulation, caplog):
    final = DrizzlePipeline.call(str(small_simulation.flt_files[0]))
    assert final.meta.cal_step.create_median == "SKIPPED"
    assert final.meta.cal_step.blot_cr == "SKIPPED"
    assert final.meta.resample.ndrizim == 2
