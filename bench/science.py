"""Cosmic-ray science of drizzlepipe and AstroDrizzle on simulated sets with truth (issue 19).

For every case (number of exposures x PSF FWHM x field density) one simulated data set is
written, with its truth (cosmic-ray deposits, star positions and fluxes), and both pipelines run
on it with their own defaults, as a user gets them: AstroDrizzle's defaults
(``pipeline_vs_astrodrizzle.PARAMETER_MAP``), and for drizzlepipe the preset that
``preset='auto'`` chooses for the inputs (``drizzlepipe.presets``), the rest built-in defaults.
Both use the same sky method (``globalmin+match``) and output grid. Their cosmic-ray detection is
then repeated over a sweep of its thresholds:

* **AstroDrizzle**: its own ``drizCR.rundrizCR`` is called once per sweep point inside its run,
  after its blot step, on its own median and blotted images (a ``sitecustomize`` module wraps
  ``rundrizCR``; the steps before it do not depend on ``driz_cr_snr``/``driz_cr_scale``, so this
  equals a full run per point, and the last call, at the parameters of the run, feeds its final
  drizzle). The masks are read from its ``_crmask`` files after each call.
* **drizzlepipe**: StaticMask, SkySub, DrizSeparate and CreateMedian run once, then BlotCR once
  per sweep point on the same library and median (a step is repeatable: a second call equals a
  call on fresh inputs, tests/test_repeatable_steps.py), then DrizFinal at the run's parameters.

The sweep (:func:`sweep_points`) multiplies both values of ``snr`` (``driz_cr_snr``, default
``"3.5 3.0"``) by the factors :data:`SNR_FACTORS`, and pairs the first passes
:data:`SEED_SNRS` with the lower second passes :data:`GROWTH_SNRS`, for each ``scale``
(``driz_cr_scale``) of :data:`SCALES`.

Scores (the same functions for both pipelines), summed over the chips of a case:

* **recall**: the fraction of *strong* cosmic-ray pixels (true deposit > 5 ERR, input DQ 0)
  flagged;
* **false-flag rate**: the fraction of *clean* pixels flagged (no deposit in the pixel or its 8
  neighbours, input DQ 0, farther than 10 px from saturation; see
  ``pipeline_vs_astrodrizzle.score_cosmic_rays``);
* **star flags**: the fraction of clean pixels within 2 px of an unsaturated star's centre
  (``truth/placements.ecsv``) flagged; a subset of the false flags, where they cost photometry;
* **photometry** (at the run's parameters only): the flux of isolated, unsaturated stars seen in
  every exposure, in a circular aperture of radius ``max(4 FWHM, 4)`` output pixels minus the
  median of an annulus, on each final image, against the true flux: the bias is the median of
  ``measured / true - 1``, the scatter 1.4826 x the MAD of it.

Standings (:func:`standing`): a point of ours stands *above* AstroDrizzle's default point when
its recall is at least AstroDrizzle's with no more false flags, better in one of the two; *tie*
when within counting noise of that (two binomial sigmas of the recall, two Poisson sigmas of the
false-flag count); else *below*. Each case reports the best standing of our sweep ("curve") and
that of our default point, "our recall at AD's false-flag rate" (the best recall among our points
with no more false flags) and "our false-flag rate at AD's recall"; the star flags of our
default point must be no more than AstroDrizzle's. The candidates table gives every sweep
point's standings over the cases of each preset: how the defaults were picked.

Outputs in ``--workdir`` (default ``bench/output/science``): one data set and ``results.json``
per case (``--reuse`` skips the cases already scored), ``science.json`` with everything,
``roc.png`` (one panel per case), and ``science_tables.md`` with the tables the docs page
``docs/science.md`` shows. ``--docs`` also copies the figure to ``docs/science/roc.png`` and the
tables into that page (between its ``science-tables`` markers).

Usage::

    .venv/bin/python bench/science.py [--reuse] [--quick] [--docs] \\
        [--peer-python .venv-peers/bin/python]

The full set (18 cases of 1024 x 1024 one-chip exposures) takes about 40 minutes on 2 cores;
``--quick`` runs 2 cases for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from _harness import DEFAULT_PEER_PYTHON, REPO_ROOT, SKYPAC_PATCH, cpu_model, run_astrodrizzle
from drizzlepipe.algorithms.blotcr import unpack_mask
from pipeline_vs_astrodrizzle import (
    CR_BIT,
    astrodrizzle_parameters,
    strong_and_clean,
    write_default_grid,
)

#: Both values of ``snr`` are multiplied by these factors (1.0: the run's own ``"3.5 3.0"``).
SNR_FACTORS = (0.7, 0.8, 0.9, 1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.45, 1.65, 2.0, 2.5)
#: First-pass ``snr`` values combined with the lower second passes of :data:`GROWTH_SNRS`: the
#: second pass only searches the neighbours of first-pass detections, so it can go lower.
SEED_SNRS = (3.5, 4.0, 4.5, 5.0)
GROWTH_SNRS = (2.0, 2.5)
#: ``scale`` values swept (AstroDrizzle's default first; HAP's few-exposure value; the
#: undersampled preset's).
SCALES = ("1.2 0.7", "1.5 1.2", "3.0 2.4")
DEFAULT_SNR = (3.5, 3.0)
DEFAULT_SCALE = SCALES[0]
SKY_METHOD = "globalmin+match"
STAR_RADIUS_PX = 2.0  # star pixels: within this distance of a star's centre
SHAPE = (1024, 1024)
EXPTIME = 500.0

#: Field densities: stars and galaxies per 1024 x 1024 chip.
FIELDS = {"sparse": (60, 20), "crowded": (1500, 250)}
EXPOSURES = (2, 4, 8)
FWHMS = (1.0, 1.5, 2.5)


@dataclass(frozen=True)
class Case:
    exposures: int
    fwhm: float
    field: str

    @property
    def name(self):
        return f"n{self.exposures}_fwhm{self.fwhm:g}_{self.field}"

    @property
    def seed(self):
        # a different sky/cosmic-ray draw per case, the same every time the bench runs
        return (
            1000
            + 100 * EXPOSURES.index(self.exposures)
            + 10 * FWHMS.index(self.fwhm)
            + (list(FIELDS).index(self.field))
        )


def sweep_points():
    """(snr, scale) strings of the sweep, AstroDrizzle's default point included: both ``snr``
    values scaled together (:data:`SNR_FACTORS`), then first passes :data:`SEED_SNRS` with the
    lower second passes :data:`GROWTH_SNRS`, for each of :data:`SCALES`."""
    points = []
    for scale in SCALES:
        for factor in SNR_FACTORS:
            snr = f"{DEFAULT_SNR[0] * factor:.4g} {DEFAULT_SNR[1] * factor:.4g}"
            points.append((snr, scale))
        for first in SEED_SNRS:
            for second in GROWTH_SNRS:
                points.append((f"{first:.4g} {second:.4g}", scale))
    return points


def family(point):
    """The curve a sweep point belongs to: ``"scaled"`` (both ``snr`` values scaled together)
    or ``"second pass <snr2>"``."""
    first, second = map(float, point[0].split())
    if abs(second / first - DEFAULT_SNR[1] / DEFAULT_SNR[0]) < 1e-3:
        return "scaled"
    return f"second pass {second:g}"


def default_index(points):
    default = (f"{DEFAULT_SNR[0]:.4g} {DEFAULT_SNR[1]:.4g}", DEFAULT_SCALE)
    return points.index(default)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def simulate_case(case, data_dir):
    """The case's simulated exposures (written once; reused when complete)."""
    from drizzlepipe.simulator import read_simulation, simulate

    if (data_dir / "truth" / "simulation.json").exists():
        simulation = read_simulation(data_dir)
        if all(path.exists() for path in simulation.flt_files + simulation.truth_files):
            return simulation
    n_stars, n_galaxies = FIELDS[case.field]
    return simulate(
        data_dir,
        exposures=case.exposures,
        shape=SHAPE,
        chips=1,
        seed=case.seed,
        exptime=EXPTIME,
        psf_fwhm=case.fwhm,
        n_stars=n_stars,
        n_galaxies=n_galaxies,
        write_models=False,
        overwrite=True,
    )


