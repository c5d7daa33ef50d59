"""``make demo``: simulate a dithered data set, run the whole pipeline on it with ``strun`` and a
parameter file, print a summary and write a PNG quicklook.

Usage: ``python -m drizzlepipe.demo OUTDIR [--cfg cfg/few_exposures.asdf] [--size 1024]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from .numpy_tuning import tuned_environment
from .quicklook import quicklook
from .simulator import simulate

__all__ = ["main"]


def _recall(simulation, outdir):
    """Fraction of truth cosmic-ray pixels above 5 sigma flagged in the _crf files."""
    found = total = 0
    for root in simulation.rootnames:
        crf = outdir / f"{root}_crf.fits"
        truth = simulation.truth_dir / f"{root}_truth.fits"
        with fits.open(crf) as hdul, fits.open(truth) as deposits:
            for extver in (1, 2):
                dq = hdul["DQ", extver].data.astype(np.uint32)
                strong = (deposits["CRDEP", extver].data > 5 * hdul["ERR", extver].data) & (
                    (dq & ~np.uint32(4096)) == 0
                )
                found += np.count_nonzero(strong & ((dq & 4096) != 0))
                total += np.count_nonzero(strong)
    return found / max(total, 1)


def _summary_table(log_text):
    """The pipeline's summary table from its log (the lines after 'Summary')."""
    lines, inside = [], False
    for line in log_text.splitlines():
        if inside and re.match(r"^\d{4}-\d\d-\d\d ", line):
            break
        if inside:
            lines.append(line)
        inside = inside or line.rstrip().endswith("Summary")
    return "\n".join(lines)


def main(argv=None):
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--cfg", default=None, help="parameter file for strun")
    parser.add_argument("--size", type=int, default=1024, help="chip size in pixels")
    parser.add_argument("--exposures", type=int, default=4)
    args = parser.parse_args(argv)

    outdir = args.outdir.resolve()
    data_dir, products = outdir / "data", outdir / "products"
    products.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"Simulating {args.exposures} exposures of 2 x {args.size}^2 pixels in {data_dir} ...")
    simulation = simulate(
        data_dir, exposures=args.exposures, shape=(args.size, args.size), chips=2, seed=0,
        overwrite=True,
    )  # fmt: skip
    asn = outdir / "demo_asn.json"
    members = [{"expname": str(p), "exptype": "science"} for p in simulation.flt_files]
    asn.write_text(json.dumps({"products": [{"name": "demo", "members": members}]}, indent=1))

    strun = Path(sys.executable).parent / "strun"
    command = [str(strun), args.cfg or "drizzle_pipeline", str(asn)]
    command += [f"--output_dir={products}", "--steps.blot_cr.save_results=true"]
    print("Running:", " ".join(command))
    environment = tuned_environment()
    setting = environment.get("NPY_DISABLE_CPU_FEATURES")
    if setting != os.environ.get("NPY_DISABLE_CPU_FEATURES"):
        print(f'AMD Zen 4 CPU: strun runs with NPY_DISABLE_CPU_FEATURES="{setting}" '
              "(NumPy's faster AVX2 sort, see drizzlepipe.numpy_tuning)")  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=environment)
    (outdir / "pipeline.log").write_text(run.stderr)
    if run.returncode != 0:
        print(run.stderr[-4000:], file=sys.stderr)
        return run.returncode
    print(_summary_table(run.stderr))

    final = products / "demo_drz.fits"
    crf = [products / f"{root}_crf.fits" for root in simulation.rootnames[:2]]
    png = quicklook(final, crf, outdir / "quicklook.png")
    print(f"Cosmic-ray recall against the simulator's truth (deposits > 5 sigma): "
          f"{_recall(simulation, products):.4f}")  # fmt: skip
    print(f"Final product: {final}")
    print(f"CR-flagged exposures: {products}/*_crf.fits")
    print(f"Quicklook: {png}")
    print(f"Log: {outdir / 'pipeline.log'}")
    print(f"Demo finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
