"""A readable console (issue 18, item 2): per-chip lines at DEBUG, one line per step at INFO,
warnings a user needs (many cosmic rays, wildly different skies), progress lines that never mix
with log records (the executor's side is in ``test_execution.py``).
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from astropy.io import fits

from drizzlepipe.algorithms.sky import SkyResult, sky_spread
from drizzlepipe.pipelines import DrizzlePipeline


def _result(method, skies):
    return SkyResult(method=method, sky=tuple(skies.values()), exposure_sky=dict(skies),
                     chip_statistic=tuple(skies.values()))  # fmt: skip


def test_sky_spread_says_when_exposures_differ_wildly():
    assert sky_spread(_result("localmin", {"a": 1.0, "b": 1.3, "c": 0.9})) is None
    how, which = sky_spread(_result("localmin", {"a": 1.0, "b": 6.2, "c": 0.9}))
    assert how == "a factor of 6.9" and which == "c: 0.9, b: 6.2"
    assert sky_spread(_result("globalmin+match", {"a": -0.5, "b": 2.0}))[0] == "sign"
    # relative (match) or common (globalmin) levels say nothing about the spread
    assert sky_spread(_result("match", {"a": 0.0, "b": 9.0})) is None
    assert sky_spread(_result("globalmin", {"a": 1.0, "b": 9.0})) is None


@pytest.fixture(scope="module")
def console_run(small_simulation, tmp_path_factory):
    """The pipeline on the simulated set, one exposure with a sky 8x the others' and one chip
    hit by a shower of 'cosmic rays' (a bad readout), its log records kept."""
    directory = tmp_path_factory.mktemp("console")
    files = [shutil.copy(p, directory / p.name) for p in small_simulation.flt_files]
    with fits.open(files[0], mode="update") as hdulist:
        for number in (1, 2):
            hdulist["SCI", number].data += np.float32(8 * 80.0)
    with fits.open(files[1], mode="update") as hdulist:
        rng = np.random.default_rng(3)
        shower = rng.random(hdulist["SCI", 1].data.shape) < 0.12
        hdulist["SCI", 1].data[shower] += np.float32(5000.0)
    handler = _Keep()
    logger = logging.getLogger("drizzlepipe")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        DrizzlePipeline.call([str(p) for p in files], configure_log=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    return handler.records, files


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_per_chip_lines_are_debug_and_each_step_has_one_timed_info_line(console_run):
    records, files = console_run
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    chip = f"{files[2].name}[SCI,2]"
    # per-chip details exist, at DEBUG only
    assert any(chip in line and "cosmic-ray pixels" in line for line in debug)
    assert any(chip in line and line.startswith("Sky ") for line in debug)
    assert not any(chip in line for line in info)
    for step in ("static_mask", "sky_sub", "driz_separate", "create_median", "blot_cr",
                 "driz_final"):  # fmt: skip
        assert sum(line.startswith(f"Step {step} finished in ") for line in info) == 1
    # an INFO log of 8 chips stays short: the summary and about three lines a step
    assert len(info) < 40, info


def test_warnings_name_the_chip_with_many_cosmic_rays_and_the_wild_sky(console_run):
    records, files = console_run
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    flagged = [w for w in warnings if "of the pixels flagged as cosmic rays" in w]
    assert len(flagged) == 1 and flagged[0].startswith(f"{files[1].name}[SCI,1]")
    spread = [w for w in warnings if w.startswith("Sky brightness differs by a factor")]
    assert len(spread) == 1 and files[0].name.removesuffix("_flt.fits") in spread[0]


def test_stpipes_parameter_dump_is_debug_for_our_steps(small_simulation, caplog):
    """stpipe logs ~200 lines of parameters at INFO for a top-level run: ours show them only
    when drizzlepipe logs DEBUG (strun --verbose)."""
    from drizzlepipe.datamodels import ModelLibrary
    from drizzlepipe.steps import SkySubStep

    library = ModelLibrary([str(p) for p in small_simulation.flt_files[:2]])
    with caplog.at_level(logging.INFO):
        SkySubStep.call(library, configure_log=False)
    assert "parameters are" not in caplog.text and "finished in" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        SkySubStep.call(library, configure_log=False)
    assert "SkySubStep parameters are" in caplog.text