# --------------------------------------------------------------------------------------------
# AstroDrizzle with its driz_cr swept
# --------------------------------------------------------------------------------------------

#: Run in AstroDrizzle's process (``sitecustomize``): wraps ``drizCR.rundrizCR`` so that each
#: call first runs AstroDrizzle's own driz_cr at every sweep point and saves its masks
#: (CR = ``_crmask`` value 0), then runs it at the run's own parameters for the final drizzle.
SWEEP_PATCH = r"""
import json as _json
import os as _os

import numpy as _np
from astropy.io import fits as _fits
from drizzlepac import drizCR as _drizCR
from drizzlepac import util as _util

_original_rundrizCR = _drizCR.rundrizCR


def _swept_rundrizCR(imgObjList, configObj, procSteps=None):
    spec = _json.load(open(_os.environ["DRIZZLEPIPE_CR_SWEEP"]))
    section = configObj[_util.getSectionName(configObj, _drizCR.STEP_NUM)]
    own = (section["driz_cr_snr"], section["driz_cr_scale"])
    masks = {}
    for index, (snr, scale) in enumerate(spec["points"]):
        section["driz_cr_snr"], section["driz_cr_scale"] = snr, scale
        _original_rundrizCR(imgObjList, configObj)
        for image in imgObjList:
            for chip in range(1, image._numchips + 1):
                sci_chip = image[image.scienceExt + "," + str(chip)]
                if not sci_chip.group_member:
                    continue
                good = _fits.getdata(sci_chip.outputNames["crmaskImage"])
                key = "%d:%s:%d" % (index, image._rootname, chip)
                masks[key] = _np.packbits(good == 0, axis=None)
                masks[key + ":shape"] = _np.array(good.shape)
    _np.savez_compressed(spec["output"], **masks)
    section["driz_cr_snr"], section["driz_cr_scale"] = own
    return _original_rundrizCR(imgObjList, configObj, procSteps=procSteps)


_drizCR.rundrizCR = _swept_rundrizCR
"""


