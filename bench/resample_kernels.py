"""Benchmark: pixel maps (stepsize 1 vs N) and drizzle kernels, ours against drizzlepac.

One WFC3/UVIS-sized chip (4096 x 2051, the real TAN-SIP order-4 solution of a UVIS2 exposure)
is drizzled onto its default output grid (IDCSCALE 0.0396"/px, about 4127 x 2324 pixels):

1. ``compute_pixmap`` at every pixel and with ``stepsize`` 10, 25, 50: wall time and the largest
   error against the exact map, next to the error of AstroDrizzle's scheme (bilinear between
   nodes every 10 px).
2. ``DrizzleAccumulator.add_chip`` (square, turbo) against a bare ``drizzle.resample.Drizzle``
   call on the same map (our overhead), and for a chip crossing the grid edge (sub-grid path).
3. The peer: drizzlepac 3.11's ``adrizzle.do_driz`` (its own C code, WCS evaluated every 10 px)
   on identical data and WCS, run in ``--peer-python``; wall time, ratio, agreement.

Prints wall times, ratios and peak RSS. The machine is shared: repeat with ``--repeat``.

Usage::

    python bench/resample_kernels.py [--peer-python .venv-peers/bin/python] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from drizzle.resample import Drizzle
from scipy.interpolate import RegularGridInterpolator

from drizzlepipe.algorithms.grid import default_output_grid
from drizzlepipe.algorithms.pixmap import compute_pixmap
from drizzlepipe.algorithms.resample import DrizzleAccumulator

CHIP_SHAPE = (2051, 4096)
IDCSCALE = 0.03962000086903572
EXPTIME = 500.0
# WFC3/UVIS chip 2 solution (IDC_2731450pi-FIT_SVM_GAIAeDR3) from a real FLC header.
UVIS_SIP_HEADER = {
    "CTYPE1": "RA---TAN-SIP",
    "CTYPE2": "DEC--TAN-SIP",
    "CRPIX1": 2048.0,
    "CRPIX2": 1026.0,
    "CRVAL1": 137.86461036472,
    "CRVAL2": -64.904104906916,
    "CD1_1": 4.9732592453003e-06,
    "CD1_2": -9.5531476446754e-06,
    "CD2_1": -9.8875649844199e-06,
    "CD2_2": -5.5858985586108e-06,
    "A_ORDER": 4,
    "A_0_2": 9.68752216541829e-08,
    "A_0_3": 1.83977137395279e-11,
    "A_0_4": -1.5724178902718e-14,
    "A_1_1": -3.0073309899834e-06,
    "A_1_2": 1.52171396326211e-11,
    "A_1_3": 1.06776659403511e-14,
    "A_2_0": 2.93081163466262e-06,
    "A_2_1": -1.2617092273945e-11,
    "A_2_2": -1.725583405793e-14,
    "A_3_0": 3.05584134653132e-11,
    "A_3_1": 6.65929786678309e-15,
    "A_4_0": -7.458238590171e-15,
    "B_ORDER": 4,
    "B_0_2": -3.1182425747255e-06,
    "B_0_3": 1.49270537925503e-11,
    "B_0_4": 1.7312015536267e-14,
    "B_1_1": 2.81470255140448e-06,
    "B_1_2": -5.0794595846563e-12,
    "B_1_3": 8.68079140232788e-15,
    "B_2_0": -5.8319285504418e-08,
    "B_2_1": 1.02902087236718e-11,
    "B_2_2": 1.89739365693031e-14,
    "B_3_0": 1.80116277193471e-13,
    "B_3_1": -6.694073536343e-16,
    "B_4_0": 2.81833598801922e-15,
}

PEER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ.setdefault("ASTROMETRY_STEP_CONTROL", "OFF")
    import numpy as np
    from astropy.io import fits
    from stwcs.wcsutil import HSTWCS
    from drizzlepac import adrizzle

    work = sys.argv[1]
    kernels = sys.argv[2].split(",")
    idcscale = float(sys.argv[3])
    exptime = float(sys.argv[4])
    chip_hdul = fits.open(os.path.join(work, "chip.fits"))
    data = chip_hdul[0].data.astype(np.float32)
    in_wcs = HSTWCS(chip_hdul, ext=0)
    out_hdul = fits.open(os.path.join(work, "grid.fits"))
    out_wcs = HSTWCS(out_hdul, ext=0)
    shape = out_wcs.array_shape
    times = {}
    for kernel in kernels:
        sci = np.zeros(shape, np.float32)
        wht = np.zeros(shape, np.float32)
        con = np.zeros(shape, np.int32)
        start = time.perf_counter()
        adrizzle.do_driz(data.copy(), in_wcs, np.full(data.shape, exptime, np.float32), out_wcs,
                         sci, wht, con, exptime, "counts", 1.0, wcslin_pscale=idcscale,
                         uniqid=1, pixfrac=1.0, kernel=kernel, fillval="INDEF", stepsize=10)
        times[kernel] = time.perf_counter() - start
        np.save(os.path.join(work, f"peer_{kernel}.npy"), sci)
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    print(json.dumps({"times": times, "rss_mib": rss}))
    """
)


