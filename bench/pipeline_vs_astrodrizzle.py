"""Benchmark: the whole drizzlepipe pipeline against AstroDrizzle on full-frame WFC3/UVIS-like data.

What it does, in one run:

1. Simulates ``--exposures`` dithered WFC3/UVIS-like exposures (2 chips of ``--shape`` =
   2051 x 4096 by default) with :func:`drizzlepipe.simulator.simulate` (seed 0), once: with
   ``--reuse`` an existing simulation of the same size in ``<workdir>/data`` is used as it is.
2. Builds drizzlepipe's default output grid for these exposures and writes it to
   ``<workdir>/grid.fits`` (WCS and shape), which AstroDrizzle gets as ``driz_sep_refimage`` and
   ``final_refimage``: both drizzle onto the same grid (drizzlepipe keeps its default grid; the
   script checks afterwards that the two final products share shape and WCS).
3. Runs AstroDrizzle (drizzlepac, in ``--peer-python``) on copies of the exposures through
   ``_harness.run_astrodrizzle`` (offline: ``ASTROMETRY_STEP_CONTROL=OFF``, ``updatewcs=False``),
   and drizzlepipe's ``DrizzlePipeline`` in a fresh process of this interpreter. Both are
   timed around the pipeline call only (after imports) and both peak RSS values are measured the
   same way: the child's own ``ru_maxrss`` and the parent polling the child's process tree with
   the harness's sampler, whichever is larger (interpreter and imports included).
4. Prints per-step times side by side with their ratio (AstroDrizzle / ours), totals, peak RSS,
   the cosmic-ray recall and false-flag rate of each against the simulator's truth (scored by
   one function, :func:`score_cosmic_rays`), the agreement of the two final images, and the
   issue targets met or missed. Everything is also written to ``<workdir>/results.json``.

Equivalent parameters (:data:`PARAMETER_MAP`; every value is passed explicitly to both, and
drizzlepipe runs with ``preset='none'``, so that a parameter not passed has its built-in default,
AstroDrizzle's, not the value a preset chooses for the data; ``--ours-defaults`` runs drizzlepipe
as a user gets it instead, ``preset='auto'`` and nothing else set):

* sky: ``skymethod='globalmin+match'`` vs ``sky_sub.method='globalmin+match'`` by default
  (``--sky-method``). In ``.venv-peers`` stsci.skypac 1.0.12 calls
  ``SphericalPolygon.iter_polygons_flat``, which spherical-geometry 1.4 removed, so
  AstroDrizzle's ``match`` and ``globalmin+match`` crash inside skypac and silently fall back to
  ``localmin``. For the match methods this script therefore adds the missing method to the
  AstroDrizzle process (a ``sitecustomize`` module on its ``PYTHONPATH``, the same generator as
  ``bench/sky_match.py``), so the matching really runs there. ``globalmin`` alone is not a fair
  choice on these data: the simulated exposures have different skies (20-80 e-), so one
  global minimum leaves up to 50 e- of sky in the brighter exposures and both pipelines flag
  about half of their pixels as cosmic rays. ``localmin`` needs no patch.
* ``combine_maskpt`` 0.3 (AstroDrizzle's default; drizzlepipe's default is 0.7) for both.
* AstroDrizzle runs with ``in_memory=False`` (its default; ``--ad-in-memory``), ``num_cores=1``
  (as the issues' reference run; ``num_cores=2`` gave no speed-up here), ``build=True``,
  ``preserve=False`` (no backup copies of the inputs) and ``clean=False`` (its intermediates stay
  for inspection). drizzlepipe runs with its defaults (scheduler, memory mode and workers chosen
  by the pipeline, error propagation on; ``--scheduler`` and ``--ours-on-disk`` override them)
  and ``steps.blot_cr.save_crmask=True`` so
  that its cosmic-ray flags are written (``_crmask`` files, one byte a pixel, like
  AstroDrizzle's ``_crmask`` files); that write is part of its ``blot_cr`` time, as
  AstroDrizzle's writes are part of its blot and driz_cr times. AstroDrizzle writes more there
  (``_blt`` files, 4 bytes a pixel, which its on-disk mode needs, its ``_crmask`` files and
  the DQ of its input copies: ~470 MB against our 67 MB), so this default favours us in I/O.
  ``--ours-crf`` writes the ``_crf`` copies instead (``save_results``: every chip's SCI, ERR
  and DQ, 672 MB, what a user keeps to have CR-flagged exposures), which favours
  AstroDrizzle.
* Peak memory of a process tree is the sum of the processes' proportional set sizes (shared
  pages counted once, see ``_harness._tree_rss_bytes``), of a lone process its RSS.

Cosmic-ray scores (the same function for both): per chip, the *strong* cosmic-ray pixels are
those whose true deposit exceeds 5 sigma (the input ``ERR``) on pixels with ``DQ == 0`` in the
input; recall is the fraction of them flagged (DQ 4096). The *clean* pixels have no deposit, no
deposit among their 8 neighbours, ``DQ == 0`` in the input and lie farther than 10 px from any
saturated (DQ 256) pixel; the false-flag rate is the fraction of them flagged. AstroDrizzle's
flags are the DQ 4096 bits it writes into its input copies, ours those of the ``_crmask``
(or ``_crf``) files.

Repeats: this VM's speed moves by +-20% within minutes (once, our final's chips took 1.5x their
usual time while AstroDrizzle's final, run a minute earlier, took 1.1x its). ``--repeat N`` runs
both pipelines N times, alternating which goes first, prints each run's totals and per-step
ratios, and reports per-step medians (peak memory: the largest) in the tables and target
verdicts.

Usage::

    .venv/bin/python bench/pipeline_vs_astrodrizzle.py [--reuse] [--repeat 3] [--exposures 4] \\
        [--shape 2051 4096] [--workdir bench/output/pipeline] [--peer-python .venv-peers/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from _harness import (
    DEFAULT_PEER_PYTHON,
    REPO_ROOT,
    SKYPAC_PATCH,
    _RssSampler,
    cpu_model,
    drizzlepipe_step_windows,
    measure,
    peaks_in_windows,
    print_side_by_side,
    run_astrodrizzle,
)
from drizzlepipe.numpy_tuning import is_zen4, tuned_environment

CR_BIT = 4096
SATURATED_BIT = 256
STRONG_SIGMA = 5.0  # a cosmic ray counts for recall when its deposit exceeds this many ERR
SATURATION_MARGIN_PX = 10.0  # clean pixels lie farther than this from saturated pixels
SIGNAL_SIGMA = 5.0  # final-image agreement is measured where both exceed this many ERR
GIB = 1e9 / 2**20  # the "1 GB" RSS target of issue 7, in MiB (1e9 bytes)

#: AstroDrizzle parameter, its value, drizzlepipe parameter, its value. ``"{grid}"`` is the grid
#: file and ``"{sky}"`` the sky method chosen on the command line. AstroDrizzle's
#: ``driz_sep_wcs``/``final_wcs=True`` only enable its refimage parameters; drizzlepipe keeps its
#: default grid, which is the one written to the grid file.
PARAMETER_MAP = (
    ("static_sig", 4.0, "static_mask.sigma", 4.0),
    ("skymethod", "{sky}", "sky_sub.method", "{sky}"),
    ("skystat", "median", "sky_sub.stat", "median"),
    ("skyclip", 5, "sky_sub.nclip", 5),
    ("skylsigma", 4.0, "sky_sub.lsigma", 4.0),
    ("skyusigma", 4.0, "sky_sub.usigma", 4.0),
    ("skywidth", 0.1, "sky_sub.binwidth", 0.1),
    ("sky_bits", "0", "sky_sub.good_bits", "0"),
    ("use_static", True, "sky_sub.use_static", True),
    ("driz_sep_kernel", "turbo", "driz_separate.kernel", "turbo"),
    ("driz_sep_pixfrac", 1.0, "driz_separate.pixfrac", 1.0),
    ("driz_sep_fillval", None, "driz_separate.fillval", None),
    ("driz_sep_bits", "0", "driz_separate.good_bits", "0"),
    ("stepsize", 10, "driz_separate.stepsize", 10),
    ("driz_sep_wcs", True, None, None),
    ("driz_sep_refimage", "{grid}", None, None),
    ("combine_type", "minmed", "create_median.combine_type", "minmed"),
    ("combine_maskpt", 0.3, "create_median.maskpt", 0.3),
    ("combine_nsigma", "4 3", "create_median.nsigma", "4 3"),
    ("combine_nlow", 0, "create_median.nlow", 0),
    ("combine_nhigh", 0, "create_median.nhigh", 0),
    ("combine_grow", 1, "create_median.grow", 1),
    ("median_newmasks", True, "create_median.newmasks", True),
    ("blot_interp", "poly5", "blot_cr.interp", "poly5"),
    ("blot_sinscl", 1.0, "blot_cr.sinscl", 1.0),
    ("driz_cr_snr", "3.5 3.0", "blot_cr.snr", "3.5 3.0"),
    ("driz_cr_scale", "1.2 0.7", "blot_cr.scale", "1.2 0.7"),
    ("driz_cr_grow", 1, "blot_cr.grow", 1),
    ("driz_cr_ctegrow", 0, "blot_cr.ctegrow", 0),
    ("crbit", CR_BIT, "blot_cr.crbit", CR_BIT),
    ("final_wht_type", "EXP", "driz_final.weight_type", "exptime"),
    ("final_kernel", "square", "driz_final.kernel", "square"),
    ("final_pixfrac", 1.0, "driz_final.pixfrac", 1.0),
    ("final_bits", "0", "driz_final.good_bits", "0"),
    ("final_units", "cps", "driz_final.units", "cps"),
    ("context", True, "driz_final.context", True),
    ("final_wcs", True, None, None),
    ("final_refimage", "{grid}", None, None),
)

#: AstroDrizzle settings with no drizzlepipe counterpart (how it runs, not what it computes).
ASTRODRIZZLE_RUN_SETTINGS = {
    "output": "astrodrizzle",
    "build": True,
    "clean": False,
    "preserve": False,
    "restore": False,
    "overwrite": False,
}

#: Table rows: label, drizzlepipe step names summed, AstroDrizzle step keys summed.
TABLE_ROWS = (
    ("static_mask", ("static_mask",), ("static_mask",)),
    ("sky", ("sky_sub",), ("sky",)),
    ("driz_separate", ("driz_separate",), ("driz_separate",)),
    ("median", ("create_median",), ("median",)),
    ("blot+driz_cr", ("blot_cr",), ("blot", "driz_cr")),
    ("final", ("driz_final",), ("final",)),
)

_STEP_LINE = re.compile(r"Step (?P<name>\w+) finished in (?P<seconds>[0-9.]+) s")


def _fill(value, substitutions):
    return substitutions.get(value, value) if isinstance(value, str) else value


def astrodrizzle_parameters(grid_file, sky_method, num_cores, in_memory):
    """AstroDrizzle keyword arguments of the equivalent run (see :data:`PARAMETER_MAP`)."""
    substitutions = {"{grid}": str(grid_file), "{sky}": sky_method}
    pars = {ad: _fill(value, substitutions) for ad, value, _, _ in PARAMETER_MAP}
    return {**pars, **ASTRODRIZZLE_RUN_SETTINGS, "num_cores": num_cores, "in_memory": in_memory}


def drizzlepipe_step_parameters(sky_method, crf=False):
    """``steps`` argument of ``DrizzlePipeline.call`` for the equivalent run; the cosmic-ray
    flags go to ``_crmask`` files, or with ``crf`` to ``_crf`` copies of the exposures."""
    steps = {}
    for _, _, ours, value in PARAMETER_MAP:
        if ours is None:
            continue
        step, name = ours.split(".")
        steps.setdefault(step, {})[name] = _fill(value, {"{sky}": sky_method})
    # the files that carry our cosmic-ray flags (and the sky, MDRIZSKY)
    steps["blot_cr"]["save_results" if crf else "save_crmask"] = True
    return steps


def ours_parameters(args):
    """``steps`` and ``preset`` of our runs: AstroDrizzle's values (:data:`PARAMETER_MAP`,
    preset 'none'), or with ``--ours-defaults`` what a user gets (preset 'auto', only the
    files that carry the cosmic-ray flags asked for)."""
    if args.ours_defaults:
        flags = "save_results" if args.ours_crf else "save_crmask"
        return {"steps": {"blot_cr": {flags: True}}, "preset": "auto"}
    return {"steps": drizzlepipe_step_parameters(args.sky_method, crf=args.ours_crf),
            "preset": "none"}  # fmt: skip


def source_version():
    """The drizzlepipe commit measured, and whether ``src/`` differs from it (read-only git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "src_modified": None}
    return {"commit": commit, "src_modified": bool(changes)}


