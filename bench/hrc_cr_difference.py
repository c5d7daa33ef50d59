"""Benchmark (science): why drizzlepipe flags more cosmic rays than AstroDrizzle on the real
ACS/HRC pair with the ``localmin`` sky (issue 19, item 3).

On ``../shared/data/hrc_f606w`` (two 60 s F606W exposures of 47 Tuc; ``j8bt06o6q`` was not
flat-fielded, FLATCORR=OMIT), in one run:

1. AstroDrizzle with ``skymethod='localmin'`` and its other defaults (``--peer-python``), on
   copies of the files;
2. drizzlepipe with ``sky_sub.method='localmin'`` and ``create_median.maskpt=0.3`` (AstroDrizzle's;
   ours is 0.7, which changes nothing here), and the variants that swap in one of
   AstroDrizzle's ingredients at a time:

   * its noise model: ``T**2 = g|B + S| + rn**2`` with the blotted median ``B`` already holding
     the sky ``S`` (the sky counted twice, a [QUIRK] of drizCR.py), emulated by the read noise
     ``sqrt(rn**2 + S)`` of the exposure that differs, and no noise of the median itself
     (``median_noise=False``);
   * its median image (``final_med.fits``, given to BlotCR as ``median``);
   * both;

   and drizzlepipe as a user gets it (``preset='auto'``, which chooses few_exposures), with the
   ``localmin`` sky and with the preset's own.

It prints, per exposure, the fraction of the pixels in the two chips' overlap (3 px inside,
input DQ 0) that each run flags as cosmic rays, and how the variants' masks agree with
AstroDrizzle's. The skies are not a variant: our ``localmin`` skies equal AstroDrizzle's
MDRIZSKY (printed).

Usage::

    .venv/bin/python bench/hrc_cr_difference.py [--peer-python .venv-peers/bin/python]
        [--workdir bench/output/hrc_cr]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from _harness import DEFAULT_PEER_PYTHON, REPO_ROOT, chip_overlap, run_astrodrizzle

DATA = REPO_ROOT.parent / "shared" / "data" / "hrc_f606w"
ROOTS = ("j8bt06nyq", "j8bt06o6q")
CR_BIT = 4096


def our_masks(files, out, **pipeline_args):
    """Run DrizzlePipeline (``_crf`` copies written) and return each exposure's CR mask; with
    ``preset='none'`` unless asked otherwise, so that what is not passed has AstroDrizzle's
    default value (preset 'auto' would choose few_exposures for the pair)."""
    from drizzlepipe.pipelines import DrizzlePipeline

    steps = {"blot_cr": {"save_results": True}}
    for step, values in pipeline_args.pop("steps", {}).items():
        steps.setdefault(step, {}).update(values)
    pipeline_args.setdefault("preset", "none")
    DrizzlePipeline.call(
        [str(f) for f in files], steps=steps, output_dir=str(out), configure_log=False,
        **pipeline_args,
    )  # fmt: skip
    return [(fits.getdata(out / f"{root}_crf.fits", ("DQ", 1)) & CR_BIT) > 0 for root in ROOTS]


def median_as_our_product(ad_median, path):
    """AstroDrizzle's ``_med.fits`` (SCI and WCS in its primary HDU) as our median product."""
    from drizzlepipe.datamodels import ResampledModel

    with fits.open(ad_median) as hdulist:
        data = hdulist[0].data.astype(np.float32)
        wcs = WCS(hdulist[0].header)
    model = ResampledModel(data=data, wht=np.ones_like(data))
    model.meta.wcs = wcs
    model.meta.product_type = "median"
    return model.save(str(path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=os.path.relpath(DEFAULT_PEER_PYTHON))
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench/output/hrc_cr")
    args = parser.parse_args(argv)
    files = [DATA / f"{root}_flt.fits" for root in ROOTS]
    if not all(path.is_file() for path in files):
        print(f"the real HRC pair is not at {DATA}: nothing to measure")
        return 0
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    print("AstroDrizzle, skymethod='localmin' ...", flush=True)
    ad = run_astrodrizzle(
        files, work / "astrodrizzle", peer_python=os.path.abspath(args.peer_python),
        num_cores=1, build=True, clean=False, in_memory=False, context=True, preserve=False,
        restore=False, skymethod="localmin",
    )  # fmt: skip
    ad_masks = [fits.getdata(ad.workdir / f"{root}_sci1_crmask.fits") == 0 for root in ROOTS]
    ad_sky = [
        float(fits.getval(ad.workdir / f"{root}_flt.fits", "MDRIZSKY", ("SCI", 1)))
        for root in ROOTS
    ]
    ad_median = median_as_our_product(ad.medians[0], work / "astrodrizzle_median.fits")

    # AstroDrizzle's noise counts the sky twice: emulate it for the exposure that differs (o6q)
    # with an effective read noise; its read noise is that of its amplifier (CCDAMP C)
    readnoise = float(fits.getval(files[1], "READNSEC"))
    sky_twice = {"readnoise": float(np.sqrt(readnoise**2 + ad_sky[1]))}
    common = {"sky_sub": {"method": "localmin"}, "create_median": {"maskpt": 0.3}}
    given_median = {"blot_cr": {"median": str(ad_median)}, "driz_separate": {"skip": True},
                    "create_median": {"skip": True}}  # fmt: skip
    variants = {
        "drizzlepipe (localmin, maskpt 0.3)": {"steps": common},
        "+ AstroDrizzle's noise (sky twice)": {
            **sky_twice, "steps": {**common, "blot_cr": {"median_noise": False}}
        },
        "+ AstroDrizzle's median": {"steps": {**common, **given_median}},
        "+ both": {
            **sky_twice,
            "steps": {**common, **given_median,
                      "blot_cr": {"median": str(ad_median), "median_noise": False}},
        },
        # what a user gets: preset auto (few_exposures: cosmic-ray thresholds '5.0 2.0'), with
        # AstroDrizzle's localmin sky, and with the preset's own sky
        "drizzlepipe defaults, localmin sky": {
            "preset": "auto", "steps": {"sky_sub": {"method": "localmin"}}
        },
        "drizzlepipe defaults (globalmin+match)": {"preset": "auto"},
    }  # fmt: skip
    masks = {"AstroDrizzle localmin": ad_masks}
    for number, (label, options) in enumerate(variants.items()):
        print(f"drizzlepipe: {label} ...", flush=True)
        masks[label] = our_masks(files, work / f"ours_{number}", **options)

    scored = [
        chip_overlap(files[0], files[1]) & (fits.getdata(files[0], ("DQ", 1)) == 0),
        chip_overlap(files[1], files[0]) & (fits.getdata(files[1], ("DQ", 1)) == 0),
    ]
    flat = [fits.getval(f, "FLATCORR") for f in files]
    print(f"\nskies (AstroDrizzle MDRIZSKY, e-): {ad_sky}; FLATCORR: {flat}")
    print(f"pixels scored (overlap, DQ 0): {[int(s.sum()) for s in scored]}")
    print(f"\n{'run':<40}{ROOTS[0]:>12}{ROOTS[1]:>12}   {ROOTS[1]} vs AstroDrizzle")
    for label, run in masks.items():
        cells = "".join(f"{np.count_nonzero(m & s) / s.sum():>11.2%} " for m, s in zip(run, scored))
        ours, theirs, s = run[1], ad_masks[1], scored[1]
        agreement = (
            f"both {np.count_nonzero(ours & theirs & s)}, "
            f"only ours {np.count_nonzero(ours & ~theirs & s)}, "
            f"only AD {np.count_nonzero(~ours & theirs & s)}"
        )
        print(f"{label:<40}{cells}  {agreement if label != 'AstroDrizzle localmin' else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