def chip_wcs() -> WCS:
    wcs = WCS(fits.Header(UVIS_SIP_HEADER))
    wcs.pixel_shape = CHIP_SHAPE[::-1]
    return wcs


def synthetic_chip(seed: int = 1) -> np.ndarray:
    """Sky of 100 e- with Poisson-like noise and 400 stars, in counts."""
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 10.0, CHIP_SHAPE).astype(np.float32)
    for _ in range(400):
        cy, cx = rng.integers(8, CHIP_SHAPE[0] - 8), rng.integers(8, CHIP_SHAPE[1] - 8)
        y, x = np.mgrid[cy - 7 : cy + 8, cx - 7 : cx + 8]
        data[cy - 7 : cy + 8, cx - 7 : cx + 8] += rng.uniform(1e3, 1e5) * np.exp(
            -0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 1.2**2
        )
    return data


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; falls back to getrusage)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function, repeat: int):
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def bilinear_error(wcs, grid, exact, stepsize=10) -> float:
    """Max error of AstroDrizzle's scheme: exact nodes every ``stepsize`` px, bilinear between."""
    ny, nx = CHIP_SHAPE
    xs = np.unique(np.r_[np.arange(0, nx, stepsize), nx - 1]).astype(float)
    ys = np.unique(np.r_[np.arange(0, ny, stepsize), ny - 1]).astype(float)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    world = wcs.pixel_to_world_values(xx, yy)
    node_x, node_y = grid.wcs.world_to_pixel_values(*world)
    rows = np.arange(0, ny, 7)  # every 7th row keeps this fast and still samples all phases
    qy, qx = np.meshgrid(rows.astype(float), np.arange(nx, dtype=float), indexing="ij")
    points = np.column_stack([qy.ravel(), qx.ravel()])
    error = 0.0
    for component, nodes in ((0, node_x), (1, node_y)):
        values = RegularGridInterpolator((ys, xs), nodes, method="linear")(points)
        error = max(error, np.abs(values - exact[rows][..., component].ravel()).max())
    return float(error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=".venv-peers/bin/python")
    parser.add_argument("--no-peer", action="store_true", help="skip drizzlepac")
    parser.add_argument("--repeat", type=int, default=1, help="best of N timings")
    args = parser.parse_args()

    wcs = chip_wcs()
    grid = default_output_grid([wcs], [CHIP_SHAPE], reference_scale=IDCSCALE)
    data = synthetic_chip()
    print(f"chip {CHIP_SHAPE[1]}x{CHIP_SHAPE[0]} TAN-SIP -> grid {grid.shape[1]}x{grid.shape[0]}")

    print("\n== pixel map ==")
    t_exact, exact = timed(lambda: compute_pixmap(wcs, CHIP_SHAPE, grid.wcs, stepsize=1), 1)
    print(f"stepsize  1: {t_exact:7.3f} s  (exact)")
    pixmaps = {}
    for step in (10, 25, 50):
        t, pixmap = timed(
            lambda step=step: compute_pixmap(wcs, CHIP_SHAPE, grid.wcs, stepsize=step),
            args.repeat,
        )
        pixmaps[step] = pixmap
        error = np.abs(pixmap - exact).max()
        print(
            f"stepsize {step:2d}: {t:7.3f} s  speed-up {t_exact / t:6.1f}x  "
            f"max error {error:.1e} px"
        )
    bilinear = bilinear_error(wcs, grid, exact)
    print(f"AstroDrizzle's bilinear at stepsize 10: max error {bilinear:.1e} px")
    del exact

    print("\n== drizzle (map at stepsize 10) ==")
    pixmap = pixmaps[10]
    ours = {}
    for kernel in ("square", "turbo"):

        def run_ours(kernel=kernel):
            accumulator = DrizzleAccumulator(grid.shape, kernel=kernel, enable_err=False)
            accumulator.add_chip(data, pixmap, exptime=EXPTIME, in_units="counts")
            return accumulator.finalize()

        def run_bare(kernel=kernel):
            drizzle = Drizzle(kernel=kernel, out_shape=grid.shape)
            drizzle.add_image(
                data,
                exptime=EXPTIME,
                pixmap=pixmap,
                weight_map=np.full(CHIP_SHAPE, EXPTIME, np.float32),
                in_units="counts",
            )
            return drizzle

        t_ours, ours[kernel] = timed(run_ours, args.repeat)
        t_bare, _ = timed(run_bare, args.repeat)
        print(
            f"{kernel:6s}: ours {t_ours:6.3f} s   bare drizzle {t_bare:6.3f} s   "
            f"overhead {100 * (t_ours / t_bare - 1):+5.1f}%"
        )
    shifted = pixmap + np.array([600.0, 400.0])  # the chip now crosses two grid edges

    def run_crossing():
        accumulator = DrizzleAccumulator(grid.shape, kernel="square", enable_err=False)
        accumulator.add_chip(data, shifted, exptime=EXPTIME, in_units="counts")
        return accumulator

    t_cross, _ = timed(run_crossing, args.repeat)
    print(f"square, chip crossing the grid edge (sub-grid path): {t_cross:6.3f} s")
    rss_ours = peak_rss_mib()
    print(f"peak RSS (ours, this process): {rss_ours:.0f} MiB")

    if args.no_peer:
        return 0
    peer = Path(args.peer_python)
    if not peer.exists():
        print(f"\npeer interpreter {peer} not found; run with --no-peer or --peer-python")
        return 1
    print("\n== peer: drizzlepac adrizzle.do_driz (stepsize 10) ==")
    with tempfile.TemporaryDirectory() as work:
        chip_header = wcs.to_header(relax=True)
        chip_header["IDCSCALE"] = IDCSCALE
        fits.PrimaryHDU(data=data, header=chip_header).writeto(Path(work) / "chip.fits")
        grid_header = grid.to_fits_header()
        fits.PrimaryHDU(data=np.zeros(grid.shape, np.float32), header=grid_header).writeto(
            Path(work) / "grid.fits"
        )
        start = time.perf_counter()
        completed = subprocess.run(
            [str(peer), "-c", PEER_SCRIPT, work, "square,turbo", repr(IDCSCALE), repr(EXPTIME)],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            print(completed.stderr[-2000:])
            return 1
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"(peer process wall time incl. imports: {time.perf_counter() - start:.1f} s)")
        for kernel in ("square", "turbo"):
            theirs = np.load(Path(work) / f"peer_{kernel}.npy")
            product = ours[kernel]
            covered = product.wht >= 0.5 * np.median(product.wht[product.wht > 0])
            relative = np.abs(product.data[covered] - theirs[covered]) / np.abs(theirs[covered])
            # our map (cubic spline) + kernel vs theirs (bilinear map) + kernel
            t_peer = report["times"][kernel]
            t_ours, _ = timed(
                lambda kernel=kernel: DrizzleAccumulator(
                    grid.shape, kernel=kernel, enable_err=False
                ).add_chip(
                    data,
                    compute_pixmap(wcs, CHIP_SHAPE, grid.wcs, stepsize=10),
                    exptime=EXPTIME,
                    in_units="counts",
                ),
                args.repeat,
            )
            print(
                f"{kernel:6s}: drizzlepac {t_peer:6.3f} s   ours (map + drizzle) {t_ours:6.3f} s"
                f"   ratio {t_ours / t_peer:5.2f}   median |rel diff| {np.median(relative):.1e}"
                f"   99% {np.percentile(relative, 99):.1e}"
            )
        print(f"peak RSS (peer process): {report['rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