def run_astrodrizzle_sweep(simulation, grid_file, workdir, points, peer_python):
    """AstroDrizzle's run at its defaults, its driz_cr repeated at every sweep point.

    Returns ``masks[point][(rootname, chip)]`` (True = cosmic ray) and the path of its drz."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.fits"):
        old.unlink()
    patch_dir = workdir / "_patch"
    patch_dir.mkdir(exist_ok=True)
    (patch_dir / "sitecustomize.py").write_text(SKYPAC_PATCH + "\n" + SWEEP_PATCH)
    spec_file = workdir / "_sweep.json"
    output = workdir / "_sweep_masks.npz"
    spec_file.write_text(json.dumps({"points": points, "output": str(output)}))
    pars = astrodrizzle_parameters(grid_file, SKY_METHOD, num_cores=1, in_memory=False)
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "DRIZZLEPIPE_CR_SWEEP")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(patch_dir), saved["PYTHONPATH"]]))
    os.environ["DRIZZLEPIPE_CR_SWEEP"] = str(spec_file)
    try:
        run = run_astrodrizzle(simulation.flt_files, workdir, peer_python=peer_python, **pars)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    masks = [dict() for _ in points]
    with np.load(output) as stored:
        for key in stored.files:
            if key.endswith(":shape"):
                continue
            index, root, chip = key.split(":")
            shape = tuple(stored[key + ":shape"])
            masks[int(index)][(root, int(chip))] = unpack_mask(stored[key], shape)
    return masks, run.product


# --------------------------------------------------------------------------------------------
# drizzlepipe with its BlotCR swept
# --------------------------------------------------------------------------------------------


def drizzlepipe_parameters(simulation):
    """Our parameters for a case: what ``preset='auto'`` chooses for these inputs, with the sky
    method of both pipelines. Returns the preset's name and ``{step: {parameter: value}}``."""
    from drizzlepipe import presets
    from drizzlepipe.datamodels import ModelLibrary
    from drizzlepipe.pipelines import DrizzlePipeline

    library = ModelLibrary([str(path) for path in simulation.flt_files])
    name = presets.choose(presets.Inputs.of(library)).preset
    steps = {step: {} for step in DrizzlePipeline.step_defs}
    if name != presets.NONE:
        for step in steps:
            steps[step].update(presets.PRESETS[name].values(step))
    steps["sky_sub"]["method"] = SKY_METHOD
    return name, steps