# --------------------------------------------------------------------------------------------
# Data and grid
# --------------------------------------------------------------------------------------------


def simulated_data(data_dir, exposures, shape, seed, reuse):
    """The simulation in ``data_dir``: reused when asked and of the same size, else written."""
    from drizzlepipe.simulator import read_simulation, simulate

    if reuse and (data_dir / "truth" / "simulation.json").exists():
        simulation = read_simulation(data_dir)
        parameters = simulation.parameters
        same = (
            parameters["exposures"] == exposures
            and tuple(parameters["shape"]) == tuple(shape)
            and parameters["chips"] == 2
            and parameters["seed"] == seed
            and all(path.exists() for path in simulation.flt_files + simulation.truth_files)
        )
        if same:
            print(f"Reusing the simulation in {data_dir}")
            return simulation
        print(f"The simulation in {data_dir} differs from the request: simulating again")
    print(f"Simulating {exposures} exposures of 2 chips of {shape[1]} x {shape[0]} in {data_dir}")
    start = time.perf_counter()
    simulation = simulate(
        data_dir,
        exposures=exposures,
        shape=tuple(shape),
        chips=2,
        seed=seed,
        write_models=False,
        overwrite=True,
    )
    print(f"  simulated in {time.perf_counter() - start:.1f} s")
    return simulation


