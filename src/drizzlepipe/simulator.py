"""Simulated HST WFC3/UVIS-like ``_flt`` exposures with the truth written next to them.

:func:`simulate` writes a dithered set of calibrated exposures (``<rootname>_flt.fits``) of one
field of stars and galaxies, together with everything needed to score a pipeline against the
truth: the source catalogue, the sky of every exposure, the cosmic-ray deposit of every pixel,
the detector defects, the noiseless expected image of every chip, and the noiseless scene on a
reference grid. The files are accepted unchanged by our readers and by AstroDrizzle, so
benchmarks run both on identical inputs.

Units and conventions
---------------------
* Pixel coordinates are 0-based with pixel ``i`` covering ``[i - 0.5, i + 0.5]``; FITS keywords
  (``CRPIX``) are 1-based as usual.
* A *nominal pixel* is the undistorted detector pixel, ``pixel_scale`` arcsec on a side
  (``IDCSCALE``). Source fluxes are in e-/s, sizes in nominal pixels (and arcsec in the
  catalogue).
* ``SCI`` and ``ERR`` are in electrons (``BUNIT='ELECTRONS'``), dark- and bias-subtracted and
  flat-fielded the way calwf3 does it: a uniform sky gives the same value in every pixel whatever
  the pixel's area on the sky. A pixel therefore holds ``exptime`` times the *mean* surface
  brightness over its footprint (e-/s per nominal pixel area), and the counts of a point source
  in a chip are ``flux * exptime / A``, where ``A`` is the local pixel area relative to
  ``pixel_scale**2`` (the inverse of HST's pixel-area map). Drizzling onto a grid of
  ``pixel_scale`` restores exactly ``flux`` (this is why AstroDrizzle needs no pixel-area
  correction); ``truth/placements.ecsv`` lists ``A`` and the expected counts of every source in
  every chip.
* ``ERR`` is the true 1-sigma of every pixel: ``sqrt(expected charge + readnoise**2)`` from the
  noiseless model (dark and hot-pixel charge included, saturated pixels capped at full well).
* ``DQ`` (int16, HST bits): 4 bad detector pixel (bad columns), 16 hot pixel, 64 warm pixel,
  256 full-well saturation (star cores and their bleed trails). Cosmic rays are *not* flagged:
  finding them is the pipeline's job.

Physics of the simulation
-------------------------
* Geometry: all exposures share one tangent plane at the field centre. The chips sit in a focal
  plane like WFC3/UVIS: ``SCI,1`` is the lower chip (``CCDCHIP=2``) and ``SCI,2`` the upper one
  (``CCDCHIP=1``), stacked in y with a gap of ``chip_gap`` pixels. Every exposure is shifted by a
  random sub-pixel dither (uniform in ``+-dither`` pixels per axis) and rotated by a random angle
  (uniform in ``+-rotation`` degrees); the first exposure is the undithered reference pointing.
  Each chip gets a TAN-SIP WCS with a CD matrix (including a small x/y skew like UVIS) and a
  third-order SIP polynomial whose largest displacement on the chip is ``distortion`` times the
  chip's half-diagonal (0.006 gives about 14 px on a full UVIS chip, like the real solution), so
  the pixel area varies by about +-1%.
* Sources are analytic mixtures of 2-D Gaussians on the sky: stars are the PSF (a Gaussian core
  of ``psf_fwhm`` nominal pixels plus an optional halo), galaxies are elliptical Sersic profiles
  (n=1 and n=4) approximated by Gaussian mixtures fitted once by non-negative least squares to
  the profile within 8 r_eff (the approach of Hogg & Lang 2013), convolved with the PSF. The
  mixture *is* the truth: the catalogue flux is its exact total flux, and ``r_half_pix`` its
  half-light semi-major axis. Each source is rendered only on a local stamp, through the local
  Jacobian of the chip WCS (so the SIP distortion and pixel-area variation are exact to first
  order over a stamp), integrated over pixels by sub-pixel sampling fine enough (at least four
  samples per sigma) that the total flux is exact to 1e-8 and pixel values to about 0.3%.
* Noise: Poisson noise on the total charge (scene + sky + dark + hot-pixel excess), Gaussian read
  noise per amplifier quadrant (``READNSEA..D``), dark subtracted with its mean (``MEANDARK``).
* Saturation: charge above ``full_well`` bleeds up and down its column, conserving charge
  (except what runs off the chip), and every pixel of the trail, including its partly filled
  tips, is flagged 256.
* Cosmic rays: events uniform over the chip with an isotropic (cos-weighted) incidence angle
  through a 9 um charge-collecting layer under 15 um pixels, so most deposit in one to a few
  pixels and a few leave tracks up to 100 px long. The charge per um follows a Moyal
  (Landau-like) distribution, about 1000 e- at normal incidence, and diffuses in a Gaussian
  cloud of 0.05-0.35 px. Above 5 sigma of a typical sky, about 9% of the events are single
  pixels, 30% one or two pixels, the median is 4 pixels (AstroDrizzle's CR masks of the real
  ACS/HRC pair in ``shared/data`` give 16%, 24-30% and 5). Events are added until
  ``cr_fraction`` of the pixels carry at least one electron of cosmic-ray charge.
* Detector defects are fixed per chip (same in every exposure): hot pixels (a large, varying
  dark excess), warm pixels (a small one) and bad columns (a constant offset from a trap row to
  the end of the column away from the amplifiers).

A full-frame exposure (2 x 2051 x 4096) takes 6-10 s on one core, with about 1.2 GB peak memory.

Truth files (in ``<outdir>/truth/``)
------------------------------------
``catalog.ecsv``
    one row per source: ``id, type, ra, dec`` (deg), ``flux`` (e-/s), ``sersic_n``,
    ``r_eff``/``r_eff_pix`` (Sersic scale radius, arcsec / nominal pixels), ``r_half_pix``,
    ``axis_ratio``, ``position_angle`` (deg east of north), ``saturated`` (its peak pixel
    reaches full well in at least one exposure), ``n_exposures`` (exposures with the source
    centre on a chip), ``x_truth, y_truth`` (0-based pixel on the truth grid).
``sky.json``
    the sky of every exposure in electrons per (nominal) input pixel, and in e-/s.
``scene.fits``
    the noiseless sky-free scene on a reference grid covering every exposure (TAN at the field
    centre with a CD matrix, rotated like the first exposure as AstroDrizzle's default output,
    ``truth_scale`` arcsec per pixel) in e-/s per reference pixel, i.e. the flux falling in
    each reference pixel; the primary HDU holds data and WCS, so it can serve as
    ``final_refimage``.
``<rootname>_truth.fits``
    per chip (``EXTVER`` as in the ``_flt``): ``CRDEP`` (int32, electrons of cosmic-ray charge
    per pixel; the CR mask is ``CRDEP > 0``) and, unless ``write_models=False``, ``MODEL``
    (float32, the noiseless expected dark-subtracted image in electrons: scene + sky, before
    saturation).
``detector_defects.fits``
    ``DEFECTS`` per chip (int16, the DQ bits of the injected defects).
``placements.ecsv``
    one row per (exposure, chip, source) whose stamp touches the chip: 0-based pixel position,
    pixel area ``A``, expected counts ``flux * exptime / A``, whether the centre is on the chip
    and whether its peak pixel saturates there.
``simulation.json``
    every parameter and the list of files (read back by :func:`read_simulation`).

What AstroDrizzle needs from the headers
----------------------------------------
drizzlepac 3.11 (``updatewcs=False``, offline) accepts these files. Deleting one keyword at a
time from them shows what it really needs:

* it stops without ``DETECTOR`` (with ``INSTRUME='WFC3'`` it picks ``WFC3UVISInputImage``;
  ``TELESCOP='HST'`` is required too), without any of ``ATODGNA..D`` or ``READNSEA..D`` (gain and
  read noise for driz_cr and minmed: all four amplifiers are read), without ``EXPEND``, and
  per ``SCI`` without ``MEANDARK`` (WFC3 reads its dark current there), ``EXPNAME`` (groups the
  chips of an exposure) or ``NGOODPIX``;
* with ``IDCV2REF``/``IDCV3REF`` present it also needs ``PA_V3`` and ``IDCSCALE``: stwcs orients
  its default output grid at ``troll(PA_V3, CRVAL2, IDCV2REF, IDCV3REF) + IDCTHETA`` and uses
  ``IDCSCALE`` as the undistorted pixel scale, so ``PA_V3`` is solved here to make that
  orientation equal to ``ORIENTAT`` of the reference chip, as in real data;
* it runs but gets the science wrong without ``EXPTIME`` (an empty product) or
  ``BUNIT='ELECTRONS'`` (data taken as e-/s, a 500x brighter output);
* ``NPOLFILE``, ``D2IMFILE``, ``DGEOFILE``, ``IDCTAB`` = ``'N/A'`` (absent works too) keep it
  from looking for reference files; a distinct ``ROOTNAME`` per file keeps output names apart;
  each ``SCI`` needs a celestial WCS (TAN-SIP with a CD matrix here) and ``ERR``/``DQ`` of the
  same ``EXTVER``.

Not written: ``OCX10``/``OCY10``... (first-order IDCTAB terms, only used by ``updatewcs``),
``D2IM*``/``CPDIS*``/``DP*`` lookup-table distortions and the ``HDRLET``/``WCSCORR`` extensions.

Differences from real WFC3/UVIS data (by design)
------------------------------------------------
No CTE trails, no PSF variation with position, no charge traps, no crosstalk or ghosts, no
photometric difference between chips (``PHOTFLAM`` is the same for both); subarrays of any size
keep ``LTV=0``. Photometry keywords are approximate F606W values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from scipy.optimize import nnls
from scipy.special import gammaincinv, ndtr, ndtri
from scipy.stats import moyal

from drizzlepipe import __version__

__all__ = ["SimulationResult", "read_simulation", "simulate"]

# --- WFC3/UVIS-like detector constants -----------------------------------------------------
UVIS_PIXEL_SCALE = 0.03962  # arcsec per nominal pixel (IDCSCALE of WFC3/UVIS)
UVIS_FULL_CHIP_SHAPE = (2051, 4096)  # (ny, nx) of one UVIS chip
UVIS_CHIP_GAP = 31  # pixels between the two UVIS chips (about 1.2 arcsec)
UVIS_IDCTHETA = 45.0  # deg, chip y axis with respect to V3
# V2/V3 reference positions (arcsec) of the chips, from real UVIS headers, keyed by CCDCHIP
UVIS_V2V3_REF = {1: (30.642796, 25.242006), 2: (-27.4596, -33.2604)}
UVIS_GAIN = 1.56  # e-/DN, every amplifier
UVIS_READ_NOISE = {"A": 3.03, "B": 3.13, "C": 3.08, "D": 3.18}  # e-
UVIS_AMPLIFIERS = {1: ("A", "B"), 2: ("C", "D")}  # (left, right) amplifier of each CCDCHIP
UVIS_SDQFLAGS = 31743  # "serious" DQ flags used by calwf3 for NGOODPIX
# Approximate F606W photometry (PHOTFLAM in erg/cm2/A/e-, PHOTPLAM/PHOTBW in Angstrom)
PHOTOMETRY = {
    "PHOTFLAM": 1.1e-19,
    "PHOTFNU": 1.27e-7,
    "PHOTZPT": -21.1,
    "PHOTPLAM": 5889.0,
    "PHOTBW": 662.0,
}
FILTER_NAME = "F606W"

# --- HST DQ bits used here --------------------------------------------------------------------
DQ_BAD_DETECTOR_PIXEL = 4
DQ_HOT_PIXEL = 16
DQ_WARM_PIXEL = 64
DQ_SATURATED = 256

# --- Physical constants of the simulation -----------------------------------------------------
PIXEL_PITCH_UM = 15.0  # UVIS pixel size
PIXEL_THICKNESS_UM = 9.0  # charge-collecting depth: with 15 um pixels it sets the track
# lengths, tuned to the observed mix of one-pixel hits, small blobs and tracks
CR_CHARGE_MPV = 1000.0  # e-, most probable charge of a cosmic ray at normal incidence
CR_CHARGE_WIDTH = 0.12  # Moyal (Landau-like) scale of the charge per um, relative to the MPV
CR_MAX_TRACK = 100.0  # px, longest projected track (grazing incidence)
CR_SAMPLES_PER_PIXEL = 3  # charge samples per pixel of track length
CR_CLOUD_SIGMA = (0.05, 0.35)  # px, range of the charge-diffusion sigma of an event
FLUX_TRUNCATION = 1e-8  # fraction of a source's flux allowed outside its stamps
SUBSAMPLES_PER_SIGMA = 4.0  # sub-pixel samples per Gaussian sigma when integrating over pixels
MAX_SUBSAMPLING = 16
STAMP_CHUNK_ELEMENTS = 3_000_000  # sub-samples evaluated at once when rendering


@dataclass
class SimulationResult:
    """Paths and key numbers of a simulated data set.

    Attributes
    ----------
    outdir : pathlib.Path
        Directory holding the ``_flt`` files.
    flt_files : list of pathlib.Path
        The simulated exposures, in observation order.
    rootnames : list of str
        ``ROOTNAME`` of each exposure (same order).
    truth_dir : pathlib.Path
        Directory of the truth files (``outdir / "truth"``).
    catalog_file, sky_file, scene_file, placements_file, defects_file, parameters_file :
        pathlib.Path
        Truth files described in the module docstring.
    truth_files : list of pathlib.Path
        Per exposure: cosmic-ray deposits (and noiseless models), same order as ``flt_files``.
    sky : dict
        ``{rootname: sky in electrons per pixel}``.
    exptime : float
        Exposure time of every exposure (s).
    parameters : dict
        Every parameter of the simulation (JSON-serialisable).
    """

    outdir: Path
    flt_files: list[Path]
    rootnames: list[str]
    truth_dir: Path
    catalog_file: Path
    sky_file: Path
    scene_file: Path
    placements_file: Path
    defects_file: Path
    parameters_file: Path
    truth_files: list[Path]
    sky: dict[str, float]
    exptime: float
    parameters: dict = field(default_factory=dict)


def simulate(
    outdir,
    *,
    exposures=4,
    shape=(1024, 1024),
    chips=2,
    seed=0,
    exptime=500.0,
    sky_range=(20.0, 80.0),
    cr_fraction=0.01,
    psf_fwhm=1.8,
    psf_halo_fraction=0.0,
    dither=5.0,
    rotation=0.05,
    n_stars=None,
    n_galaxies=None,
    star_flux_range=(2.0, 5000.0),
    galaxy_flux_range=(5.0, 1000.0),
    galaxy_reff_range=(1.5, 8.0),
    distortion=0.006,
    skew=1.0,
    orientation=45.0,
    ra=53.1625,
    dec=-27.7914,
    pixel_scale=UVIS_PIXEL_SCALE,
    chip_gap=UVIS_CHIP_GAP,
    truth_scale=None,
    full_well=65000.0,
    dark_rate=0.0005,
    hot_pixel_fraction=0.001,
    warm_pixel_fraction=0.002,
    bad_columns=2,
    write_models=True,
    overwrite=False,
):
    """Simulate dithered WFC3/UVIS-like ``_flt`` exposures and write them with their truth.

    Parameters
    ----------
    outdir : str or path-like
        Output directory (created if needed). Exposures go to ``outdir/<rootname>_flt.fits``,
        truth to ``outdir/truth/``.
    exposures : int
        Number of exposures (at most 1296).
    shape : (int, int)
        ``(ny, nx)`` of one chip in pixels; a full UVIS chip is ``(2051, 4096)``.
    chips : int
        1 or 2 chips per exposure (stacked in y like WFC3/UVIS).
    seed : int
        Seed of every random choice; the same seed and parameters give identical files. The
        scene, the detector and each exposure use independent streams, so exposure ``i`` is the
        same whatever the number of exposures.
    exptime : float
        Exposure time in seconds (all exposures).
    sky_range : (float, float)
        The sky of each exposure is drawn uniformly in this range, electrons per pixel.
    cr_fraction : float
        Fraction of the pixels of each chip carrying cosmic-ray charge (>= 1 e-).
    psf_fwhm : float
        FWHM of the Gaussian PSF core in nominal pixels (about 1.8 for UVIS; 1.0 undersampled).
    psf_halo_fraction : float
        Fraction of each star's flux in a Gaussian halo three times wider than the core.
    dither : float
        Largest dither offset per axis in pixels (offsets are uniform, so sub-pixel phases are
        random). The first exposure is not dithered.
    rotation : float
        Largest rotation of an exposure relative to the first one, degrees.
    n_stars, n_galaxies : int or None
        Number of stars and galaxies in the simulated field (a rectangle enclosing every dithered
        footprint); ``None`` gives 250 stars and 80 galaxies per million square pixels. Star 0 is
        always a bright (saturating) star near the middle of chip ``SCI,1``.
    star_flux_range, galaxy_flux_range : (float, float)
        Flux limits in e-/s; fluxes follow power laws dN/dF ~ F**-1.8 (stars) and F**-2
        (galaxies), so most sources are faint and a few stars saturate.
    galaxy_reff_range : (float, float)
        Sersic scale radius (semi-major axis) range in nominal pixels, log-uniform.
    distortion : float
        Largest SIP displacement on a chip divided by the chip half-diagonal (0 gives TAN only).
    skew : float
        Angle (degrees) between the pixel axes and a right angle, like the UVIS CD matrix.
    orientation : float
        ``ORIENTAT`` (position angle of the chip +y axis, degrees east of north) of the first
        exposure.
    ra, dec : float
        Field centre (degrees).
    pixel_scale : float
        Nominal pixel scale (``IDCSCALE``), arcsec.
    chip_gap : int
        Gap between the chips in pixels.
    truth_scale : float or None
        Pixel scale of the truth scene in arcsec (default ``pixel_scale``).
    full_well : float
        Saturation level in electrons.
    dark_rate : float
        Mean dark current, e-/s/pixel (subtracted, but its Poisson noise remains).
    hot_pixel_fraction, warm_pixel_fraction : float
        Fractions of hot (DQ 16) and warm (DQ 64) pixels.
    bad_columns : int
        Bad (partial) columns per chip, DQ 4.
    write_models : bool
        Also write the noiseless expected image of every chip (``MODEL`` in the truth files).
    overwrite : bool
        Replace the files of a previous simulation with the same names. Without it, any
        existing target file raises `FileExistsError` before anything is written. Files of an
        earlier simulation that this one does not write (more exposures, another seed) are left
        alone: use a fresh ``outdir`` for a different set.

    Returns
    -------
    SimulationResult
        Paths of every file written and the sky of each exposure.
    """
    params = _validated_parameters(locals())
    outdir = Path(outdir)
    truth_dir = outdir / "truth"
    rootnames = [_rootname(params["seed"], index) for index in range(params["exposures"])]
    flt_files = [outdir / f"{name}_flt.fits" for name in rootnames]
    truth_files = [truth_dir / f"{name}_truth.fits" for name in rootnames]
    names = {
        "catalog_file": truth_dir / "catalog.ecsv",
        "sky_file": truth_dir / "sky.json",
        "scene_file": truth_dir / "scene.fits",
        "placements_file": truth_dir / "placements.ecsv",
        "defects_file": truth_dir / "detector_defects.fits",
        "parameters_file": truth_dir / "simulation.json",
    }
    targets = flt_files + truth_files + list(names.values())
    existing = [str(path) for path in targets if path.exists()]
    if existing and not params["overwrite"]:
        raise FileExistsError(
            f"{len(existing)} simulation file(s) already exist (pass overwrite=True, or "
            f"--overwrite, to replace them): {', '.join(existing[:3])}"
            f"{' ...' if len(existing) > 3 else ''}"
        )
    truth_dir.mkdir(parents=True, exist_ok=True)

    focal_plane = _FocalPlane(params)
    scene_rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(0,)))
    detector_rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(1,)))
    focal_plane.draw_distortion(detector_rng)
    defects = [_detector_defects(detector_rng, params, ccdchip) for ccdchip in focal_plane.ccdchip]
    catalog = _make_catalog(scene_rng, focal_plane, params)
    components = _source_components(catalog, params)
    # record the numbers actually drawn, so the parameters reproduce the set as they are
    params["n_stars"] = int(np.sum(catalog["type"] == "star"))
    params["n_galaxies"] = len(catalog) - params["n_stars"]

    plans = [
        _plan_exposure(index, rootnames[index], focal_plane, params)
        for index in range(params["exposures"])
    ]

    saturated = np.zeros(len(catalog), bool)
    n_exposures = np.zeros(len(catalog), np.int32)
    placement_rows = []
    for plan, flt_path, truth_path in zip(plans, flt_files, truth_files):
        hdus, truth_hdus, rows, sat, on_chip = _simulate_exposure(
            plan, catalog, components, defects, focal_plane, params
        )
        saturated |= sat
        n_exposures += on_chip
        placement_rows.extend(rows)
        hdus.writeto(flt_path, overwrite=params["overwrite"])
        truth_hdus.writeto(truth_path, overwrite=params["overwrite"])

    truth_wcs, truth_shape = _truth_grid(plans, focal_plane, params)
    scene, x_truth, y_truth = _render_truth_scene(
        truth_wcs, truth_shape, catalog, components, params
    )
    _write_scene(names["scene_file"], scene, truth_wcs, params)

    catalog["saturated"] = saturated
    catalog["n_exposures"] = n_exposures
    catalog["x_truth"] = x_truth
    catalog["y_truth"] = y_truth
    catalog.meta.update(_catalog_meta(params))
    catalog.write(names["catalog_file"], format="ascii.ecsv", overwrite=True)
    _placements_table(placement_rows).write(
        names["placements_file"], format="ascii.ecsv", overwrite=True
    )
    _write_defects(names["defects_file"], defects)

    sky = {plan.rootname: plan.sky for plan in plans}
    with open(names["sky_file"], "w") as handle:
        json.dump(
            {
                "unit": "electron per input pixel (flat-fielded, nominal pixel area)",
                "exptime": params["exptime"],
                "sky": sky,
                "sky_rate": {name: value / params["exptime"] for name, value in sky.items()},
            },
            handle,
            indent=2,
        )
    result = SimulationResult(
        outdir=outdir,
        flt_files=flt_files,
        rootnames=rootnames,
        truth_dir=truth_dir,
        truth_files=truth_files,
        sky=sky,
        exptime=params["exptime"],
        parameters={k: v for k, v in params.items() if k != "overwrite"},
        **names,
    )
    with open(names["parameters_file"], "w") as handle:
        json.dump(_result_to_json(result), handle, indent=2)
    return result


def read_simulation(outdir):
    """Describe a simulation written earlier by :func:`simulate`.

    Parameters
    ----------
    outdir : str or path-like
        The ``outdir`` given to :func:`simulate`.

    Returns
    -------
    SimulationResult
        As returned by :func:`simulate`, with paths relative to ``outdir`` resolved again (the
        directory may have been moved).
    """
    outdir = Path(outdir)
    with open(outdir / "truth" / "simulation.json") as handle:
        record = json.load(handle)
    files = record["files"]
    return SimulationResult(
        outdir=outdir,
        flt_files=[outdir / name for name in files["flt_files"]],
        rootnames=record["rootnames"],
        truth_dir=outdir / "truth",
        truth_files=[outdir / name for name in files["truth_files"]],
        sky=record["sky"],
        exptime=record["exptime"],
        parameters=record["parameters"],
        **{key: outdir / files[key] for key in _SINGLE_FILES},
    )


_SINGLE_FILES = (
    "catalog_file",
    "sky_file",
    "scene_file",
    "placements_file",
    "defects_file",
    "parameters_file",
)


def _result_to_json(result):
    relative = {key: str(getattr(result, key).relative_to(result.outdir)) for key in _SINGLE_FILES}
    relative["flt_files"] = [str(path.relative_to(result.outdir)) for path in result.flt_files]
    relative["truth_files"] = [str(path.relative_to(result.outdir)) for path in result.truth_files]
    return {
        "generator": f"drizzlepipe.simulator {__version__}",
        "rootnames": result.rootnames,
        "exptime": result.exptime,
        "sky": result.sky,
        "parameters": result.parameters,
        "files": relative,
    }


# =============================================================================================
# Parameters
# =============================================================================================


def _validated_parameters(arguments):
    params = {key: value for key, value in arguments.items() if key != "outdir"}
    params["exposures"] = int(params["exposures"])
    params["chips"] = int(params["chips"])
    params["seed"] = int(params["seed"])
    params["shape"] = tuple(int(n) for n in params["shape"])
    for key in ("sky_range", "star_flux_range", "galaxy_flux_range", "galaxy_reff_range"):
        params[key] = tuple(float(v) for v in params[key])
    for key in (
        "exptime",
        "cr_fraction",
        "psf_fwhm",
        "psf_halo_fraction",
        "dither",
        "rotation",
        "distortion",
        "skew",
        "orientation",
        "ra",
        "dec",
        "pixel_scale",
        "full_well",
        "dark_rate",
        "hot_pixel_fraction",
        "warm_pixel_fraction",
    ):
        params[key] = float(params[key])
    params["chip_gap"] = int(params["chip_gap"])
    params["bad_columns"] = int(params["bad_columns"])
    if params["truth_scale"] is None:
        params["truth_scale"] = params["pixel_scale"]
    params["truth_scale"] = float(params["truth_scale"])
    for key in ("n_stars", "n_galaxies"):
        if params[key] is not None:
            params[key] = int(params[key])
            if params[key] < 0:
                raise ValueError(f"{key} must be >= 0, got {params[key]}")

    problems = []
    if not 1 <= params["exposures"] <= 36**2:
        problems.append(f"exposures must be between 1 and 1296, got {params['exposures']}")
    if params["chips"] not in (1, 2):
        problems.append(f"chips must be 1 or 2 (WFC3/UVIS has two), got {params['chips']}")
    if len(params["shape"]) != 2 or min(params["shape"]) < 32:
        problems.append(f"shape must be (ny, nx) with both >= 32, got {params['shape']}")
    if params["seed"] < 0:
        problems.append(f"seed must be >= 0, got {params['seed']}")
    if params["exptime"] <= 0:
        problems.append(f"exptime must be > 0 s, got {params['exptime']}")
    low, high = params["sky_range"]
    if not 0 <= low <= high:
        problems.append(f"sky_range must satisfy 0 <= low <= high, got {params['sky_range']}")
    if not 0 <= params["cr_fraction"] < 0.5:
        problems.append(f"cr_fraction must be in [0, 0.5), got {params['cr_fraction']}")
    if params["psf_fwhm"] < 0.5:
        problems.append(f"psf_fwhm must be >= 0.5 pixel, got {params['psf_fwhm']}")
    if not 0 <= params["psf_halo_fraction"] < 1:
        problems.append(f"psf_halo_fraction must be in [0, 1), got {params['psf_halo_fraction']}")
    for key in ("star_flux_range", "galaxy_flux_range", "galaxy_reff_range"):
        low, high = params[key]
        if not 0 < low <= high:
            problems.append(f"{key} must satisfy 0 < low <= high, got {params[key]}")
    if params["dither"] < 0 or params["dither"] > min(params["shape"]) / 4:
        problems.append(f"dither must be in [0, min(shape)/4], got {params['dither']}")
    if not 0 <= params["rotation"] <= 5:
        problems.append(f"rotation must be in [0, 5] degrees, got {params['rotation']}")
    if not 0 <= params["distortion"] <= 0.05:
        problems.append(f"distortion must be in [0, 0.05], got {params['distortion']}")
    if not 0 <= abs(params["skew"]) <= 10:
        problems.append(f"skew must be within +-10 degrees, got {params['skew']}")
    if not -90 < params["dec"] < 90:
        problems.append(f"dec must be within (-90, 90), got {params['dec']}")
    if params["pixel_scale"] <= 0 or params["truth_scale"] <= 0:
        problems.append("pixel_scale and truth_scale must be > 0")
    if params["chip_gap"] < 0:
        problems.append(f"chip_gap must be >= 0, got {params['chip_gap']}")
    if params["full_well"] <= 0 or params["dark_rate"] < 0:
        problems.append("full_well must be > 0 and dark_rate >= 0")
    for key in ("hot_pixel_fraction", "warm_pixel_fraction"):
        if not 0 <= params[key] < 0.1:
            problems.append(f"{key} must be in [0, 0.1), got {params[key]}")
    if not 0 <= params["bad_columns"] <= params["shape"][1] // 8:
        problems.append(f"bad_columns must be in [0, nx/8], got {params['bad_columns']}")
    if problems:
        raise ValueError("invalid simulation parameters: " + "; ".join(problems))
    params["write_models"] = bool(params["write_models"])
    params["overwrite"] = bool(params["overwrite"])
    return params


def _rootname(seed, index):
    """HST-style 9-character rootname ``i<ppp><ss><oo>q``: program from the seed, obs from index."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def base36(number, width):
        text = ""
        for _ in range(width):
            number, remainder = divmod(number, 36)
            text = digits[remainder] + text
        return text

    return f"i{base36(seed % 36**3, 3)}01{base36(index, 2)}q"


