"""Benchmark: sky matching of N dithered 2048x2048 exposures, drizzlepipe vs stsci.skypac.

Both implementations get the same FITS files (one SCI extension per exposure, TAN WCS with a
small rotation, counts with sky levels 100 + 10 k e-, noise and sources), written once per N.
drizzlepipe's ``compute_sky(method="match")`` is timed after the arrays are loaded; skypac's
``skymatch(skymethod="match")`` (the engine AstroDrizzle calls) is timed as a whole, since it reads
its own inputs. Each run is a separate process so that its peak RSS is its own. skypac runs for
increasing N only while its projected time (quadratic in N) fits the ``--peer-budget``.

skypac 1.0.12 calls ``SphericalPolygon.iter_polygons_flat``, which spherical-geometry 1.4 no
longer has (in AstroDrizzle every ``match`` then falls back to ``localmin``); the peer worker adds
that method so the comparison can run.

Usage::

    .venv/bin/python bench/sky_match.py [--sizes 5 10 20 40] [--peer-python .venv-peers/bin/python]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = 2048
SCALE = 0.04  # arcsec per pixel
EXPTIME = 100.0
RA, DEC = 53.16, -27.79


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def write_inputs(directory: Path, count: int, seed: int = 20261122) -> list[Path]:
    """N exposures on a random +-300 px dither pattern with +-1 degree roll jitter."""
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 5.0, (SHAPE, SHAPE)).astype(np.float32)
    sources = np.zeros((SHAPE, SHAPE), np.float32)
    hits = rng.integers(0, SHAPE, (4000, 2))
    sources[hits[:, 1], hits[:, 0]] = rng.exponential(3000.0, 4000).astype(np.float32)
    paths = []
    for index in range(count):
        dx, dy = rng.uniform(-300.0, 300.0, 2)
        roll = math.radians(rng.uniform(-1.0, 1.0))
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [RA, DEC]
        wcs.wcs.crpix = [SHAPE / 2 + dx, SHAPE / 2 + dy]
        wcs.wcs.cd = (
            np.array([[-math.cos(roll), math.sin(roll)], [math.sin(roll), math.cos(roll)]])
            * SCALE
            / 3600.0
        )
        header = wcs.to_header()
        header["EXTNAME"], header["EXTVER"] = "SCI", 1
        header["BUNIT"] = "ELECTRONS"
        header["IDCSCALE"] = SCALE
        primary = fits.Header(
            {"TELESCOP": "HST", "INSTRUME": "WFC3", "DETECTOR": "UVIS", "EXPTIME": EXPTIME}
        )
        # shift the shared noise/source pattern per exposure so exposures are not identical
        data = np.roll(noise + sources, (index * 7, index * 13), axis=(0, 1)) + (100.0 + 10 * index)
        path = directory / f"exp{index:02d}.fits"
        fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(data, header)]).writeto(path)
        paths.append(path)
    return paths


def run_ours(paths: list[Path]) -> dict:
    from astropy.io import fits
    from astropy.wcs import WCS

    from drizzlepipe.algorithms.sky import SkyChip, compute_sky

    chips = []
    for index, path in enumerate(paths):
        with fits.open(path) as hdul:
            chips.append(
                SkyChip(
                    data=hdul[1].data.astype(np.float32),
                    wcs=WCS(hdul[1].header),
                    exposure_id=index,
                    pixel_scale=hdul[1].header["IDCSCALE"],
                    exptime=hdul[0].header["EXPTIME"],
                    in_counts=True,
                )
            )
    start = time.perf_counter()
    result = compute_sky(chips, "match")
    elapsed = time.perf_counter() - start
    return {"time": elapsed, "rss_mb": _peak_rss_mb(), "sky": list(result.sky)}


def run_peer(paths: list[Path]) -> dict:
    from astropy.io import fits
    from stsci.skypac.skymatch import skymatch

    from _harness import SKYPAC_PATCH

    exec(SKYPAC_PATCH, {})  # noqa: S102 - our own source text, see bench/_harness.py
    listing = paths[0].parent / "inputs.lst"
    listing.write_text("".join(f"{p}[sci,1]\n" for p in paths))
    start = time.perf_counter()
    skymatch(
        f"@{listing}",
        skymethod="match",
        skystat="median",
        nclip=5,
        lsigma=4.0,
        usigma=4.0,
        binwidth=0.1,
        skyuser_kwd="MDRIZSKY",
        readonly=False,
        subtractsky=False,
        verbose=False,
        flog=None,
    )
    elapsed = time.perf_counter() - start
    sky = [float(fits.getval(p, "MDRIZSKY", ext=1)) for p in paths]
    return {"time": elapsed, "rss_mb": _peak_rss_mb(), "sky": sky}


def _worker(python: str, role: str, directory: Path, count: int) -> dict:
    command = [python, __file__, "--worker", role, "--dir", str(directory), "--n", str(count)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} worker failed for N={count}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--peer-python", default=".venv-peers/bin/python")
    parser.add_argument("--peer-budget", type=float, default=120.0, help="seconds for skypac")
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        paths = sorted(args.dir.glob("exp*.fits"))[: args.n]
        result = run_ours(paths) if args.worker == "ours" else run_peer(paths)
        print(json.dumps(result))
        return

    peer_python = os.path.abspath(args.peer_python)  # not resolve(): keep the venv symlink
    spent, per_pair = 0.0, None
    print(f"sky match of N exposures of {SHAPE}x{SHAPE} (median, nclip=5), one process per run")
    header = f"{'N':>3} {'ours s':>8} {'ours MB':>8} {'skypac s':>9} {'skypac MB':>9} {'ratio':>7}"
    print(header + "  max |sky diff| / sky spread")
    for count in args.sizes:
        with tempfile.TemporaryDirectory(prefix="skymatch_bench_") as tmp:
            paths = write_inputs(Path(tmp), count)
            ours = _worker(sys.executable, "ours", paths[0].parent, count)
            pairs = count * (count - 1) / 2
            projected = per_pair * pairs if per_pair else 0.0
            peer = None
            if spent + projected <= args.peer_budget:
                peer = _worker(peer_python, "peer", paths[0].parent, count)
                spent += peer["time"]
                per_pair = peer["time"] / pairs
        if peer is None:
            print(
                f"{count:>3} {ours['time']:>8.2f} {ours['rss_mb']:>8.0f} "
                f"{'skipped':>9} {'':>9} {'':>7}  (skypac projected {projected:.0f} s)"
            )
            continue
        spread = np.ptp(peer["sky"]) or 1.0
        difference = np.max(np.abs(np.subtract(ours["sky"], peer["sky"]))) / spread
        print(
            f"{count:>3} {ours['time']:>8.2f} {ours['rss_mb']:>8.0f} {peer['time']:>9.2f} "
            f"{peer['rss_mb']:>9.0f} {peer['time'] / ours['time']:>7.1f}  {difference:.1e}"
        )


if __name__ == "__main__":
    main()