def write_default_grid(flt_files, grid_file):
    """Write drizzlepipe's default output grid for ``flt_files`` as a FITS image (WCS + shape).

    The image holds uint8 zeros (AstroDrizzle reads only the header of a refimage; the array
    just gives NAXIS1/NAXIS2 their meaning). Returns the grid.
    """
    from drizzlepipe.datamodels import ModelLibrary
    from drizzlepipe.steps._drizzle_common import OutputGridMaker

    # on disk: one chip in memory at a time, whatever the number of exposures
    library = ModelLibrary([str(path) for path in flt_files], on_disk=True)
    grid = OutputGridMaker().make(library)
    header = grid.to_fits_header()
    fits.PrimaryHDU(data=np.zeros(grid.shape, np.uint8), header=header).writeto(
        grid_file, overwrite=True
    )
    return grid


# --------------------------------------------------------------------------------------------
# drizzlepipe in a fresh process
# --------------------------------------------------------------------------------------------


@dataclass
class OursRun:
    """What the drizzlepipe child process measured (seconds, MiB)."""

    total_s: float
    process_wall_s: float
    import_s: float
    step_s: dict
    peak_rss_mib: float
    baseline_rss_mib: float
    maxrss_mib: float
    polled_peak_rss_mib: float
    output_dir: str
    log_path: str
    step_peak_mib: dict = field(default_factory=dict)  # step name -> MiB (None: no sample)