# =============================================================================================
# Geometry: tangent plane, chip WCS, SIP
# =============================================================================================


def _x_axis(theta_deg):
    """Direction (east, north) of the chip +x axis when the +y axis has position angle theta."""
    theta = np.deg2rad(theta_deg)
    return np.array([-np.cos(theta), np.sin(theta)])


def _y_axis(theta_deg):
    theta = np.deg2rad(theta_deg)
    return np.array([np.sin(theta), np.cos(theta)])


def _deproject(east, north, ra0, dec0):
    """Gnomonic (TAN) deprojection; ``east``/``north`` in degrees of the tangent plane."""
    xi = np.deg2rad(np.asarray(east, float))
    eta = np.deg2rad(np.asarray(north, float))
    alpha0, delta0 = np.deg2rad(ra0), np.deg2rad(dec0)
    denominator = np.cos(delta0) - eta * np.sin(delta0)
    alpha = alpha0 + np.arctan2(xi, denominator)
    delta = np.arctan2(np.sin(delta0) + eta * np.cos(delta0), np.hypot(xi, denominator))
    return np.rad2deg(alpha) % 360.0, np.rad2deg(delta)


def _project(ra, dec, ra0, dec0):
    """Gnomonic (TAN) projection to (east, north) in degrees of the tangent plane."""
    alpha, delta = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    alpha0, delta0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cos_c = np.sin(delta0) * np.sin(delta) + np.cos(delta0) * np.cos(delta) * np.cos(alpha - alpha0)
    xi = np.cos(delta) * np.sin(alpha - alpha0) / cos_c
    eta = (
        np.cos(delta0) * np.sin(delta) - np.sin(delta0) * np.cos(delta) * np.cos(alpha - alpha0)
    ) / cos_c
    return np.rad2deg(xi), np.rad2deg(eta)