def run_drizzlepipe_sweep(simulation, points, steps):
    """drizzlepipe's steps with ``steps``' parameters, BlotCR repeated at every sweep point and
    then at ``steps``' own thresholds (its default point), which feed the final drizzle.

    Returns the masks of every point (``masks[point][(rootname, chip)]``), those of the default
    point and the final model."""
    from drizzlepipe.datamodels import ModelLibrary
    from drizzlepipe.steps import (
        BlotCRStep,
        CreateMedianStep,
        DrizFinalStep,
        DrizSeparateStep,
        SkySubStep,
        StaticMaskStep,
    )

    def call(step, *args, **extra):
        return step.call(*args, configure_log=False, **{**steps[step.class_alias], **extra})

    library = ModelLibrary([str(path) for path in simulation.flt_files])
    call(StaticMaskStep, library)
    call(SkySubStep, library)
    singles = call(DrizSeparateStep, library)
    median = call(CreateMedianStep, singles)
    del singles
    masks = []
    for snr, scale in points:
        call(BlotCRStep, library, median, snr=snr, scale=scale)
        masks.append(_library_flags(library))
    call(BlotCRStep, library, median)  # the default point
    default_masks = _library_flags(library)
    return masks, default_masks, call(DrizFinalStep, library)


def _library_flags(library):
    """``{(rootname, chip): CR mask}`` of every chip in the library."""
    flags = {}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            root = Path(model.meta.filename).name.split("_")[0]
            flags[(root, int(model.meta.chip or 1))] = (np.asarray(model.dq) & CR_BIT) != 0
            library.shelve(model, index, modify=False)
    return flags


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


@dataclass
class ChipTruth:
    """What the scores need of one chip: pixel classes from the truth."""

    strong: np.ndarray  # strong cosmic-ray pixels (deposit > 5 ERR, DQ 0)
    clean: np.ndarray  # clean pixels (no charge nearby, DQ 0, away from saturation)
    star: np.ndarray  # clean pixels within STAR_RADIUS_PX of an unsaturated star


def chip_truths(simulation):
    """``{(rootname, chip): ChipTruth}`` of every simulated chip."""
    placements = Table.read(simulation.placements_file)
    catalog = Table.read(simulation.catalog_file)
    stars = set(catalog["id"][catalog["type"] == "star"])
    truths = {}
    for root, flt, truth in zip(simulation.rootnames, simulation.flt_files, simulation.truth_files):
        with fits.open(flt) as inputs, fits.open(truth) as truth_hdus:
            for hdu in inputs:
                if hdu.name != "SCI":
                    continue
                chip = hdu.ver
                dq = inputs["DQ", chip].data
                deposit = truth_hdus["CRDEP", chip].data
                strong, clean = strong_and_clean(dq, inputs["ERR", chip].data, deposit)
                star = _star_pixels(placements, stars, root, chip, dq.shape) & clean
                truths[(root, chip)] = ChipTruth(strong, clean, star)
    return truths