def _ours_worker(spec_file, report_file):
    """Child process: run the pipeline once, timed and measured by ``_harness.measure``."""
    import logging

    import psutil

    spec = json.loads(Path(spec_file).read_text())
    handler = logging.FileHandler(spec["log"], mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    package_logger = logging.getLogger("drizzlepipe")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)

    start = time.perf_counter()
    from drizzlepipe.pipelines import DrizzlePipeline

    report = {"import_s": time.perf_counter() - start}
    report["baseline_rss_mib"] = psutil.Process().memory_info().rss / 2**20

    def call():
        # preset 'none': what the steps leave unset means AstroDrizzle's defaults, whatever
        # preset 'auto' would choose for the data (4 exposures: few_exposures)
        return DrizzlePipeline.call(
            spec["asn"],
            output_dir=spec["output_dir"],
            steps=spec["steps"],
            in_memory=spec["in_memory"],
            scheduler=spec["scheduler"],
            preset=spec.get("preset", "none"),
        )

    if spec.get("profile"):
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        measured = measure(profiler.runcall, call)
        profiler.dump_stats(spec["profile"])
        with open(spec["profile"] + ".txt", "w") as listing:
            pstats.Stats(profiler, stream=listing).sort_stats("cumulative").print_stats(60)
        report["call_s"] = measured.wall_s
        report["measured_peak_rss_mib"] = measured.peak_rss_mib
    else:
        # No sampler thread in this process, like AstroDrizzle's child: the parent samples the
        # process tree from outside, and ru_maxrss gives this process's exact peak.
        start = time.perf_counter()
        call()
        report["call_s"] = time.perf_counter() - start
        report["measured_peak_rss_mib"] = 0.0
    handler.flush()
    report["maxrss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(report_file).write_text(json.dumps(report))


def run_drizzlepipe(
    flt_files, workdir, sky_method, in_memory=None, profile=False, scheduler=None, steps=None,
    sample_interval=None, preset="none",
):  # fmt: skip
    """Run ``DrizzlePipeline`` on ``flt_files`` in a fresh process; products in ``workdir``.

    ``steps``: step parameters (default: :func:`drizzlepipe_step_parameters`); ``preset``: the
    pipeline's (``"none"``: what ``steps`` leaves unset has AstroDrizzle's default).
    ``sample_interval``: seconds between two memory samples of the process tree while it has
    worker processes (default: the harness's 2 s; finer sampling slows the run, see
    ``_harness._RssSampler``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.fits"):
        old.unlink()
    asn = workdir / "ours_asn.json"
    members = [{"expname": str(path), "exptype": "science"} for path in flt_files]
    asn.write_text(json.dumps({"products": [{"name": "ours", "members": members}]}, indent=1))
    spec = {
        "asn": str(asn),
        "output_dir": str(workdir),
        "steps": steps if steps is not None else drizzlepipe_step_parameters(sky_method),
        "in_memory": in_memory,
        "scheduler": scheduler,
        "preset": preset,
        "log": str(workdir / "pipeline.log"),
        "profile": str(workdir / "profile.pstats") if profile else None,
    }
    spec_file, report_file = workdir / "_call.json", workdir / "_report.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    report_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--ours-worker", str(spec_file), str(report_file)]
    start = time.perf_counter()
    with (workdir / "_stdout.txt").open("w") as console:
        child = subprocess.Popen(command, cwd=workdir, stdout=console, stderr=subprocess.STDOUT)
        with _RssSampler(child.pid, 0.02, include_children=True,
                         **({"interval_with_children": sample_interval}
                            if sample_interval else {})) as sampler:  # fmt: skip
            returncode = child.wait()
    process_wall_s = time.perf_counter() - start
    if returncode != 0 or not report_file.exists():
        tail = (workdir / "_stdout.txt").read_text()[-3000:]
        raise RuntimeError(f"drizzlepipe failed (exit {returncode}):\n{tail}")
    report = json.loads(report_file.read_text())
    log_text = Path(spec["log"]).read_text()
    step_s = {}
    for match in _STEP_LINE.finditer(log_text):
        step_s[match.group("name")] = float(match.group("seconds"))
    maxrss = max(report["maxrss_self_mib"], report["measured_peak_rss_mib"])
    return OursRun(
        total_s=report["call_s"],
        process_wall_s=process_wall_s,
        import_s=report["import_s"],
        step_s=step_s,
        peak_rss_mib=max(maxrss, sampler.peak_mib),
        baseline_rss_mib=report["baseline_rss_mib"],
        maxrss_mib=maxrss,
        polled_peak_rss_mib=sampler.peak_mib,
        output_dir=str(workdir),
        log_path=spec["log"],
        step_peak_mib=peaks_in_windows(sampler.series, drizzlepipe_step_windows(log_text)),
    )


# --------------------------------------------------------------------------------------------
# AstroDrizzle
# --------------------------------------------------------------------------------------------


def run_peer(flt_files, workdir, peer_python, pars, sky_method, timeout=None):
    """``_harness.run_astrodrizzle`` with the skypac patch on the path for matched skies
    (``timeout`` in seconds: ``subprocess.TimeoutExpired`` after killing it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.fits"):
        old.unlink()  # products of an earlier run would be taken for this run's
    saved_pythonpath = os.environ.get("PYTHONPATH")
    if "match" in sky_method:
        patch_dir = workdir / "_skypac_patch"
        patch_dir.mkdir(exist_ok=True)
        (patch_dir / "sitecustomize.py").write_text(SKYPAC_PATCH)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(patch_dir), saved_pythonpath]))
    try:
        return run_astrodrizzle(
            flt_files, workdir, peer_python=peer_python, timeout=timeout, **pars
        )
    finally:
        if saved_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_pythonpath


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


@dataclass
class CRScore:
    """Cosmic-ray detection scored against the truth (pixel counts summed over all chips)."""

    strong: int  # CR pixels with deposit > 5 ERR on clean DQ
    strong_found: int  # ... of them flagged
    clean: int  # pixels free of CR charge, away from deposits and saturation, DQ 0
    clean_flagged: int  # ... of them flagged
    flagged: int  # every flagged pixel

    @property
    def recall(self):
        return self.strong_found / max(self.strong, 1)

    @property
    def false_flag_rate(self):
        return self.clean_flagged / max(self.clean, 1)


def strong_and_clean(input_dq, err, deposit):
    """The scored pixels of one chip: *strong* cosmic-ray pixels (deposit > 5 ERR, DQ 0) and
    *clean* pixels (no deposit in the pixel or its 8 neighbours, DQ 0, farther than 10 px from
    saturation), as boolean masks."""
    input_dq = input_dq.astype(np.uint32)
    good_dq = input_dq == 0
    strong = (deposit > STRONG_SIGMA * err) & good_dq
    near_charge = ndimage.binary_dilation(deposit > 0, structure=np.ones((3, 3), bool))
    saturated = (input_dq & SATURATED_BIT) != 0
    far_from_saturation = (
        ndimage.distance_transform_edt(~saturated) > SATURATION_MARGIN_PX
        if saturated.any()
        else np.ones_like(saturated)
    )
    return strong, ~near_charge & good_dq & far_from_saturation