# SIP displacement patterns (coefficients of x**p * y**q in coordinates normalised by the chip
# half-diagonal) loosely shaped after the WFC3/UVIS solution: dominant quadratic terms, weak
# cubic ones. Scaled so the largest displacement on the chip is ``distortion * half-diagonal``.
_SIP_PATTERN_A = {(2, 0): 1.0, (1, 1): -1.0, (0, 2): 0.03, (3, 0): 0.08, (2, 1): -0.04,
                  (1, 2): 0.05, (0, 3): 0.02}  # fmt: skip
_SIP_PATTERN_B = {(2, 0): -0.02, (1, 1): 0.95, (0, 2): -1.05, (3, 0): 0.03, (2, 1): 0.06,
                  (1, 2): -0.04, (0, 3): 0.07}  # fmt: skip


class _FocalPlane:
    """Chip layout, distortion and orientation shared by all exposures."""

    def __init__(self, params):
        self.params = params
        self.ny, self.nx = params["shape"]
        self.chips = params["chips"]
        self.scale = params["pixel_scale"]
        self.ra0, self.dec0 = params["ra"], params["dec"]
        pitch = self.ny + params["chip_gap"]
        # focal-plane y of each chip centre (SCI,1 lowest), nominal pixels
        self.chip_center_y = [(k - (self.chips - 1) / 2) * pitch for k in range(self.chips)]
        # CCDCHIP of each extension: UVIS puts CCDCHIP=2 in SCI,1
        self.ccdchip = [self.chips - k for k in range(self.chips)]
        self.half_diagonal = 0.5 * math.hypot(self.nx, self.ny)
        self.sip = [({}, {}) for _ in range(self.chips)]
        self.max_distortion_px = params["distortion"] * self.half_diagonal

    def draw_distortion(self, rng):
        """Per-chip SIP coefficients: the shared pattern with +-10% chip-to-chip changes.

        The random draws happen even without distortion, so that the detector defects drawn
        next from the same stream do not depend on the ``distortion`` setting.
        """
        radius = self.half_diagonal
        u = np.linspace(-self.nx / 2, self.nx / 2, 33)
        v = np.linspace(-self.ny / 2, self.ny / 2, 33)
        uu, vv = np.meshgrid(u / radius, v / radius)
        for k in range(self.chips):
            a = {pq: c * (1 + 0.1 * rng.standard_normal()) for pq, c in _SIP_PATTERN_A.items()}
            b = {pq: c * (1 + 0.1 * rng.standard_normal()) for pq, c in _SIP_PATTERN_B.items()}
            f = sum(c * uu**p * vv**q for (p, q), c in a.items())
            g = sum(c * uu**p * vv**q for (p, q), c in b.items())
            if self.max_distortion_px == 0:
                continue
            norm = self.max_distortion_px / np.max(np.hypot(f, g))
            self.sip[k] = (
                {pq: c * norm / radius ** sum(pq) for pq, c in a.items()},
                {pq: c * norm / radius ** sum(pq) for pq, c in b.items()},
            )

    def plane_to_sky(self, east_px, north_px):
        degrees = self.scale / 3600.0
        return _deproject(
            np.asarray(east_px) * degrees, np.asarray(north_px) * degrees, self.ra0, self.dec0
        )

    def sky_to_plane(self, ra, dec):
        east, north = _project(ra, dec, self.ra0, self.dec0)
        return east * 3600.0 / self.scale, north * 3600.0 / self.scale

    def pointing_center(self, offset):
        """Tangent-plane position (nominal px) of the focal-plane origin for a dither offset."""
        theta = self.params["orientation"]
        return offset[0] * _x_axis(theta) + offset[1] * _y_axis(theta)

    def chip_header(self, k, offset, rotation):
        """WCS keywords of chip ``k`` for one pointing (dither offset in px, rotation in deg)."""
        theta = self.params["orientation"] + rotation
        skew = self.params["skew"]
        center = self.pointing_center(offset) + self.chip_center_y[k] * _y_axis(theta)
        crval = self.plane_to_sky(*center)
        # Linear map chip px -> tangent plane px; its columns are the pixel axes: y at the
        # position angle theta (ORIENTAT), x skewed by ``skew`` from the perpendicular.
        axes = (_x_axis(theta + skew), _y_axis(theta))
        cd = np.empty((2, 2))
        step = 50.0  # px; the map is affine to <1e-6 px over this step
        for column, axis in enumerate(axes):
            ends = []
            for sign in (1, -1):
                ra, dec = self.plane_to_sky(*(center + sign * step * axis))
                ends.append(np.array(_project(ra, dec, crval[0], crval[1])))
            cd[:, column] = (ends[0] - ends[1]) / (2 * step)

        header = fits.Header()
        header["WCSAXES"] = (2, "number of World Coordinate System axes")
        sip = self.params["distortion"] > 0
        suffix = "-SIP" if sip else ""
        header["CTYPE1"] = ("RA---TAN" + suffix, "TAN projection" + (" + SIP" if sip else ""))
        header["CTYPE2"] = ("DEC--TAN" + suffix, "TAN projection" + (" + SIP" if sip else ""))
        header["CRPIX1"] = ((self.nx + 1) / 2, "x-coordinate of reference pixel")
        header["CRPIX2"] = ((self.ny + 1) / 2, "y-coordinate of reference pixel")
        header["CRVAL1"] = (float(crval[0]), "first axis value at reference pixel")
        header["CRVAL2"] = (float(crval[1]), "second axis value at reference pixel")
        header["CUNIT1"] = "deg"
        header["CUNIT2"] = "deg"
        header["CD1_1"] = (cd[0, 0], "partial of first axis coordinate w.r.t. x")
        header["CD1_2"] = (cd[0, 1], "partial of first axis coordinate w.r.t. y")
        header["CD2_1"] = (cd[1, 0], "partial of second axis coordinate w.r.t. x")
        header["CD2_2"] = (cd[1, 1], "partial of second axis coordinate w.r.t. y")
        header["RADESYS"] = ("ICRS", "Equatorial coordinate system")
        header["WCSNAME"] = ("SIMULATED", "Coordinate system title")
        if sip:
            a, b = self.sip[k]
            header["A_ORDER"] = (3, "SIP polynomial order, axis 0, detector to sky")
            for (p, q), value in sorted(a.items()):
                header[f"A_{p}_{q}"] = (value, "SIP distortion coefficient")
            header["B_ORDER"] = (3, "SIP polynomial order, axis 1, detector to sky")
            for (p, q), value in sorted(b.items()):
                header[f"B_{p}_{q}"] = (value, "SIP distortion coefficient")
        return header

    def chip_wcs(self, header):
        wcs = WCS(header)
        wcs.pixel_shape = (self.nx, self.ny)
        return wcs