def _star_pixels(placements, stars, root, chip, shape):
    """Pixels within STAR_RADIUS_PX of the centre of an unsaturated star on this chip."""
    rows = placements[(placements["rootname"] == root) & (placements["extver"] == chip)]
    rows = rows[np.isin(rows["source_id"], list(stars)) & ~rows["peak_saturated"]]
    mask = np.zeros(shape, bool)
    reach = int(np.ceil(STAR_RADIUS_PX))
    offsets = np.arange(-reach, reach + 1)
    for x, y in zip(rows["x"], rows["y"]):
        columns = np.round(x).astype(int) + offsets
        lines = np.round(y).astype(int) + offsets
        yy, xx = np.meshgrid(lines, columns, indexing="ij")
        near = (xx - x) ** 2 + (yy - y) ** 2 <= STAR_RADIUS_PX**2
        inside = near & (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        mask[yy[inside], xx[inside]] = True
    return mask


def score(flags, truths):
    """Counts of one sweep point: strong/found, clean/flagged, star/flagged (all chips)."""
    counts = dict.fromkeys(("strong", "found", "clean", "clean_flagged", "star", "star_flagged"), 0)
    for key, truth in truths.items():
        flagged = flags[key]
        counts["strong"] += int(np.count_nonzero(truth.strong))
        counts["found"] += int(np.count_nonzero(truth.strong & flagged))
        counts["clean"] += int(np.count_nonzero(truth.clean))
        counts["clean_flagged"] += int(np.count_nonzero(truth.clean & flagged))
        counts["star"] += int(np.count_nonzero(truth.star))
        counts["star_flagged"] += int(np.count_nonzero(truth.star & flagged))
    return {
        **counts,
        "recall": counts["found"] / max(counts["strong"], 1),
        "false_flag_rate": counts["clean_flagged"] / max(counts["clean"], 1),
        "star_flag_fraction": counts["star_flagged"] / max(counts["star"], 1),
    }


def photometry(image, header, simulation, fwhm):
    """Aperture photometry of isolated, unsaturated stars seen in every exposure on a final
    image in e-/s: bias (median of measured/true - 1) and robust scatter, and the star count."""
    catalog = Table.read(simulation.catalog_file)
    wcs = WCS(header)
    x, y = wcs.all_world2pix(catalog["ra"], catalog["dec"], 0)
    radius = max(4.0 * fwhm, 4.0)
    inner, outer = radius + 3.0, radius + 8.0
    n_exposures = simulation.parameters["exposures"]
    chosen = (
        (catalog["type"] == "star")
        & ~catalog["saturated"]
        & (catalog["n_exposures"] == n_exposures)
        & (catalog["flux"] >= 5.0)  # >= 2500 e- per exposure: S/N above 30 in the aperture
    )
    # isolated: no other source brighter than 1% of the star within the annulus' reach + 3 px
    others = np.column_stack([x, y])
    ratios = []
    ny, nx = image.shape
    for index in np.flatnonzero(chosen):
        cx, cy = x[index], y[index]
        if not (outer + 1 <= cx < nx - outer - 1 and outer + 1 <= cy < ny - outer - 1):
            continue
        distance = np.hypot(others[:, 0] - cx, others[:, 1] - cy)
        neighbours = (distance < outer + 3.0) & (distance > 0)
        if np.any(catalog["flux"][neighbours] > 0.01 * catalog["flux"][index]):
            continue
        low_y, high_y = int(cy - outer - 1), int(cy + outer + 2)
        low_x, high_x = int(cx - outer - 1), int(cx + outer + 2)
        stamp = image[low_y:high_y, low_x:high_x]
        yy, xx = np.mgrid[low_y:high_y, low_x:high_x]
        r = np.hypot(xx - cx, yy - cy)
        annulus = stamp[(r >= inner) & (r < outer)]
        aperture = stamp[r < radius]
        if not np.all(np.isfinite(aperture)) or not np.isfinite(annulus).any():
            continue
        flux = aperture.sum() - np.nanmedian(annulus) * aperture.size
        ratios.append(flux / catalog["flux"][index] - 1.0)
    ratios = np.array(ratios)
    if ratios.size == 0:
        return {"n_stars": 0, "bias": None, "scatter": None}
    median = float(np.median(ratios))
    return {
        "n_stars": int(ratios.size),
        "bias": median,
        "scatter": float(1.4826 * np.median(np.abs(ratios - median))),
    }


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


def _detector_source_digest():
    """Digest of the code behind our cosmic-ray masks and defaults (a cached case is run again
    when it changes)."""
    import hashlib

    source = REPO_ROOT / "src" / "drizzlepipe"
    digest = hashlib.sha256()
    names = ("algorithms/crdetect.py", "algorithms/blotcr.py", "algorithms/combine.py",
             "steps/blot_cr.py", "steps/create_median.py", "presets.py", "chipwork.py")  # fmt: skip
    for name in names:
        digest.update((source / name).read_bytes())
    return digest.hexdigest()[:16]


def run_case(case, workdir, peer_python, reuse):
    """Simulate, run both pipelines with their sweeps, score. Cached per case: with ``reuse``,
    AstroDrizzle's part is kept when its sweep is the same, ours when our parameters are."""
    case_dir = workdir / case.name
    results_file = case_dir / "results.json"
    points = sweep_points()
    cached = json.loads(results_file.read_text()) if reuse and results_file.exists() else {}
    if [tuple(point) for point in cached.get("points", [])] != points:
        cached = {}
    if "photometry" in cached:  # the first layout of this file
        cached["astrodrizzle_photometry"] = cached["photometry"]["astrodrizzle"]
        cached["astrodrizzle_seconds"] = cached.get("seconds")
    simulation = simulate_case(case, case_dir / "data")
    preset, steps = drizzlepipe_parameters(simulation)
    source = _detector_source_digest()
    if cached.get("drizzlepipe_steps") == steps and cached.get("drizzlepipe_source") == source:
        return cached
    truths = chip_truths(simulation)
    results = {"case": asdict(case), "name": case.name, "points": points,
               "default_index": default_index(points)}  # fmt: skip
    if "astrodrizzle" in cached:
        for key in ("astrodrizzle", "astrodrizzle_photometry", "astrodrizzle_seconds"):
            results[key] = cached[key]
    else:
        started = time.perf_counter()
        grid_file = case_dir / "grid.fits"
        write_default_grid(simulation.flt_files, grid_file)
        peer_masks, peer_product = run_astrodrizzle_sweep(
            simulation, grid_file, case_dir / "astrodrizzle", points, peer_python
        )
        results["astrodrizzle"] = [score(masks, truths) for masks in peer_masks]
        with fits.open(peer_product) as drz:
            results["astrodrizzle_photometry"] = photometry(
                drz["SCI"].data, drz["SCI"].header, simulation, case.fwhm
            )
        results["astrodrizzle_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    ours_masks, default_masks, final = run_drizzlepipe_sweep(simulation, points, steps)
    product = case_dir / "drizzlepipe_final_drz.fits"
    final.save(str(product))
    with fits.open(product) as drz:
        ours_photometry = photometry(drz["SCI"].data, drz["SCI"].header, simulation, case.fwhm)
    results.update(
        drizzlepipe_preset=preset,
        drizzlepipe_steps=steps,
        drizzlepipe_source=source,
        drizzlepipe=[score(masks, truths) for masks in ours_masks],
        drizzlepipe_default=score(default_masks, truths),
        drizzlepipe_photometry=ours_photometry,
        drizzlepipe_seconds=time.perf_counter() - started,
    )
    results_file.write_text(json.dumps(results, indent=1))
    return results


# --------------------------------------------------------------------------------------------
# Summary: operating points, tables, figure
# --------------------------------------------------------------------------------------------


def standing(point, peer):
    """``"above"``, ``"tie"`` or ``"below"``: one operating point of ours against AstroDrizzle's.

    Above: recall at least AstroDrizzle's with no more false flags, better in one of the two.
    Tie: not above, but within counting noise of it (recall within two binomial sigmas of
    AstroDrizzle's recall, false flags within two Poisson sigmas of its count, at least 2
    pixels): the sets cannot tell the two apart. Below: neither.
    """
    recall_noise = 2.0 * np.sqrt(peer["recall"] * (1 - peer["recall"]) / max(peer["strong"], 1))
    flag_noise = max(2.0 * np.sqrt(peer["clean_flagged"]), 2.0)
    recall, flags = point["recall"], point["clean_flagged"]
    if recall >= peer["recall"] and flags <= peer["clean_flagged"]:
        if recall > peer["recall"] or flags < peer["clean_flagged"]:
            return "above"
    if recall >= peer["recall"] - recall_noise and flags <= peer["clean_flagged"] + flag_noise:
        return "tie"
    return "below"


_ORDER = {"below": 0, "tie": 1, "above": 2}


def compare(results):
    """Our sweep and default point against AstroDrizzle's default point in one case."""
    peer = results["astrodrizzle"][results["default_index"]]
    ours_default = results["drizzlepipe_default"]
    ours = results["drizzlepipe"]
    at_rate = [p for p in ours if p["clean_flagged"] <= peer["clean_flagged"]]
    at_recall = [p for p in ours if p["recall"] >= peer["recall"]]
    best_recall = max(at_rate, key=lambda p: p["recall"]) if at_rate else None
    lowest_rate = min(at_recall, key=lambda p: p["false_flag_rate"]) if at_recall else None
    curve = max((standing(p, peer) for p in ours), key=_ORDER.get)
    return {
        "peer": peer,
        "ours_default": ours_default,
        "recall_at_peer_rate": best_recall["recall"] if best_recall else None,
        "rate_at_peer_recall": lowest_rate["false_flag_rate"] if lowest_rate else None,
        "curve": curve,  # the best standing of any point of our sweep
        "default": standing(ours_default, peer),
        "stars_ok": ours_default["star_flag_fraction"] <= peer["star_flag_fraction"],
    }


def default_candidates(all_results):
    """For each sweep point: in how many cases it stands above / tied with / below
    AstroDrizzle's default point, and has no more star flags, by preset (to pick defaults)."""
    lines = ["| preset | snr | scale | above | tie | below | star flags <= AD |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    presets = sorted({r["drizzlepipe_preset"] for r in all_results})
    for preset in presets:
        chosen = [r for r in all_results if r["drizzlepipe_preset"] == preset]
        for index, (snr, scale) in enumerate(chosen[0]["points"]):
            counts = dict.fromkeys(_ORDER, 0)
            stars = 0
            for results in chosen:
                peer = results["astrodrizzle"][results["default_index"]]
                point = results["drizzlepipe"][index]
                counts[standing(point, peer)] += 1
                stars += point["star_flag_fraction"] <= peer["star_flag_fraction"]
            lines.append(f"| {preset} | {snr} | {scale} | {counts['above']} | {counts['tie']} | "
                         f"{counts['below']} | {stars} of {len(chosen)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(value, form):
    return "-" if value is None else format(value, form)


def tables(all_results):
    """Markdown tables: operating points per case, and photometry."""
    lines = [
        "| case | AD recall | AD false flags | ours at AD's rate: recall | ours at AD's recall: "
        "false flags | our curve | our default | ours default recall | ours default false "
        "flags | star flags AD | star flags ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for results in all_results:
        c = compare(results)
        lines.append(
            f"| {results['name']} | {c['peer']['recall']:.4f} | "
            f"{c['peer']['false_flag_rate']:.2e} | {_fmt(c['recall_at_peer_rate'], '.4f')} | "
            f"{_fmt(c['rate_at_peer_recall'], '.2e')} | {c['curve']} | {c['default']} | "
            f"{c['ours_default']['recall']:.4f} | {c['ours_default']['false_flag_rate']:.2e} | "
            f"{c['peer']['star_flag_fraction']:.2e} | "
            f"{c['ours_default']['star_flag_fraction']:.2e} |"
        )
    lines += [
        "",
        "| case | stars | AD bias | AD scatter | ours bias | ours scatter |",
        "|---|---|---|---|---|---|",
    ]
    for results in all_results:
        peer = results["astrodrizzle_photometry"]
        ours = results["drizzlepipe_photometry"]
        lines.append(
            f"| {results['name']} | {ours['n_stars']} | {_fmt(peer['bias'], '+.2%')} | "
            f"{_fmt(peer['scatter'], '.2%')} | {_fmt(ours['bias'], '+.2%')} | "
            f"{_fmt(ours['scatter'], '.2%')} |"
        )
    return "\n".join(lines) + "\n"


def figure(all_results, path):
    """One ROC panel per case: recall against false-flag rate, both sweeps, default points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 6 if len(all_results) > 4 else len(all_results)
    rows = int(np.ceil(len(all_results) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.7 * rows), squeeze=False)
    styles = {"astrodrizzle": ("tab:orange", "AstroDrizzle"), "drizzlepipe": ("tab:blue", "ours")}
    markers = dict(zip(SCALES, ("o", "s", "^")))
    for axis, results in zip(axes.ravel(), all_results):
        for pipeline, (color, label) in styles.items():
            scores = results[pipeline]
            curves = {}
            for score_, point in zip(scores, results["points"]):
                curves.setdefault((family(point), point[1]), []).append(score_)
            for (name, scale), chosen in curves.items():
                scaled = name == "scaled"
                rate = [max(s["false_flag_rate"], 1e-8) for s in chosen]
                axis.plot(rate, [s["recall"] for s in chosen], color=color,
                          lw=0.8 if scaled else 0.4, ls="-" if scaled else ":",
                          marker=markers[scale], ms=2.5 if scaled else 1.5,
                          label=f"{label} scale {scale}" if scaled else None)  # fmt: skip
            default = (
                results["drizzlepipe_default"]
                if pipeline == "drizzlepipe"
                else scores[results["default_index"]]
            )
            axis.plot(max(default["false_flag_rate"], 1e-8), default["recall"], marker="*",
                      ms=11, color=color, mec="k", mew=0.5, ls="none")  # fmt: skip
        axis.set_xscale("log")
        axis.set_title(results["name"], fontsize=8)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    for axis in axes.ravel()[len(all_results) :]:
        axis.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7)
    fig.supxlabel("false-flag rate (clean pixels flagged; none: 1e-8)", fontsize=8, y=0.045)
    fig.supylabel("recall (cosmic-ray pixels > 5 sigma)", fontsize=8)
    fig.tight_layout(rect=(0.01, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


DOCS_PAGE = REPO_ROOT / "docs" / "science.md"
TABLES_START, TABLES_END = "<!-- science-tables:start -->", "<!-- science-tables:end -->"


def write_docs(figure_path, markdown):
    """Copy the figure to ``docs/science/roc.png`` and put the tables between the markers of
    ``docs/science.md``."""
    target = DOCS_PAGE.parent / "science"
    target.mkdir(exist_ok=True)
    shutil.copyfile(figure_path, target / "roc.png")
    page = DOCS_PAGE.read_text()
    head, rest = page.split(TABLES_START)
    _, tail = rest.split(TABLES_END)
    DOCS_PAGE.write_text(f"{head}{TABLES_START}\n{markdown}{TABLES_END}{tail}")


def cases(quick):
    if quick:
        return [Case(2, 1.0, "crowded"), Case(4, 2.5, "sparse")]
    return [Case(n, f, field) for field in FIELDS for f in FWHMS for n in EXPOSURES]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=os.path.relpath(DEFAULT_PEER_PYTHON))
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench/output/science")
    parser.add_argument("--reuse", action="store_true", help="reuse the cases already scored")
    parser.add_argument("--quick", action="store_true", help="two cases (a smoke test)")
    parser.add_argument("--docs", action="store_true", help="copy figure and tables to docs/")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    all_results = []
    for case in cases(args.quick):
        results = run_case(case, args.workdir, Path(args.peer_python).absolute(), args.reuse)
        c = compare(results)
        print(
            f"{case.name:<24} AD {c['peer']['recall']:.4f} @ {c['peer']['false_flag_rate']:.2e}"
            f"  ours default {c['ours_default']['recall']:.4f} @ "
            f"{c['ours_default']['false_flag_rate']:.2e}  ours at AD rate "
            f"{_fmt(c['recall_at_peer_rate'], '.4f')}  curve {c['curve']}, default "
            f"{c['default']}; stars "
            f"{c['peer']['star_flag_fraction']:.2e} vs "
            f"{c['ours_default']['star_flag_fraction']:.2e}"
            f"  [{results['drizzlepipe_preset']}]",
            flush=True,
        )
        all_results.append(results)
    (args.workdir / "science.json").write_text(
        json.dumps({"cpu": cpu_model(), "cases": all_results}, indent=1)
    )
    markdown = tables(all_results)
    (args.workdir / "science_tables.md").write_text(markdown)
    figure(all_results, args.workdir / "roc.png")
    print(markdown)
    candidates = default_candidates(all_results)
    (args.workdir / "science_candidates.md").write_text(candidates)
    print(candidates)
    for key in ("curve", "default"):
        counts = {v: sum(compare(r)[key] == v for r in all_results) for v in _ORDER}
        print(f"our {key} against AstroDrizzle's default point: {counts}")
    stars = sum(compare(r)["stars_ok"] for r in all_results)
    print(f"star flags no higher than AstroDrizzle's: {stars} of {len(all_results)}")
    if args.docs:
        write_docs(args.workdir / "roc.png", markdown + "\n" + candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