def score_cosmic_rays(simulation, flagged_dq):
    """Score the cosmic-ray flags of every chip against the simulator's truth.

    Parameters
    ----------
    simulation : SimulationResult
        The simulated set (its ``_flt`` files give the input DQ and ERR, its truth files the
        cosmic-ray deposit ``CRDEP`` in electrons).
    flagged_dq : callable
        ``flagged_dq(rootname, extver)`` -> the DQ array (any integer type) of that chip after
        the run; a pixel is flagged when it carries :data:`CR_BIT`.

    Returns
    -------
    CRScore
    """
    score = CRScore(0, 0, 0, 0, 0)
    for root, flt, truth in zip(simulation.rootnames, simulation.flt_files, simulation.truth_files):
        with fits.open(flt) as inputs, fits.open(truth) as truths:
            for extver in (1, 2):
                input_dq = inputs["DQ", extver].data.astype(np.uint32)
                err = inputs["ERR", extver].data
                deposit = truths["CRDEP", extver].data
                flagged = (flagged_dq(root, extver).astype(np.uint32) & CR_BIT) != 0
                strong, clean = strong_and_clean(input_dq, err, deposit)
                score.strong += int(np.count_nonzero(strong))
                score.strong_found += int(np.count_nonzero(strong & flagged))
                score.clean += int(np.count_nonzero(clean))
                score.clean_flagged += int(np.count_nonzero(clean & flagged))
                score.flagged += int(np.count_nonzero(flagged))
    return score


def ours_flag_file(ours_dir, root, extver):
    """Path and extension of the file that holds our flags and sky for a chip: the
    ``_crmask`` file (``CRMASK``, 1 = cosmic ray) or, when there is none, the ``_crf`` copy
    (``SCI`` with MDRIZSKY, ``DQ`` with the CR bit)."""
    crmask = ours_dir / f"{root}_crmask.fits"
    if crmask.exists():
        return crmask, ("CRMASK", extver)
    return ours_dir / f"{root}_crf.fits", ("SCI", extver)


def ours_flagged_dq(ours_dir, root, extver):
    """A DQ array with :data:`CR_BIT` where our run flagged a cosmic ray."""
    path, (extname, _) = ours_flag_file(ours_dir, root, extver)
    with fits.open(path) as hdul:
        if extname == "CRMASK":
            return (hdul[extname, extver].data != 0).astype(np.uint32) * np.uint32(CR_BIT)
        return hdul["DQ", extver].data


def sky_agreement(simulation, ours_dir, astrodrizzle_dir):
    """MDRIZSKY of every chip from both runs against the simulated sky (electrons per pixel).

    Ours is read from the ``_crmask`` files (or ``_crf`` copies), AstroDrizzle's from its input
    copies. Returns the largest |ours - AD| and the largest error of each against the truth,
    electrons.
    """
    ours, theirs, truth = [], [], []
    for root in simulation.rootnames:
        for extver in (1, 2):
            path, extension = ours_flag_file(ours_dir, root, extver)
            ours.append(fits.getval(path, "MDRIZSKY", ext=extension))
            theirs.append(
                fits.getval(astrodrizzle_dir / f"{root}_flt.fits", "MDRIZSKY", ext=("SCI", extver))
            )
            truth.append(simulation.sky[root])
    ours, theirs, truth = (np.asarray(values, float) for values in (ours, theirs, truth))
    return {
        "max_abs_diff_e": float(np.max(np.abs(ours - theirs))),
        "ours_max_abs_error_e": float(np.max(np.abs(ours - truth))),
        "astrodrizzle_max_abs_error_e": float(np.max(np.abs(theirs - truth))),
        "range_e": [float(truth.min()), float(truth.max())],
    }