def _troll(roll, dec, v2, v3):
    """Roll angle at an aperture from the V1 roll (Colin Cox's formula, as in stwcs)."""
    roll_r, dec_r = np.deg2rad(roll), np.deg2rad(dec)
    v2_r, v3_r = np.deg2rad(v2 / 3600.0), np.deg2rad(v3 / 3600.0)
    sin_rho = math.sqrt(
        math.sin(v2_r) ** 2 + math.sin(v3_r) ** 2 - math.sin(v2_r) ** 2 * math.sin(v3_r) ** 2
    )
    rho = math.asin(sin_rho)
    beta = math.asin(math.sin(v3_r) / sin_rho)
    if v2_r < 0:
        beta = math.pi - beta
    gamma = math.asin(math.sin(v2_r) / sin_rho)
    if v3_r < 0:
        gamma = math.pi - gamma
    a = math.pi / 2 + roll_r - beta
    b = math.atan2(
        math.sin(a) * math.cos(dec_r),
        math.sin(dec_r) * sin_rho - math.cos(dec_r) * math.cos(rho) * math.cos(a),
    )
    return math.degrees(math.pi - (gamma + b))


def _pa_v3_for(orientat, dec, v2, v3, idctheta):
    """PA_V3 such that ``troll(PA_V3, dec, v2, v3) + idctheta == orientat`` (stwcs' rule)."""
    pa_v3 = orientat - idctheta
    for _ in range(50):
        error = (_troll(pa_v3, dec, v2, v3) + idctheta - orientat + 180.0) % 360.0 - 180.0
        pa_v3 -= error
        if abs(error) < 1e-10:
            break
    return pa_v3 % 360.0


