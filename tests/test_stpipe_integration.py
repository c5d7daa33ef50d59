"""stpipe integration: entry points, CRDS never contacted, strun, parameter files."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drizzlepipe import __version__
from drizzlepipe.integration import get_steps
from drizzlepipe.steps.base import DrizStep
from fitsfactory import make_hst_flt
from stepfixtures import ChipMeanStep

TESTS_DIR = Path(__file__).parent
BIN = Path(sys.executable).parent


def _offline_env(tmp_path):
    """An environment in which any CRDS access would fail loudly and leave a cache behind."""
    env = dict(os.environ)
    env["CRDS_SERVER_URL"] = "https://127.0.0.1:9"
    env["CRDS_PATH"] = str(tmp_path / "crds_cache")
    env.pop("STPIPE_DISABLE_CRDS_STEPPARS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    return env


def test_entry_point_list_matches_the_classes():
    listed = get_steps()
    for class_path, alias, is_pipeline in listed:
        module_name, class_name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, DrizStep)
        assert cls.class_alias == alias
        assert is_pipeline == hasattr(cls, "step_defs")
    aliases = [alias for _, alias, _ in listed]
    assert len(aliases) == len(set(aliases))
    # Every concrete step the package exports is listed.
    import drizzlepipe.pipelines as pipelines
    import drizzlepipe.steps as steps

    exported = {
        obj.class_alias
        for module in (steps, pipelines)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, DrizStep) and obj.class_alias
    }
    assert exported == set(aliases)


def test_entry_point_is_registered_with_stpipe():
    from importlib.metadata import entry_points

    names = [ep.value for ep in entry_points(group="stpipe.steps")]
    assert "drizzlepipe.integration:get_steps" in names


def test_step_call_never_contacts_crds(tmp_path, monkeypatch):
    path = tmp_path / "jcall01aq_flt.fits"
    make_hst_flt(path, chips=2)
    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    import stpipe.crds_client as crds_client

    def forbidden(*args, **kwargs):
        raise AssertionError("CRDS must not be contacted")

    monkeypatch.setattr(crds_client, "get_reference_file", forbidden)
    monkeypatch.setattr(crds_client, "get_multiple_reference_paths", forbidden)
    result = ChipMeanStep.call(str(path), scale=2.0)
    with result:
        levels = []
        for index, model in enumerate(result):
            levels.append(model.meta.background.level)
            result.shelve(model, index, modify=False)
    assert len(levels) == 2 and all(level > 190 for level in levels)  # 2 x mean of ~100
    assert not (tmp_path / "crds_cache").exists()


def test_strun_runs_a_step_offline_with_a_parameter_file(tmp_path):
    path = tmp_path / "jstrun1aq_flt.fits"
    make_hst_flt(path, chips=1)
    pars = tmp_path / "pars.asdf"
    pars.write_text(
        "#ASDF 1.0.0\n#ASDF_STANDARD 1.5.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
        "--- !core/asdf-1.1.0\n"
        "class: stepfixtures.ChipMeanStep\nname: chip_mean\nparameters: {scale: 3.0}\n...\n"
    )
    env = _offline_env(tmp_path)
    run = subprocess.run(
        [str(BIN / "strun"), str(pars), str(path), "--scale=5.0", f"--output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # The command line (5.0) wins over the parameter file (3.0): chip mean (100 +- 0.1) x 5.
    match = re.search(r"chip 0 mean ([0-9.]+)", run.stderr)
    assert match is not None, run.stderr
    assert float(match[1]) == pytest.approx(500.0, rel=0.01)
    assert not (tmp_path / "crds_cache").exists()


def test_strun_version_and_stpipe_list_show_drizzlepipe(tmp_path):
    env = _offline_env(tmp_path)
    version = subprocess.run(
        [str(BIN / "strun"), "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert f"drizzlepipe: {__version__}" in version.stdout + version.stderr
    listing = subprocess.run(
        [str(BIN / "stpipe"), "list"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    for class_path, alias, _ in get_steps():
        assert f"{class_path} ({alias})" in listing.stdout


def test_unknown_parameter_is_rejected():
    with pytest.raises(Exception, match="bogus"):
        ChipMeanStep(bogus=1)


def test_a_value_set_on_a_step_wins_over_the_pipelines(small_simulation, tmp_path):
    # good_bits and crbit: a step's None inherits the pipeline's; a value set on the step
    # ('0' included, once overwritten by the pipeline's) is the step's own.
    from astropy.io import fits

    from drizzlepipe.pipelines import DrizzlePipeline
    from drizzlepipe.steps import DrizFinalStep

    pipeline = DrizzlePipeline(
        good_bits="4", crbit=8192,
        steps={"sky_sub": {"good_bits": "0"}, "blot_cr": {"crbit": 4096}},
    )  # fmt: skip
    assert pipeline.sky_sub.inherited("good_bits", "0") == "0"
    assert pipeline.driz_final.inherited("good_bits", "0") == "4"
    assert pipeline.blot_cr.inherited("crbit") == 4096
    assert pipeline.driz_final.inherited("crbit") == 8192
    assert DrizFinalStep().inherited("good_bits", "0") == "0"  # alone: the step's default

    # in a run: DQ 4 on a block of one chip; the final's weight there depends on whose value
    path = tmp_path / small_simulation.flt_files[0].name
    with fits.open(small_simulation.flt_files[0]) as hdulist:
        hdulist["DQ", 1].data[100:140, 100:140] = 4
        hdulist.writeto(path)
    files = [str(path), *map(str, small_simulation.flt_files[1:])]
    only_final = {name: {"skip": True} for name in ("static_mask", "sky_sub", "driz_separate",
                                                     "create_median", "blot_cr")}  # fmt: skip
    weights = {}
    for label, final in (("inherits '4'", {}), ("own '0'", {"good_bits": "0"})):
        product = DrizzlePipeline.call(
            files, configure_log=False, good_bits="4", steps={**only_final, "driz_final": final}
        )
        weights[label] = float(product.wht.sum())
    # the pixels whose only DQ bit is 4 (the block, and the simulation's own), 500 s each
    # times their area in output pixels, weigh in the first run and not in the second
    only_4 = 0
    for name in files:
        with fits.open(name) as hdulist:
            for extver in (1, 2):
                dq = hdulist["DQ", extver].data.astype(np.uint16)
                only_4 += int(np.count_nonzero(dq == 4))
    assert only_4 > 1600
    area = (small_simulation.parameters["pixel_scale"] / product.meta.resample.pixel_scale) ** 2
    missing = weights["inherits '4'"] - weights["own '0'"]
    assert missing == pytest.approx(only_4 * 500.0 * area, rel=0.05)