def final_image_agreement(ours_file, astrodrizzle_file):
    """Median and 90th percentile of |ours - AD| / |AD| where both are well measured.

    Pixels count where both weights are positive, both values finite, and both exceed
    :data:`SIGNAL_SIGMA` times our propagated error (AstroDrizzle writes no error array).
    Also returns the ratio of the summed signal over those pixels.
    """
    with fits.open(ours_file) as ours, fits.open(astrodrizzle_file) as theirs:
        our_sci, our_wht = ours["SCI"].data, ours["WHT"].data
        our_err = ours["ERR"].data
        their_sci, their_wht = theirs["SCI"].data, theirs["WHT"].data
        our_wcs, their_wcs = WCS(ours["SCI"].header), WCS(theirs["SCI"].header)
        same_grid = our_sci.shape == their_sci.shape and np.allclose(
            our_wcs.wcs_pix2world([[0, 0], [our_sci.shape[1], our_sci.shape[0]]], 0),
            their_wcs.wcs_pix2world([[0, 0], [our_sci.shape[1], our_sci.shape[0]]], 0),
            rtol=0,
            atol=1e-4 / 3600,  # 0.1 mas: the same grid up to header rounding
        )
        with np.errstate(invalid="ignore"):
            signal = (
                (our_wht > 0)
                & (their_wht > 0)
                & np.isfinite(our_sci)
                & np.isfinite(their_sci)
                & (our_sci > SIGNAL_SIGMA * our_err)
                & (their_sci > SIGNAL_SIGMA * our_err)
            )
        relative = np.abs(our_sci[signal] - their_sci[signal]) / np.abs(their_sci[signal])
        flux_ratio = float(np.sum(our_sci[signal], dtype=np.float64)) / float(
            np.sum(their_sci[signal], dtype=np.float64)
        )
    return {
        "same_grid": bool(same_grid),
        "pixels": int(np.count_nonzero(signal)),
        "median_abs_rel_diff": float(np.median(relative)) if relative.size else float("nan"),
        "p90_abs_rel_diff": float(np.percentile(relative, 90)) if relative.size else float("nan"),
        "flux_ratio": flux_ratio,
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _sum(times, names):
    values = [times.get(name) for name in names]
    return None if any(v is None for v in values) else float(sum(values))


def _verdict(ok):
    return "met" if ok else "MISSED"


def median_run(runs):
    """The last of ``runs`` with every time replaced by its median over the runs (each step
    on its own) and the peak memory by the largest."""
    steps = {name for run in runs for name in run.step_s}
    step_s = {
        name: statistics.median(run.step_s[name] for run in runs if name in run.step_s)
        for name in steps
    }
    step_peaks = {}
    for run in runs:
        for name, peak in run.step_peak_mib.items():
            if peak is not None:
                step_peaks[name] = max(peak, step_peaks.get(name) or 0.0)
    return replace(
        runs[-1],
        total_s=statistics.median(run.total_s for run in runs),
        process_wall_s=statistics.median(run.process_wall_s for run in runs),
        step_s=step_s,
        peak_rss_mib=max(run.peak_rss_mib for run in runs),
        step_peak_mib=step_peaks,
    )


#: Per-run ratios printed with --repeat: label, our steps, AstroDrizzle's steps, target ratio.
REPEAT_COLUMNS = (
    ("driz_separate", ("driz_separate",), ("driz_separate",), 2.0),
    ("blot_cr", ("blot_cr",), ("blot", "driz_cr"), 3.0),
    ("final", ("driz_final",), ("final",), 2.0),
)


def print_repeats(pairs):
    """One line per repeat: order, totals and the per-step ratios the issues set targets for."""
    print(f"\n{len(pairs)} runs of each (AD/ours; the report below uses per-step medians):")
    header = f"{'run':<5}{'first':<15}{'ours s':>8}{'AD s':>8}{'total':>8}"
    print(header + "".join(f"{label:>15}" for label, *_ in REPEAT_COLUMNS))
    for number, (ours_first, ours, peer) in enumerate(pairs, start=1):
        cells = []
        for _, ours_names, ad_names, target in REPEAT_COLUMNS:
            ratio = _sum(peer.step_s, ad_names) / _sum(ours.step_s, ours_names)
            cells.append(f"{ratio:>13.2f}{'' if ratio >= target else ' !':<2}")
        first = "drizzlepipe" if ours_first else "AstroDrizzle"
        print(
            f"{number:<5}{first:<15}{ours.total_s:>8.2f}{peer.total_s:>8.2f}"
            f"{peer.total_s / ours.total_s:>8.2f}" + "".join(cells)
        )
    print("('!': below the issue's ratio in that run)")


def _largest(peaks, names):
    values = [peaks.get(name) for name in names if peaks.get(name) is not None]
    return max(values) if values else None


def print_step_memory(ours, peer):
    """Peak memory within each step (largest sample in the step's window of the log)."""
    rows = [(label, _largest(ours.step_peak_mib, ours_names), _largest(peer.step_peak_mib, ad))
            for label, ours_names, ad in TABLE_ROWS]  # fmt: skip
    print()
    print_side_by_side(
        rows,
        title="Peak memory within each step, MiB (largest sample in the step's window; our tree "
        "every 2 s while workers run unless --step-memory gave a finer run, AstroDrizzle every "
        "0.02 s; '-': no sample in the window). The ratio column is AD/ours.",
        unit="MiB",
    )


def print_report(ours, peer, scores, agreement, skies, sky_method, grid):
    rows = [
        (label, _sum(ours.step_s, ours_names), _sum(peer.step_s, ad_names))
        for label, ours_names, ad_names in TABLE_ROWS
    ]
    ours_other = ours.total_s - sum(v for _, v, _ in rows if v is not None)
    peer_other = peer.total_s - sum(v for _, _, v in rows if v is not None)
    rows.append(("init/other", ours_other, peer_other))
    rows.append(("total (call)", ours.total_s, peer.total_s))
    rows.append(("process wall", ours.process_wall_s, peer.process_wall_s))
    print()
    print_side_by_side(
        rows,
        peak_rss_mib=(ours.peak_rss_mib, peer.peak_rss_mib),
        title=(
            f"Per-step wall time, grid {grid.shape[1]} x {grid.shape[0]}, sky method {sky_method}"
            " (AstroDrizzle: blot + driz_cr vs our blot_cr; 'init/other' = call total minus"
            " steps; 'process wall' adds interpreter start and imports)"
        ),
    )
    print(
        f"AstroDrizzle blot {peer.step_s['blot']:.2f} s + driz_cr {peer.step_s['driz_cr']:.2f} s;"
        f" initialization {peer.step_s.get('initialization', float('nan')):.2f} s"
    )
    print_step_memory(ours, peer)
    print(
        f"peak RSS drizzlepipe {ours.peak_rss_mib:.0f} MiB (after imports "
        f"{ours.baseline_rss_mib:.0f}), AstroDrizzle {peer.peak_rss_mib:.0f} MiB (after imports"
        f" {peer.baseline_rss_mib:.0f})"
    )
    print()
    print(f"{'cosmic rays vs truth':<24}{'drizzlepipe':>16}{'AstroDrizzle':>16}")
    ours_score, peer_score = scores["drizzlepipe"], scores["astrodrizzle"]
    print(
        f"{'recall (> 5 sigma)':<24}{ours_score.recall:>16.4f}{peer_score.recall:>16.4f}"
        f"   of {ours_score.strong} strong CR pixels"
    )
    print(
        f"{'false-flag rate':<24}{ours_score.false_flag_rate:>16.2e}"
        f"{peer_score.false_flag_rate:>16.2e}   of {ours_score.clean} clean pixels"
    )
    print(f"{'flagged pixels':<24}{ours_score.flagged:>16d}{peer_score.flagged:>16d}")
    print()
    print(
        f"final images: same grid {agreement['same_grid']}; over {agreement['pixels']} pixels "
        f"above {SIGNAL_SIGMA:g} sigma in both: median |ours-AD|/AD "
        f"{agreement['median_abs_rel_diff']:.2e}, 90th percentile "
        f"{agreement['p90_abs_rel_diff']:.2e}, summed-signal ratio ours/AD "
        f"{agreement['flux_ratio']:.5f}"
    )
    print(
        f"sky ({sky_method}, truth {skies['range_e'][0]:.1f}-{skies['range_e'][1]:.1f} e-): "
        f"max |ours-AD| {skies['max_abs_diff_e']:.3f} e-; max error vs truth: ours "
        f"{skies['ours_max_abs_error_e']:.3f} e-, AD {skies['astrodrizzle_max_abs_error_e']:.3f} e-"
    )
    print()
    print("Targets (issues 3, 4, 6, 7, 17):")
    static_sky = (_sum(ours.step_s, ("static_mask", "sky_sub")),
                  _sum(peer.step_s, ("static_mask", "sky")))  # fmt: skip
    checks = [
        ("final <= 1/2 AD final", ours.step_s["driz_final"], peer.step_s["final"], 0.5),
        ("driz_separate <= 1/2 AD", ours.step_s["driz_separate"], peer.step_s["driz_separate"],
         0.5),
        ("static+sky <= 1/3 AD", *static_sky, 1 / 3),
        ("blot_cr <= 1/3 AD blot+driz_cr", ours.step_s["blot_cr"],
         peer.step_s["blot"] + peer.step_s["driz_cr"], 1 / 3),
        ("total <= 1/3 AD total", ours.total_s, peer.total_s, 1 / 3),
    ]  # fmt: skip
    for label, mine, theirs, fraction in checks:
        print(
            f"  {label:<34} {mine:7.2f} s vs limit {fraction * theirs:6.2f} s "
            f"(AD {theirs:.2f} s, ratio {theirs / mine:.2f}x): "
            f"{_verdict(mine <= fraction * theirs)}"
        )
    print(
        f"  {'peak RSS <= 1 GB (953.7 MiB)':<34} {ours.peak_rss_mib:7.0f} MiB: "
        f"{_verdict(ours.peak_rss_mib <= GIB)}"
    )
    print(
        f"  {'peak <= AD peak (issue 17)':<34} {ours.peak_rss_mib:7.0f} MiB vs "
        f"{peer.peak_rss_mib:.0f} MiB ({ours.peak_rss_mib / peer.peak_rss_mib:.2f}x): "
        f"{_verdict(ours.peak_rss_mib <= peer.peak_rss_mib)}"
    )
    print(
        f"  {'CR recall >= AD':<34} {ours_score.recall:.4f} vs {peer_score.recall:.4f}: "
        f"{_verdict(ours_score.recall >= peer_score.recall)}"
    )
    print(
        f"  {'CR false-flag rate <= AD':<34} {ours_score.false_flag_rate:.2e} vs "
        f"{peer_score.false_flag_rate:.2e}: "
        f"{_verdict(ours_score.false_flag_rate <= peer_score.false_flag_rate)}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=os.path.relpath(DEFAULT_PEER_PYTHON))
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench/output/pipeline")
    parser.add_argument("--exposures", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=2, default=(2051, 4096), metavar=("NY", "NX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="reuse the simulated data")
    parser.add_argument(
        "--sky-method",
        default="globalmin+match",
        choices=("localmin", "globalmin", "match", "globalmin+match"),
        help="sky method of both (match methods patch skypac in the AstroDrizzle process)",
    )
    parser.add_argument("--ad-num-cores", type=int, default=1)
    parser.add_argument("--ad-in-memory", action="store_true", help="AstroDrizzle in_memory=True")
    parser.add_argument(
        "--ours-on-disk", action="store_true",
        help="drizzlepipe in_memory=False (default: the pipeline's own choice)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true", help="run drizzlepipe under cProfile (slower)"
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="drizzlepipe's scheduler (default: the pipeline's own, auto)",
    )
    parser.add_argument(
        "--ours-first", action="store_true", help="run drizzlepipe before AstroDrizzle"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run both pipelines this many times, alternating which goes first, and report "
        "per-step medians (this VM's speed moves by +-20%% within minutes)",
    )
    parser.add_argument(
        "--ours-crf",
        action="store_true",
        help="drizzlepipe writes _crf copies of the exposures (default: _crmask files)",
    )
    parser.add_argument(
        "--numpy-avx2",
        action="store_true",
        help="start both pipelines with NumPy's AVX2 sort on AMD Zen 4, as drizzlepipe advises "
        "there (default: NumPy's default, what `strun` gets; see drizzlepipe.numpy_tuning)",
    )
    parser.add_argument(
        "--step-memory",
        action="store_true",
        help="run drizzlepipe once more with its process tree sampled every 0.05 s for the "
        "per-step memory table (that run's times are not used: fine sampling slows it)",
    )
    parser.add_argument(
        "--ours-defaults",
        action="store_true",
        help="drizzlepipe with its own defaults (preset auto: for 4 exposures few_exposures, "
        "sky globalmin+match, square singles, cosmic-ray snr '5.0 2.0') instead of "
        "AstroDrizzle's parameter values",
    )
    parser.add_argument("--ours-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ours_worker:
        _ours_worker(*args.ours_worker)
        return 0

    # abspath, not resolve: resolving would follow the venv's python symlink out of the venv
    peer_python = os.path.abspath(args.peer_python)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    version = source_version()
    print(
        f"drizzlepipe commit {version['commit']}"
        f"{' with uncommitted changes in src/' if version['src_modified'] else ''}; "
        f"{cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    if args.numpy_avx2:
        # both children inherit this process's environment
        os.environ.update(tuned_environment())
    print(
        "NumPy CPU features of both pipelines: NPY_DISABLE_CPU_FEATURES="
        f"{os.environ.get('NPY_DISABLE_CPU_FEATURES') or '(unset)'}"
        f"{' (AMD Zen 4)' if is_zen4() else ''}"
    )
    simulation = simulated_data(workdir / "data", args.exposures, args.shape, args.seed, args.reuse)
    grid_file = workdir / "grid.fits"
    grid = write_default_grid(simulation.flt_files, grid_file)
    print(f"Output grid {grid.shape[1]} x {grid.shape[0]} written to {grid_file}")

    pars = astrodrizzle_parameters(grid_file, args.sky_method, args.ad_num_cores, args.ad_in_memory)

    def astrodrizzle():
        print(f"Running AstroDrizzle ({peer_python}) ...", flush=True)
        run = run_peer(
            simulation.flt_files, workdir / "astrodrizzle", peer_python, pars, args.sky_method
        )
        print(f"  AstroDrizzle call {run.total_s:.1f} s, peak RSS {run.peak_rss_mib:.0f} MiB")
        if "match" in args.sky_method and "iter_polygons_flat" in run.log_path.read_text():
            print("  WARNING: AstroDrizzle's sky matching failed (see its log)")
        return run

    def drizzlepipe():
        print("Running drizzlepipe ...", flush=True)
        run = run_drizzlepipe(
            simulation.flt_files,
            workdir / "drizzlepipe",
            args.sky_method,
            in_memory=False if args.ours_on_disk else None,
            profile=args.profile,
            scheduler=args.scheduler,
            **ours_parameters(args),
        )
        print(f"  drizzlepipe call {run.total_s:.1f} s, peak RSS {run.peak_rss_mib:.0f} MiB")
        if args.profile:
            print(f"  profile: {workdir / 'drizzlepipe' / 'profile.pstats.txt'} (times inflated)")
        return run

    # Which runs first matters on a VM whose fresh memory pages are slow: the second run
    # gets pages the first one just gave back (--ours-first swaps the order; repeats
    # alternate it).
    pairs = []
    for repeat in range(max(1, args.repeat)):
        ours_first = args.ours_first != (repeat % 2 == 1)
        if ours_first:
            ours, peer = drizzlepipe(), astrodrizzle()
        else:
            peer, ours = astrodrizzle(), drizzlepipe()
        pairs.append((ours_first, ours, peer))
    if len(pairs) > 1:
        print_repeats(pairs)
        ours, peer = median_run([o for _, o, _ in pairs]), median_run([p for _, _, p in pairs])
    if args.step_memory:
        print("Running drizzlepipe once more, sampled every 0.05 s, for the per-step memory ...")
        finely = run_drizzlepipe(
            simulation.flt_files, workdir / "drizzlepipe_memory", args.sky_method,
            in_memory=False if args.ours_on_disk else None, scheduler=args.scheduler,
            sample_interval=0.05, **ours_parameters(args),
        )  # fmt: skip
        # the timed runs sample the tree every 2 s while workers run and can miss the peak
        # (the singles and the median's start, ~10% above what they see): the fine run's counts
        ours = replace(ours, step_peak_mib=finely.step_peak_mib,
                       peak_rss_mib=max(ours.peak_rss_mib, finely.peak_rss_mib))  # fmt: skip
        print(f"  its peak {finely.peak_rss_mib:.0f} MiB")

    ours_dir = Path(ours.output_dir)

    def ours_dq(root, extver):
        return ours_flagged_dq(ours_dir, root, extver)

    def peer_dq(root, extver):
        with fits.open(peer.workdir / f"{root}_flt.fits") as copy:
            return copy["DQ", extver].data

    scores = {
        "drizzlepipe": score_cosmic_rays(simulation, ours_dq),
        "astrodrizzle": score_cosmic_rays(simulation, peer_dq),
    }
    agreement = final_image_agreement(ours_dir / "ours_drz.fits", peer.product)
    skies = sky_agreement(simulation, ours_dir, peer.workdir)
    print_report(ours, peer, scores, agreement, skies, args.sky_method, grid)

    results = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "drizzlepipe_version": version,
        "data": {
            "exposures": args.exposures,
            "chip_shape": list(args.shape),
            "seed": args.seed,
            "grid_shape": list(grid.shape),
        },
        "sky_method": args.sky_method,
        "drizzlepipe_in_memory": False if args.ours_on_disk else "default",
        "drizzlepipe_scheduler": args.scheduler or "default",
        "order": "drizzlepipe first" if args.ours_first else "AstroDrizzle first",
        "repeats": [
            {
                "order": "drizzlepipe first" if first else "AstroDrizzle first",
                "drizzlepipe": {"total_s": o.total_s, "step_s": o.step_s},
                "astrodrizzle": {"total_s": p.total_s, "step_s": p.step_s},
            }
            for first, o, p in pairs
        ],
        "astrodrizzle_parameters": pars,
        "drizzlepipe_steps": ours_parameters(args)["steps"],
        "drizzlepipe_preset": ours_parameters(args)["preset"],
        "drizzlepipe": asdict(ours),
        "astrodrizzle": {
            "total_s": peer.total_s,
            "process_wall_s": peer.process_wall_s,
            "step_s": peer.step_s,
            "step_status": peer.step_status,
            "peak_rss_mib": peer.peak_rss_mib,
            "baseline_rss_mib": peer.baseline_rss_mib,
        },
        "cosmic_rays": {
            name: {
                **asdict(score),
                "recall": score.recall,
                "false_flag_rate": score.false_flag_rate,
            }
            for name, score in scores.items()
        },
        "final_agreement": agreement,
        "sky_agreement": skies,
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nResults in {workdir / 'results.json'}; bench finished in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