def _local_jacobians(wcs, x, y, scale):
    """Jacobian of pixel -> local (east, north) tangent offsets in nominal pixels, shape (N, 2, 2).

    Central differences over +-0.5 px of the full WCS (SIP included); the determinant is the
    pixel area relative to ``scale**2``.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    if n == 0:
        return np.zeros((0, 2, 2))
    delta = 0.5
    px = np.concatenate([x + delta, x - delta, x, x])
    py = np.concatenate([y, y, y + delta, y - delta])
    ra, dec = wcs.all_pix2world(px, py, 0)
    ra0, dec0 = wcs.all_pix2world(x, y, 0)
    ra0 = np.tile(ra0, 4)
    dec0 = np.tile(dec0, 4)
    to_px = 3600.0 / scale
    east = ((ra - ra0 + 180.0) % 360.0 - 180.0) * np.cos(np.deg2rad(dec0)) * to_px
    north = (dec - dec0) * to_px
    east = east.reshape(4, n)
    north = north.reshape(4, n)
    jac = np.empty((n, 2, 2))
    jac[:, 0, 0] = (east[0] - east[1]) / (2 * delta)
    jac[:, 1, 0] = (north[0] - north[1]) / (2 * delta)
    jac[:, 0, 1] = (east[2] - east[3]) / (2 * delta)
    jac[:, 1, 1] = (north[2] - north[3]) / (2 * delta)
    return jac


# =============================================================================================
# Scene: catalogue and Gaussian-mixture source profiles
# =============================================================================================


@lru_cache(maxsize=8)
def _sersic_mixture(sersic_n):
    """Gaussian mixture approximating a Sersic profile of unit r_eff, softly cut at 4-8 r_eff.

    Returns ``(amplitudes, variances, r_half)``: amplitudes sum to 1 (fractions of the total
    flux), variances in units of r_eff**2, and the half-light radius of the mixture in r_eff.
    """
    b = gammaincinv(2 * sersic_n, 0.5)
    radius = np.geomspace(1e-3, 12.0, 800)
    profile = np.exp(-b * (radius ** (1 / sersic_n) - 1))
    taper = (1 - np.clip((radius - 4.0) / 4.0, 0, 1) ** 2) ** 2  # smooth cut-off, 4 to 8 r_eff
    profile *= taper
    variances = np.geomspace(1e-4, 16.0, 22)
    design = np.exp(-(radius[:, None] ** 2) / (2 * variances)) / (2 * np.pi * variances)
    weight = radius  # flux-weighted fit in log radius
    amplitudes, _ = nnls(design * weight[:, None], profile * weight, maxiter=50_000)
    keep = amplitudes > 1e-5 * amplitudes.sum()
    amplitudes = amplitudes[keep] / amplitudes[keep].sum()
    variances = variances[keep]
    grid = np.geomspace(1e-3, 50.0, 5000)
    enclosed = (amplitudes * (1 - np.exp(-(grid[:, None] ** 2) / (2 * variances)))).sum(axis=1)
    r_half = float(np.interp(0.5, enclosed, grid))
    return amplitudes, variances, r_half


def _power_law(rng, size, low, high, index):
    """Draw from dN/dF ~ F**-index between low and high (index != 1)."""
    if low == high:
        return np.full(size, low)
    u = rng.uniform(size=size)
    e = 1.0 - index
    return (low**e + u * (high**e - low**e)) ** (1.0 / e)


def _make_catalog(rng, focal_plane, params):
    """Stars and galaxies uniform in a rectangle enclosing every dithered footprint."""
    nx, ny = focal_plane.nx, focal_plane.ny
    half_x = nx / 2
    half_y = (focal_plane.chips * ny + (focal_plane.chips - 1) * params["chip_gap"]) / 2
    sin_rotation = math.sin(math.radians(params["rotation"]))
    slack = params["dither"] + focal_plane.max_distortion_px + 10.0
    extent_x = half_x + half_y * sin_rotation + slack
    extent_y = half_y + half_x * sin_rotation + slack
    area_mpix = 4 * extent_x * extent_y / 1e6
    n_stars = params["n_stars"]
    if n_stars is None:
        n_stars = max(1, round(250 * area_mpix))
    n_galaxies = params["n_galaxies"]
    if n_galaxies is None:
        n_galaxies = round(80 * area_mpix)
    n = n_stars + n_galaxies

    fx = rng.uniform(-extent_x, extent_x, n)
    fy = rng.uniform(-extent_y, extent_y, n)
    if n_stars > 0:
        # star 0: a bright saturating star near the middle of SCI,1 in every exposure
        fx[0] = rng.uniform(-nx / 4, nx / 4)
        fy[0] = focal_plane.chip_center_y[0] + rng.uniform(-ny / 4, ny / 4)
    theta = params["orientation"]
    plane = np.outer(fx, _x_axis(theta)) + np.outer(fy, _y_axis(theta))
    ra, dec = focal_plane.plane_to_sky(plane[:, 0], plane[:, 1])

    flux = np.empty(n)
    flux[:n_stars] = _power_law(rng, n_stars, *params["star_flux_range"], 1.8)
    if n_stars > 0:
        flux[0] = params["star_flux_range"][1]
    flux[n_stars:] = _power_law(rng, n_galaxies, *params["galaxy_flux_range"], 2.0)

    is_galaxy = np.arange(n) >= n_stars
    sersic_n = np.where(rng.uniform(size=n) < 0.7, 1.0, 4.0)
    low, high = params["galaxy_reff_range"]
    r_eff_pix = np.exp(rng.uniform(math.log(low), math.log(high), n))
    axis_ratio = rng.uniform(0.3, 1.0, n)
    position_angle = rng.uniform(0.0, 180.0, n)
    sersic_n[~is_galaxy] = 0.0
    r_eff_pix[~is_galaxy] = 0.0
    axis_ratio[~is_galaxy] = 1.0
    position_angle[~is_galaxy] = 0.0
    r_half_pix = np.zeros(n)
    for index in np.flatnonzero(is_galaxy):
        r_half_pix[index] = r_eff_pix[index] * _sersic_mixture(sersic_n[index])[2]

    table = Table()
    table["id"] = np.arange(n, dtype=np.int64)
    table["type"] = np.where(is_galaxy, "galaxy", "star")
    table["ra"] = ra
    table["dec"] = dec
    table["flux"] = flux
    table["sersic_n"] = sersic_n
    table["r_eff"] = r_eff_pix * params["pixel_scale"]
    table["r_eff_pix"] = r_eff_pix
    table["r_half_pix"] = r_half_pix
    table["axis_ratio"] = axis_ratio
    table["position_angle"] = position_angle
    table["ra"].unit = table["dec"].unit = "deg"
    table["flux"].unit = "electron / s"
    table["r_eff"].unit = "arcsec"
    table["r_eff_pix"].unit = table["r_half_pix"].unit = "pixel"
    table["position_angle"].unit = "deg"
    return table


@dataclass
class _Components:
    """Flattened Gaussian components of all sources (covariances on the local sky, nominal px)."""

    source: np.ndarray  # index of the source of each component
    fraction: np.ndarray  # fraction of the source flux
    covariance: np.ndarray  # (K, 2, 2) in (east, north) nominal pixels squared
    n_sigma: np.ndarray  # stamp half-size in sigma so the lost flux stays below the budget
    reach: np.ndarray  # per source: largest stamp half-size in nominal pixels


def _psf_components(params):
    sigma = params["psf_fwhm"] / (2 * math.sqrt(2 * math.log(2)))
    halo = params["psf_halo_fraction"]
    weights = [1.0 - halo]
    variances = [sigma**2]
    if halo > 0:
        weights.append(halo)
        variances.append((3 * sigma) ** 2)
    return np.array(weights), np.array(variances)


def _source_components(catalog, params):
    psf_weights, psf_variances = _psf_components(params)
    sources, fractions, covariances = [], [], []
    for index, row in enumerate(catalog):
        if row["type"] == "star":
            for weight, variance in zip(psf_weights, psf_variances):
                sources.append(index)
                fractions.append(weight)
                covariances.append(variance * np.eye(2))
            continue
        amplitudes, variances, _ = _sersic_mixture(float(row["sersic_n"]))
        pa = math.radians(row["position_angle"])
        major = np.array([math.sin(pa), math.cos(pa)])  # (east, north)
        minor = np.array([math.cos(pa), -math.sin(pa)])
        shape = np.outer(major, major) + row["axis_ratio"] ** 2 * np.outer(minor, minor)
        for amplitude, variance in zip(amplitudes, variances):
            galaxy_cov = variance * row["r_eff_pix"] ** 2 * shape
            for weight, psf_variance in zip(psf_weights, psf_variances):
                sources.append(index)
                fractions.append(amplitude * weight)
                covariances.append(galaxy_cov + psf_variance * np.eye(2))
    source = np.array(sources, dtype=np.int64)
    fraction = np.array(fractions)
    covariance = np.array(covariances).reshape(-1, 2, 2)
    # square stamp of half-size n*sigma per axis loses ~4*Phi(-n) of the component's flux
    n_sigma = np.clip(ndtri(1 - FLUX_TRUNCATION / (4 * np.maximum(fraction, 1e-30))), 2.0, 7.0)
    sigma_max = np.sqrt(np.linalg.eigvalsh(covariance)[:, 1])
    reach = np.zeros(len(catalog))
    np.maximum.at(reach, source, n_sigma * sigma_max + 1.0)
    return _Components(source, fraction, covariance, n_sigma, reach)


# =============================================================================================
# Rendering
# =============================================================================================


def _render_gaussians(image, x, y, covariance, amplitude, n_sigma):
    """Add pixel-integrated 2-D Gaussians to ``image`` in place.

    Parameters
    ----------
    image : ndarray, float64, shape (ny, nx)
        Accumulator; pixel ``(j, i)`` covers ``[i-0.5, i+0.5] x [j-0.5, j+0.5]``.
    x, y : ndarray
        0-based centres in pixels.
    covariance : ndarray, shape (N, 2, 2)
        Covariances in pixels squared, ``[[cxx, cxy], [cxy, cyy]]``.
    amplitude : ndarray
        Integral of each Gaussian over the plane (image units).
    n_sigma : ndarray
        Stamp half-size in marginal sigmas.
    """
    if len(x) == 0:
        return
    cxx = covariance[:, 0, 0]
    cyy = covariance[:, 1, 1]
    cxy = covariance[:, 0, 1]
    det = cxx * cyy - cxy**2
    half_trace = 0.5 * (cxx + cyy)
    sigma_min = np.sqrt(half_trace - np.sqrt(np.maximum(half_trace**2 - det, 0.0)))
    half = np.ceil(n_sigma * np.sqrt(np.maximum(cxx, cyy)) + 0.5).astype(np.int64)
    # round large stamps up to a ladder of sizes 12% apart, so that sources are evaluated in
    # a few vectorised groups of equal stamp size
    ladder = 8.0 * 1.12 ** np.ceil(np.log(np.maximum(half, 8) / 8.0) / np.log(1.12) - 1e-9)
    half = np.where(half > 8, np.ceil(ladder), half).astype(np.int64)
    oversample = np.clip(np.ceil(SUBSAMPLES_PER_SIGMA / sigma_min), 1, MAX_SUBSAMPLING).astype(
        np.int64
    )
    ny, nx = image.shape
    flat = image.reshape(-1)
    keys = half * (MAX_SUBSAMPLING + 1) + oversample
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        h = int(key // (MAX_SUBSAMPLING + 1))
        os_ = int(key % (MAX_SUBSAMPLING + 1))
        width = 2 * h + 1
        samples = width * os_
        sub = (np.arange(os_) + 0.5) / os_ - 0.5
        grid = ((np.arange(width) - h)[:, None] + sub[None, :]).reshape(-1)
        chunk = max(1, STAMP_CHUNK_ELEMENTS // (samples * samples))
        for start in range(0, members.size, chunk):
            idx = members[start : start + chunk]
            ix0 = np.rint(x[idx]).astype(np.int64)
            iy0 = np.rint(y[idx]).astype(np.int64)
            inside = (ix0 + h >= 0) & (ix0 - h < nx) & (iy0 + h >= 0) & (iy0 - h < ny)
            if not inside.any():
                continue
            idx, ix0, iy0 = idx[inside], ix0[inside], iy0[inside]
            dx = (ix0 - x[idx])[:, None] + grid[None, :]
            dy = (iy0 - y[idx])[:, None] + grid[None, :]
            inv_xx = (cyy[idx] / det[idx])[:, None, None]
            inv_yy = (cxx[idx] / det[idx])[:, None, None]
            inv_xy = (-cxy[idx] / det[idx])[:, None, None]
            dxb = dx[:, None, :]
            dyb = dy[:, :, None]
            quad = inv_xx * dxb * dxb + 2.0 * inv_xy * dxb * dyb + inv_yy * dyb * dyb
            norm = amplitude[idx] / (2 * np.pi * np.sqrt(det[idx]) * os_ * os_)
            values = np.exp(-0.5 * quad) * norm[:, None, None]
            values = values.reshape(idx.size, width, os_, width, os_).sum(axis=(2, 4))
            offsets = np.arange(width) - h
            cols = ix0[:, None] + offsets[None, :]
            rows = iy0[:, None] + offsets[None, :]
            valid = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[
                :, None, :
            ]
            flat_index = rows[:, :, None] * nx + cols[:, None, :]
            np.add.at(flat, flat_index[valid], values[valid])


def _place_on_grid(wcs, shape, ra, dec, reach, linear_slack, scale):
    """Sources whose stamps touch a pixel grid.

    ``reach`` is each source's stamp half-size in pixels of this grid, ``linear_slack`` the
    largest distortion (pixels) ignored by the cheap linear first cut. Returns the indices of
    the touching sources, their 0-based positions and the Jacobians of pixel -> local sky in
    nominal pixels of ``scale`` arcsec.
    """
    ny, nx = shape
    x_lin, y_lin = wcs.wcs_world2pix(ra, dec, 0)  # no SIP: a cheap first cut
    limit = reach + linear_slack + 2.0
    near = (x_lin > -limit) & (x_lin < nx - 1 + limit) & (y_lin > -limit) & (y_lin < ny - 1 + limit)
    index = np.flatnonzero(near)
    if index.size == 0:
        return index, np.zeros(0), np.zeros(0), np.zeros((0, 2, 2))
    x, y = wcs.all_world2pix(ra[index], dec[index], 0, tolerance=1e-9, maxiter=100, quiet=True)
    limit = reach[index] + 1.0
    touching = (x > -limit) & (x < nx - 1 + limit) & (y > -limit) & (y < ny - 1 + limit)
    index, x, y = index[touching], x[touching], y[touching]
    jacobian = _local_jacobians(wcs, x, y, scale)
    return index, x, y, jacobian


def _render_sources(shape, index, x, y, jacobian, source_amplitude, components):
    """Render the sources ``index`` (positions, Jacobians) with total amplitudes per source."""
    image = np.zeros(shape)
    if index.size == 0:
        return image
    position = np.full(components.reach.size, -1, np.int64)
    position[index] = np.arange(index.size)
    comp = np.flatnonzero(position[components.source] >= 0)
    where = position[components.source[comp]]
    inverse = np.linalg.inv(jacobian)[where]
    cov_pix = inverse @ components.covariance[comp] @ np.transpose(inverse, (0, 2, 1))
    amplitude = source_amplitude[where] * components.fraction[comp]
    _render_gaussians(image, x[where], y[where], cov_pix, amplitude, components.n_sigma[comp])
    return image


# =============================================================================================
# Detector effects: cosmic rays, defects, saturation
# =============================================================================================


def _cosmic_ray_deposits(rng, shape, fraction):
    """Cosmic-ray charge per pixel (int32 electrons) covering about ``fraction`` of the pixels."""
    ny, nx = shape
    npix = ny * nx
    target = fraction * npix
    total = np.zeros(npix)
    covered = 0
    while covered < target:
        batch = max(32, int((target - covered) / 6) + 1)
        event, pixel, charge = _cosmic_ray_events(rng, batch, nx, ny)
        key = event * npix + pixel
        unique_key, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=charge)
        owner = unique_key // npix
        footprint = np.bincount(owner[summed >= 0.5], minlength=batch)
        cumulative = np.cumsum(footprint)
        n_take = min(int(np.searchsorted(cumulative, target - covered)) + 1, batch)
        chosen = owner < n_take
        np.add.at(total, unique_key[chosen] % npix, summed[chosen])
        covered += int(cumulative[n_take - 1])
    return np.rint(total).astype(np.int32).reshape(shape)


def _cosmic_ray_events(rng, n, nx, ny):
    """Charge deposits of ``n`` cosmic rays: (event index, flat pixel index, electrons)."""
    x_center = rng.uniform(-0.5, nx - 0.5, n)
    y_center = rng.uniform(-0.5, ny - 0.5, n)
    # isotropic flux through a plane: sin^2(theta) uniform
    u = rng.uniform(0.0, 0.999999, n)
    tan_theta = np.sqrt(u / (1.0 - u))
    length = np.minimum(tan_theta * PIXEL_THICKNESS_UM / PIXEL_PITCH_UM, CR_MAX_TRACK)  # px
    direction = rng.uniform(0.0, 2 * np.pi, n)
    mpv_per_um = CR_CHARGE_MPV / PIXEL_THICKNESS_UM
    dedx = moyal.rvs(mpv_per_um, CR_CHARGE_WIDTH * mpv_per_um, size=n, random_state=rng)
    dedx = np.clip(dedx, 0.2 * mpv_per_um, 50 * mpv_per_um)  # e-/um
    path = np.hypot(PIXEL_THICKNESS_UM, length * PIXEL_PITCH_UM)  # um through the silicon
    charge = dedx * path
    n_samples = np.maximum(1, np.ceil(CR_SAMPLES_PER_PIXEL * length)).astype(np.int64)
    event = np.repeat(np.arange(n), n_samples)
    first = np.cumsum(n_samples) - n_samples
    step = np.arange(event.size) - np.repeat(first, n_samples)
    along = ((step + 0.5) / n_samples[event] - 0.5) * length[event]
    xs = x_center[event] + along * np.cos(direction[event])
    ys = y_center[event] + along * np.sin(direction[event])
    qs = charge[event] / n_samples[event]
    # Gaussian charge cloud integrated over the 3x3 pixels around each sample; its width
    # depends on where in the silicon the charge was freed, so it varies from event to event
    cloud = rng.uniform(CR_CLOUD_SIGMA[0], CR_CLOUD_SIGMA[1], n)[event][:, None]
    ix = np.rint(xs).astype(np.int64)
    iy = np.rint(ys).astype(np.int64)
    offsets = np.array([-1, 0, 1])
    wx = ndtr((ix[:, None] + offsets + 0.5 - xs[:, None]) / cloud) - ndtr(
        (ix[:, None] + offsets - 0.5 - xs[:, None]) / cloud
    )
    wy = ndtr((iy[:, None] + offsets + 0.5 - ys[:, None]) / cloud) - ndtr(
        (iy[:, None] + offsets - 0.5 - ys[:, None]) / cloud
    )
    wx /= wx.sum(axis=1, keepdims=True)
    wy /= wy.sum(axis=1, keepdims=True)
    weights = wy[:, :, None] * wx[:, None, :]  # (S, 3, 3)
    cols = ix[:, None, None] + offsets[None, None, :]
    rows = iy[:, None, None] + offsets[None, :, None]
    valid = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
    pixel = (rows * nx + cols)[valid]
    deposit = (qs[:, None, None] * weights)[valid]
    owner = np.broadcast_to(event[:, None, None], valid.shape)[valid]
    return owner, pixel, deposit


@dataclass
class _Defects:
    dq: np.ndarray  # int16 DQ bits of the defects
    excess_rate: np.ndarray  # float32, extra dark current of hot/warm pixels, e-/s
    column_offset: np.ndarray  # float32, constant offset of bad-column pixels, e-


def _detector_defects(rng, params, ccdchip):
    """Hot, warm pixels and bad columns of one chip (fixed for all exposures)."""
    ny, nx = params["shape"]
    npix = ny * nx
    dq = np.zeros(npix, np.int16)
    excess = np.zeros(npix, np.float32)
    n_hot = int(round(params["hot_pixel_fraction"] * npix))
    n_warm = int(round(params["warm_pixel_fraction"] * npix))
    chosen = rng.choice(npix, size=n_hot + n_warm, replace=False)
    hot, warm = chosen[:n_hot], chosen[n_hot:]
    dq[hot] |= DQ_HOT_PIXEL
    dq[warm] |= DQ_WARM_PIXEL
    # residual dark after subtracting the reference dark: hot ~0.1-1 e-/s, warm ~0.01 e-/s
    excess[hot] = rng.lognormal(math.log(0.3), 0.8, n_hot)
    excess[warm] = rng.lognormal(math.log(0.015), 0.5, n_warm)
    dq = dq.reshape(ny, nx)
    offset = np.zeros((ny, nx), np.float32)
    columns = rng.choice(nx, size=params["bad_columns"], replace=False)
    for column in columns:
        # a trap at row y0 spoils the charge transferred through it, i.e. the column from y0 to
        # the end away from the amplifiers (UVIS reads CCDCHIP 1 at the top, CCDCHIP 2 at the
        # bottom); half of the bad columns are bad over their full length
        trap = int(rng.integers(0, ny)) if rng.uniform() < 0.5 else None
        magnitude = rng.uniform(100.0, 400.0) * rng.choice([-1.0, 1.0])
        if ccdchip == 1:
            rows = slice(0, ny if trap is None else trap + 1)
        else:
            rows = slice(0 if trap is None else trap, ny)
        dq[rows, column] |= DQ_BAD_DETECTOR_PIXEL
        offset[rows, column] = magnitude
    return _Defects(dq, excess.reshape(ny, nx), offset)


def _fill_column(column, touched, start, step, amount, full_well):
    """Spill ``amount`` electrons along ``column`` from ``start`` in direction ``step``.

    Pixels fill up to ``full_well`` one after the other; every pixel that receives charge is
    marked in ``touched``. Returns the charge left when the column end is reached.
    """
    if amount <= 0:
        return 0.0
    stop = column.size if step > 0 else -1
    indices = np.arange(start, stop, step)
    if indices.size == 0:
        return amount
    capacity = np.maximum(full_well - column[indices], 0.0)
    cumulative = np.cumsum(capacity)
    n_full = int(np.searchsorted(cumulative, amount, side="right"))
    column[indices[:n_full]] = full_well
    touched[indices[:n_full]] = True
    if n_full == indices.size:
        return amount - cumulative[-1]
    already = cumulative[n_full - 1] if n_full > 0 else 0.0
    column[indices[n_full]] += amount - already
    touched[indices[n_full]] = True
    return 0.0


def _bleed(charge, full_well):
    """Clip charge at full well and spill the excess up and down its column (in place).

    Charge is conserved except what runs off the ends of the column. Returns the mask of the
    saturated pixels: those clipped and every pixel of the bleed trails, including the partly
    filled pixel at each end (below full well but carrying spilled charge).
    """
    saturated = charge > full_well
    for c in np.flatnonzero(saturated.any(axis=0)):
        column = charge[:, c].copy()
        touched = saturated[:, c].copy()
        edges = np.flatnonzero(np.diff(np.concatenate(([0], touched.astype(np.int8), [0]))))
        for low, high in zip(edges[0::2], edges[1::2]):
            excess = float((column[low:high] - full_well).sum())
            column[low:high] = full_well
            left_up = _fill_column(column, touched, high, 1, excess / 2, full_well)
            left_down = _fill_column(column, touched, low - 1, -1, excess / 2 + left_up, full_well)
            if left_down > 0:  # bottom edge reached: give the rest to the upper side
                _fill_column(column, touched, high, 1, left_down, full_well)
        charge[:, c] = column
        saturated[:, c] = touched
    return saturated


# =============================================================================================
# Exposures
# =============================================================================================


@dataclass
class _ExposurePlan:
    index: int
    rootname: str
    offset: tuple
    rotation: float
    sky: float
    expstart: float
    rng: np.random.Generator
    headers: list
    wcs: list


def _plan_exposure(index, rootname, focal_plane, params):
    rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(2, index)))
    if index == 0:
        offset, rotation = (0.0, 0.0), 0.0
        rng.uniform(size=3)  # keep the stream layout identical to the other exposures
    else:
        offset = tuple(rng.uniform(-params["dither"], params["dither"], 2))
        rotation = float(rng.uniform(-params["rotation"], params["rotation"]))
    sky = float(rng.uniform(*params["sky_range"]))
    headers = [focal_plane.chip_header(k, offset, rotation) for k in range(params["chips"])]
    wcs = [focal_plane.chip_wcs(header) for header in headers]
    # one orbit-like cadence: exposure plus 300 s of overheads
    expstart = 60000.0 + index * (params["exptime"] + 300.0) / 86400.0
    return _ExposurePlan(index, rootname, offset, rotation, sky, expstart, rng, headers, wcs)


def _simulate_exposure(plan, catalog, components, defects, focal_plane, params):
    rng = plan.rng
    exptime = params["exptime"]
    full_well = params["full_well"]
    dark = params["dark_rate"] * exptime
    flux = np.asarray(catalog["flux"], float)
    ra = np.asarray(catalog["ra"], float)
    dec = np.asarray(catalog["dec"], float)
    saturated = np.zeros(len(catalog), bool)
    on_chip_count = np.zeros(len(catalog), np.int32)
    rows = []
    science, truth = [], []
    for k in range(params["chips"]):
        shape = params["shape"]
        ny, nx = shape
        wcs = plan.wcs[k]
        index, x, y, jacobian = _place_on_grid(
            wcs,
            shape,
            ra,
            dec,
            components.reach,
            focal_plane.max_distortion_px,
            params["pixel_scale"],
        )
        area = np.abs(np.linalg.det(jacobian)) if index.size else np.zeros(0)
        counts = flux[index] * exptime / np.maximum(area, 1e-12)
        expected = _render_sources(shape, index, x, y, jacobian, counts, components)
        expected += plan.sky  # mean of the dark-subtracted, flat-fielded data
        physical = expected + (dark + defects[k].excess_rate * exptime)  # mean collected charge

        on_chip = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        peak = np.zeros(index.size)
        if index.size:
            ix = np.clip(np.rint(x).astype(np.int64), 0, nx - 1)
            iy = np.clip(np.rint(y).astype(np.int64), 0, ny - 1)
            peak = physical[iy, ix]
        source_saturated = on_chip & (peak >= full_well)
        saturated[index[source_saturated]] = True
        on_chip_count[index[on_chip]] += 1
        for i in range(index.size):
            rows.append(
                (plan.rootname, k + 1, focal_plane.ccdchip[k], int(index[i]), x[i], y[i],
                 area[i], counts[i], bool(on_chip[i]), bool(source_saturated[i]))
            )  # fmt: skip

        read_noise = _read_noise_row(nx, focal_plane.ccdchip[k])
        err = np.sqrt(np.minimum(physical, full_well) + read_noise**2).astype(np.float32)
        charge = rng.poisson(physical).astype(np.float64)
        del physical
        cr_deposit = _cosmic_ray_deposits(rng, shape, params["cr_fraction"])
        charge += cr_deposit
        saturated_pixels = _bleed(charge, full_well)
        # read out: read noise per amplifier, then the mean dark is subtracted by calibration
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= read_noise.astype(np.float32)
        charge += noise
        del noise
        charge -= dark
        charge += defects[k].column_offset
        data = charge.astype(np.float32)
        del charge
        dq = defects[k].dq | np.where(saturated_pixels, DQ_SATURATED, 0).astype(np.int16)
        science.append((data, err, dq.astype(np.int16)))
        truth.append((cr_deposit, expected.astype(np.float32)))
        del expected

    hdus = _flt_hdulist(plan, science, focal_plane, params)
    truth_hdus = _truth_hdulist(plan, truth, params)
    return hdus, truth_hdus, rows, saturated, on_chip_count


def _read_noise_row(nx, ccdchip):
    """Read noise (e-) of each column: the left and right halves are read by two amplifiers."""
    left, right = UVIS_AMPLIFIERS[ccdchip]
    noise = np.empty(nx)
    noise[: nx // 2] = UVIS_READ_NOISE[left]
    noise[nx // 2 :] = UVIS_READ_NOISE[right]
    return noise


# =============================================================================================
# FITS headers and files
# =============================================================================================


def _primary_header(plan, focal_plane, params):
    exptime = params["exptime"]
    expend = plan.expstart + exptime / 86400.0
    start = Time(plan.expstart, format="mjd", scale="utc").isot
    center = focal_plane.pointing_center(plan.offset)
    ra_aper, dec_aper = focal_plane.plane_to_sky(*center)
    first = plan.headers[0]
    orientat = math.degrees(math.atan2(first["CD1_2"], first["CD2_2"]))
    v2, v3 = UVIS_V2V3_REF[focal_plane.ccdchip[0]]
    pa_v3 = _pa_v3_for(orientat, first["CRVAL2"], v2, v3, UVIS_IDCTHETA)
    full_frame = params["shape"] == UVIS_FULL_CHIP_SHAPE and params["chips"] == 2

    h = fits.Header()
    h["NEXTEND"] = (3 * params["chips"], "Number of standard extensions")
    h["FILENAME"] = (f"{plan.rootname}_flt.fits", "name of file")
    h["FILETYPE"] = ("SCI", "type of data found in data file")
    h["TELESCOP"] = ("HST", "telescope used to acquire data")
    h["INSTRUME"] = ("WFC3", "identifier for instrument used to acquire data")
    h["EQUINOX"] = (2000.0, "equinox of celestial coord. system")
    h["ROOTNAME"] = (plan.rootname, "rootname of the observation set")
    h["IMAGETYP"] = ("EXT", "type of exposure identifier")
    h["PRIMESI"] = ("WFC3", "instrument designated as prime")
    h["TARGNAME"] = ("SIMULATED-FIELD", "proposer's target name")
    h["RA_TARG"] = (params["ra"], "right ascension of the target (deg) (J2000)")
    h["DEC_TARG"] = (params["dec"], "declination of the target (deg) (J2000)")
    h["PROPOSID"] = (0, "PEP proposal identifier")
    h["DATE-OBS"] = (start[:10], "UT date of start of observation (yyyy-mm-dd)")
    h["TIME-OBS"] = (start[11:19], "UT time of start of observation (hh:mm:ss)")
    h["EXPSTART"] = (plan.expstart, "exposure start time (Modified Julian Date)")
    h["EXPEND"] = (expend, "exposure end time (Modified Julian Date)")
    h["EXPTIME"] = (exptime, "exposure duration (seconds)--calculated")
    h["EXPFLAG"] = ("NORMAL", "Exposure interruption indicator")
    h["DARKTIME"] = (exptime, "fiducial pixel dark time (secs)")
    h["PA_V3"] = (pa_v3, "position angle of V3-axis of HST (deg)")
    h["POSTARG1"] = (plan.offset[0] * params["pixel_scale"], "POSTARG in axis 1 direction")
    h["POSTARG2"] = (plan.offset[1] * params["pixel_scale"], "POSTARG in axis 2 direction")
    h["OBSTYPE"] = ("IMAGING", "observation type - imaging or spectroscopic")
    h["OBSMODE"] = ("ACCUM", "operating mode")
    h["SCLAMP"] = ("NONE", "lamp status, NONE or name of lamp which is on")
    h["NRPTEXP"] = (1, "number of repeat exposures in set: default 1")
    h["SUBARRAY"] = (not full_frame, "data from a subarray (T) or full frame (F)")
    h["DETECTOR"] = ("UVIS", "detector in use: UVIS or IR")
    h["FILTER"] = (FILTER_NAME, "element selected from filter wheel")
    h["APERTURE"] = ("UVIS" if params["chips"] == 2 else "UVIS1", "aperture name")
    h["CTEDIR"] = ("NONE", "CTE measurement direction: serial or parallel")
    h["CRSPLIT"] = (1, "number of cosmic ray split exposures")
    for switch in ("DQICORR", "BLEVCORR", "BIASCORR", "DARKCORR", "FLATCORR", "PHOTCORR"):
        h[switch] = ("COMPLETE", "calibration switch")
    h["CRCORR"] = ("OMIT", "combine observations to reject cosmic rays")
    h["DRIZCORR"] = ("PERFORM", "drizzle processing")
    for reference in ("BPIXTAB", "CCDTAB", "BIASFILE", "DARKFILE", "PFLTFILE", "IMPHTTAB"):
        h[reference] = ("N/A", "calibration reference file (simulated data)")
    h["IDCTAB"] = ("N/A", "no IDCTAB: the header SIP is the distortion")
    h["DGEOFILE"] = ("N/A", "Distortion correction image")
    h["MDRIZTAB"] = ("N/A", "MultiDrizzle parameter table")
    h["D2IMFILE"] = ("N/A", "origin of detector to image correction")
    h["NPOLFILE"] = ("N/A", "origin of non-polynomial distortion model")
    h["PHOTMODE"] = (f"WFC3 UVIS1 {FILTER_NAME}", "observation configuration for photometry")
    for key, value in PHOTOMETRY.items():
        h[key] = value
    h["CCDAMP"] = ("ABCD" if params["chips"] == 2 else "AB", "CCD Amplifier Readout Config")
    h["CCDGAIN"] = (1.5, "commanded gain of CCD")
    for amp in "ABCD":
        h[f"ATODGN{amp}"] = (UVIS_GAIN, f"calibrated gain for amplifier {amp}")
    for amp in "ABCD":
        h[f"READNSE{amp}"] = (UVIS_READ_NOISE[amp], f"calibrated read noise for amplifier {amp}")
    h["ORIGIN"] = ("drizzlepipe.simulator", "simulated data: see truth/ next to this file")
    h["SIMSEED"] = (params["seed"], "seed of the simulation")
    h["SIMINDEX"] = (plan.index, "index of this exposure in the simulation")
    h["SIMSKY"] = (plan.sky, "true sky of this exposure, electrons per pixel")
    return h, ra_aper, dec_aper


def _extension_header(plan, k, focal_plane, params, extname, ra_aper, dec_aper):
    ny, nx = params["shape"]
    h = fits.Header()
    h["INHERIT"] = (True, "inherit the primary header")
    h["ROOTNAME"] = (plan.rootname, "rootname of the observation set")
    h["EXPNAME"] = (plan.rootname, "exposure identifier")
    h["BUNIT"] = ("UNITLESS" if extname == "DQ" else "ELECTRONS", "brightness units")
    if extname == "SCI":
        h["CCDCHIP"] = (focal_plane.ccdchip[k], "CCD chip (1 or 2)")
    h["LTV1"] = (0.0, "offset in X to subsection start")
    h["LTV2"] = (0.0, "offset in Y to subsection start")
    h["LTM1_1"] = (1.0, "reciprocal of sampling rate in X")
    h["LTM2_2"] = (1.0, "reciprocal of sampling rate in Y")
    wcs_header = plan.headers[k]
    orientat = math.degrees(math.atan2(wcs_header["CD1_2"], wcs_header["CD2_2"]))
    h["PA_APER"] = (orientat, "Position Angle of reference aperture (deg)")
    h["VAFACTOR"] = (1.0, "velocity aberration plate scale factor")
    if extname == "SCI":
        h["ORIENTAT"] = (orientat, "position angle of image y axis (deg. e of n)")
        h["RA_APER"] = (float(ra_aper), "RA of aperture reference position")
        h["DEC_APER"] = (float(dec_aper), "Declination of aperture reference position")
        h["NCOMBINE"] = (1, "number of image sets combined")
        h["PHOTMODE"] = (
            f"WFC3 UVIS{focal_plane.ccdchip[k]} {FILTER_NAME}",
            "observation configuration for photometry",
        )
        for key, value in PHOTOMETRY.items():
            h[key] = value
        h["CENTERA1"] = (nx // 2 + 1, "subarray axis1 center pt in unbinned dect. pix")
        h["CENTERA2"] = (ny // 2 + 1, "subarray axis2 center pt in unbinned dect. pix")
        h["SIZAXIS1"] = (nx, "subarray axis1 size in unbinned detector pixels")
        h["SIZAXIS2"] = (ny, "subarray axis2 size in unbinned detector pixels")
        h["BINAXIS1"] = (1, "axis1 data bin size in unbinned detector pixels")
        h["BINAXIS2"] = (1, "axis2 data bin size in unbinned detector pixels")
        h["SDQFLAGS"] = (UVIS_SDQFLAGS, "serious data quality flags")
        h["MEANDARK"] = (params["dark_rate"] * params["exptime"], "average of the dark values "
                         "subtracted")  # fmt: skip
        h["MEANBLEV"] = (0.0, "average of all bias levels subtracted")
    h.extend(wcs_header)
    if extname == "SCI":
        v2, v3 = UVIS_V2V3_REF[focal_plane.ccdchip[k]]
        h["IDCSCALE"] = (params["pixel_scale"], "pixel scale from the IDCTAB reference file")
        h["IDCTHETA"] = (UVIS_IDCTHETA, "orientation of detector's Y-axis w.r.t. V3 axis")
        h["IDCXREF"] = (wcs_header["CRPIX1"], "reference pixel location in X")
        h["IDCYREF"] = (wcs_header["CRPIX2"], "reference pixel location in Y")
        h["IDCV2REF"] = (v2, "reference pixel's V2 position")
        h["IDCV3REF"] = (v3, "reference pixel's V3 position")
    return h


def _flt_hdulist(plan, science, focal_plane, params):
    primary, ra_aper, dec_aper = _primary_header(plan, focal_plane, params)
    hdus = [fits.PrimaryHDU(header=primary)]
    for k, (data, err, dq) in enumerate(science):
        good = (dq & UVIS_SDQFLAGS) == 0
        headers = {
            name: _extension_header(plan, k, focal_plane, params, name, ra_aper, dec_aper)
            for name in ("SCI", "ERR", "DQ")
        }
        n_good = int(good.sum())
        for name in ("SCI", "ERR"):
            values = (data if name == "SCI" else err)[good]
            headers[name]["NGOODPIX"] = (n_good, "number of good pixels")
            if n_good:
                headers[name]["GOODMIN"] = (float(values.min()), "minimum value of good pixels")
                headers[name]["GOODMAX"] = (float(values.max()), "maximum value of good pixels")
                headers[name]["GOODMEAN"] = (float(values.mean()), "mean value of good pixels")
        headers["DQ"]["NGOODPIX"] = (n_good, "number of good pixels")
        hdus.append(fits.ImageHDU(data, headers["SCI"], name="SCI", ver=k + 1))
        hdus.append(fits.ImageHDU(err, headers["ERR"], name="ERR", ver=k + 1))
        hdus.append(fits.ImageHDU(dq, headers["DQ"], name="DQ", ver=k + 1))
    return fits.HDUList(hdus)


def _truth_hdulist(plan, truth, params):
    primary = fits.Header()
    primary["ROOTNAME"] = (plan.rootname, "exposure these truths belong to")
    primary["EXPTIME"] = (params["exptime"], "exposure time (s)")
    primary["SKY"] = (plan.sky, "sky, electrons per pixel")
    primary["DITHERX"] = (plan.offset[0], "dither offset along chip x (pixels)")
    primary["DITHERY"] = (plan.offset[1], "dither offset along chip y (pixels)")
    primary["ROTATION"] = (plan.rotation, "rotation relative to the first exposure (deg)")
    primary["COMMENT"] = "CRDEP: cosmic-ray charge per pixel (e-); the CR mask is CRDEP > 0."
    primary["COMMENT"] = "MODEL: noiseless expected SCI (e-): scene + sky, before saturation."
    hdus = [fits.PrimaryHDU(header=primary)]
    for k, (deposit, model) in enumerate(truth):
        cr_header = fits.Header()
        cr_header["BUNIT"] = ("ELECTRONS", "cosmic-ray charge")
        cr_header["NCRPIX"] = (int(np.count_nonzero(deposit)), "pixels with CR charge")
        hdus.append(fits.CompImageHDU(deposit, cr_header, name="CRDEP", compression_type="RICE_1"))
        hdus[-1].header["EXTVER"] = k + 1
        if params["write_models"]:
            model_header = fits.Header()
            model_header["BUNIT"] = ("ELECTRONS", "noiseless expected counts")
            hdus.append(fits.ImageHDU(model, model_header, name="MODEL", ver=k + 1))
    return fits.HDUList(hdus)


def _write_defects(path, defects):
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["COMMENT"] = "DEFECTS: DQ bits of the injected detector defects, per chip."
    for k, defect in enumerate(defects):
        hdu = fits.CompImageHDU(defect.dq, name="DEFECTS", compression_type="RICE_1")
        hdu.header["EXTVER"] = k + 1
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


# =============================================================================================
# Truth scene and tables
# =============================================================================================


def _truth_grid(plans, focal_plane, params):
    """TAN grid at the field centre, oriented like the first exposure, covering every chip."""
    scale = params["truth_scale"]
    theta = params["orientation"]
    cd = scale / 3600.0 * np.array(
        [[-math.cos(math.radians(theta)), math.sin(math.radians(theta))],
         [math.sin(math.radians(theta)), math.cos(math.radians(theta))]]
    )  # fmt: skip
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [params["ra"], params["dec"]]
    wcs.wcs.crpix = [0.0, 0.0]
    wcs.wcs.cd = cd
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.cunit = ["deg", "deg"]
    ny, nx = params["shape"]
    edge_x = np.concatenate([np.linspace(-0.5, nx - 0.5, 21), np.full(21, nx - 0.5),
                             np.linspace(nx - 0.5, -0.5, 21), np.full(21, -0.5)])  # fmt: skip
    edge_y = np.concatenate([np.full(21, -0.5), np.linspace(-0.5, ny - 0.5, 21),
                             np.full(21, ny - 0.5), np.linspace(ny - 0.5, -0.5, 21)])  # fmt: skip
    xs, ys = [], []
    for plan in plans:
        for chip_wcs in plan.wcs:
            ra, dec = chip_wcs.all_pix2world(edge_x, edge_y, 0)
            x, y = wcs.wcs_world2pix(ra, dec, 0)
            xs.append(x)
            ys.append(y)
    xs = np.concatenate(xs)
    ys = np.concatenate(ys)
    margin = 10
    nx_truth = int(np.ceil(xs.max() - xs.min())) + 2 * margin
    ny_truth = int(np.ceil(ys.max() - ys.min())) + 2 * margin
    # shift so that the lowest footprint corner is ``margin`` pixels inside the grid
    wcs.wcs.crpix = [1.0 - xs.min() + margin, 1.0 - ys.min() + margin]
    wcs.wcs.set()
    wcs.pixel_shape = (nx_truth, ny_truth)
    return wcs, (ny_truth, nx_truth)


def _render_truth_scene(wcs, shape, catalog, components, params):
    """Noiseless scene in e-/s per truth pixel, and the 0-based truth-grid position of sources."""
    ra = np.asarray(catalog["ra"], float)
    dec = np.asarray(catalog["dec"], float)
    x_all, y_all = wcs.wcs_world2pix(ra, dec, 0)
    reach = components.reach * params["pixel_scale"] / params["truth_scale"]
    index, x, y, jacobian = _place_on_grid(wcs, shape, ra, dec, reach, 0.0, params["pixel_scale"])
    flux = np.asarray(catalog["flux"], float)[index]
    # amplitude = flux: the mixture integrates to one over the truth pixels it covers
    scene = _render_sources(shape, index, x, y, jacobian, flux, components)
    return scene, x_all, y_all


def _write_scene(path, scene, wcs, params):
    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRPIX1"] = float(wcs.wcs.crpix[0])
    header["CRPIX2"] = float(wcs.wcs.crpix[1])
    header["CRVAL1"] = float(wcs.wcs.crval[0])
    header["CRVAL2"] = float(wcs.wcs.crval[1])
    header["CUNIT1"] = "deg"
    header["CUNIT2"] = "deg"
    for i in range(2):
        for j in range(2):
            header[f"CD{i + 1}_{j + 1}"] = float(wcs.wcs.cd[i, j])
    header["RADESYS"] = "ICRS"
    header["BUNIT"] = ("ELECTRONS/S", "flux per reference pixel (e-/s)")
    header["COMMENT"] = "Noiseless sky-free scene of the simulated field, e-/s per pixel."
    header["PIXSCALE"] = (params["truth_scale"], "arcsec per pixel")
    header["PSFFWHM"] = (params["psf_fwhm"], "PSF core FWHM, nominal input pixels")
    header["NOMSCALE"] = (params["pixel_scale"], "nominal input pixel scale, arcsec")
    fits.PrimaryHDU(scene.astype(np.float32), header).writeto(path, overwrite=True)


def _catalog_meta(params):
    return {
        "flux_unit": "electron / s (total over the source)",
        "pixel_scale_arcsec": params["pixel_scale"],
        "psf_fwhm_pix": params["psf_fwhm"],
        "psf_halo_fraction": params["psf_halo_fraction"],
        "position_angle_convention": "major axis, degrees east of north",
        "x_truth_convention": "0-based pixel on truth/scene.fits",
    }


def _placements_table(rows):
    names = ("rootname", "extver", "ccdchip", "source_id", "x", "y", "pixel_area",
             "expected_counts", "on_chip", "peak_saturated")  # fmt: skip
    if rows:
        columns = list(zip(*rows))
    else:
        columns = [[] for _ in names]
    dtypes = ("U9", np.int16, np.int16, np.int64, float, float, float, float, bool, bool)
    table = Table([np.array(column, dtype=dtype) for column, dtype in zip(columns, dtypes)],
                  names=names)  # fmt: skip
    table["expected_counts"].unit = "electron"
    table.meta["x_y_convention"] = "0-based pixel of the chip (SCI,extver)"
    table.meta["pixel_area"] = "local pixel area on the sky / pixel_scale**2"
    table.meta["expected_counts"] = "flux * exptime / pixel_area, electrons in the _flt"
    return table
