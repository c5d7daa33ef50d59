"""Benchmark: how drizzlepipe and AstroDrizzle scale with the number of exposures (issue 8).

For each N of ``--sizes`` (default 8, 32, 128) the script simulates N single-chip exposures of
``--shape`` (default 2048 x 2048) on one field (seed ``--seed``, small dithers so that all of
them overlap), writes drizzlepipe's default output grid for them, and runs, in fresh
processes, drizzlepipe (``in_memory=False``, the bounded-memory mode, ``--scheduler``
processes by default) and AstroDrizzle (``in_memory=False``, ``num_cores=1``, the same grid as
``final_refimage``/``driz_sep_refimage``; both with ``combine_type='median'``, ``nhigh=1``,
the many-exposure setting, and the ``localmin`` sky). AstroDrizzle is not started again for
larger N once a run took longer than ``--ad-limit`` seconds (default 1200: the issue's 20
minutes) or failed.

It prints, per N and pipeline, wall time, time per exposure and peak memory (the sum of the
proportional set sizes of the process tree), and whether drizzlepipe's time per exposure and
peak memory stay flat within 20% from the second size to the last (the issue's target: from
32 to 128). Results go to ``<workdir>/scaling.json``.

Usage::

    .venv/bin/python bench/scaling.py [--sizes 8 32 128] [--shape 2048 2048] [--reuse]
        [--no-astrodrizzle] [--workdir bench/output/scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _harness import DEFAULT_PEER_PYTHON, REPO_ROOT
from pipeline_vs_astrodrizzle import (
    ASTRODRIZZLE_RUN_SETTINGS,
    run_drizzlepipe,
    run_peer,
    source_version,
    write_default_grid,
)

#: Parameters for many exposures, the same meaning for both pipelines.
SKY_METHOD = "localmin"
OURS_STEPS = {
    "sky_sub": {"method": SKY_METHOD},
    "driz_separate": {"kernel": "turbo", "stepsize": 10},
    "create_median": {"combine_type": "median", "nhigh": 1, "maskpt": 0.3},
    "blot_cr": {"stepsize": 10},
    "driz_final": {"kernel": "square", "stepsize": 10},
}
AD_PARS = {
    "skymethod": SKY_METHOD,
    "driz_sep_kernel": "turbo",
    "combine_type": "median",
    "combine_nhigh": 1,
    "combine_maskpt": 0.3,
    "final_kernel": "square",
    "stepsize": 10,
    "driz_sep_wcs": True,
    "final_wcs": True,
    "num_cores": 1,
    "in_memory": False,
}


def simulate_field(data_dir, exposures, shape, seed, reuse):
    """N single-chip exposures on one field; reused when the same simulation is there."""
    from drizzlepipe.simulator import read_simulation, simulate

    if reuse and (data_dir / "truth" / "simulation.json").exists():
        simulation = read_simulation(data_dir)
        parameters = simulation.parameters
        if (
            parameters["exposures"] == exposures
            and tuple(parameters["shape"]) == tuple(shape)
            and parameters["seed"] == seed
            and all(path.exists() for path in simulation.flt_files)
        ):
            print(f"  reusing the simulation in {data_dir}")
            return simulation
    start = time.perf_counter()
    simulation = simulate(
        data_dir, exposures=exposures, shape=tuple(shape), chips=1, seed=seed, dither=8.0,
        write_models=False, overwrite=True,
    )  # fmt: skip
    print(f"  simulated {exposures} exposures in {time.perf_counter() - start:.0f} s")
    return simulation


def run_ours(simulation, workdir, scheduler):
    run = run_drizzlepipe(
        simulation.flt_files, workdir, SKY_METHOD, in_memory=False, scheduler=scheduler,
        steps=OURS_STEPS,
    )  # fmt: skip
    return {"wall_s": run.total_s, "peak_mib": run.peak_rss_mib, "steps_s": run.step_s}


def run_astrodrizzle(simulation, workdir, grid_file, peer_python, limit_s):
    pars = {
        **ASTRODRIZZLE_RUN_SETTINGS,
        **AD_PARS,
        "driz_sep_refimage": str(grid_file),
        "final_refimage": str(grid_file),
        "clean": True,
    }
    try:
        run = run_peer(simulation.flt_files, workdir, peer_python, pars, SKY_METHOD, limit_s)
    except subprocess.TimeoutExpired:
        return {"wall_s": None, "peak_mib": None, "note": f"stopped after {limit_s:.0f} s"}
    except RuntimeError as error:
        return {"wall_s": None, "peak_mib": None, "note": f"failed: {str(error)[:300]}"}
    finally:
        for copy in workdir.glob("*_flt.fits"):
            copy.unlink()  # the input copies: gigabytes at N = 128
    return {"wall_s": run.total_s, "peak_mib": run.peak_rss_mib, "steps_s": run.step_s}


def flat_within(values, tolerance):
    """max/min - 1 of ``values`` and whether it is within ``tolerance``."""
    spread = max(values) / min(values) - 1.0
    return spread, spread <= tolerance


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench/output/scaling")
    parser.add_argument("--scheduler", default="processes")
    parser.add_argument("--peer-python", default=os.path.relpath(DEFAULT_PEER_PYTHON))
    parser.add_argument("--ad-limit", type=float, default=1200.0)
    parser.add_argument("--no-astrodrizzle", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="reuse simulated data")
    parser.add_argument("--keep-data", action="store_true", help="keep each N's simulation")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    peer_python = os.path.abspath(args.peer_python)
    version = source_version()
    print(
        f"drizzlepipe commit {version['commit']}"
        f"{' with uncommitted changes in src/' if version['src_modified'] else ''}; "
        f"{os.cpu_count()} CPUs; exposures of {args.shape[1]} x {args.shape[0]}"
    )
    results, ad_allowed = [], not args.no_astrodrizzle
    for n in sorted(args.sizes):
        print(f"N = {n}", flush=True)
        data_dir = workdir / f"data{n}"
        simulation = simulate_field(data_dir, n, args.shape, args.seed, args.reuse)
        grid_file = workdir / f"grid{n}.fits"
        grid = write_default_grid(simulation.flt_files, grid_file)
        row = {"n": n, "grid_shape": list(grid.shape)}
        row["drizzlepipe"] = run_ours(simulation, workdir / f"ours{n}", args.scheduler)
        print(
            f"  drizzlepipe {row['drizzlepipe']['wall_s']:.1f} s, "
            f"{row['drizzlepipe']['peak_mib']:.0f} MiB",
            flush=True,
        )
        shutil.rmtree(workdir / f"ours{n}", ignore_errors=True)  # singles and products
        if ad_allowed:
            row["astrodrizzle"] = run_astrodrizzle(
                simulation, workdir / f"ad{n}", grid_file, peer_python, args.ad_limit
            )
            peer = row["astrodrizzle"]
            if peer["wall_s"] is None:
                print(f"  AstroDrizzle {peer['note']}", flush=True)
                ad_allowed = False
            else:
                print(f"  AstroDrizzle {peer['wall_s']:.1f} s, {peer['peak_mib']:.0f} MiB")
                ad_allowed = peer["wall_s"] <= args.ad_limit
            shutil.rmtree(workdir / f"ad{n}", ignore_errors=True)
        results.append(row)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        (workdir / "scaling.json").write_text(
            json.dumps({"version": version, "shape": args.shape, "rows": results}, indent=1)
        )

    print()
    print(f"{'N':>5} {'ours s':>9} {'s/exp':>7} {'MiB':>7}   {'AD s':>9} {'s/exp':>7} {'MiB':>7}")
    for row in results:
        ours, peer = row["drizzlepipe"], row.get("astrodrizzle") or {}
        ad_cells = (
            f"{peer['wall_s']:9.1f} {peer['wall_s'] / row['n']:7.2f} {peer['peak_mib']:7.0f}"
            if peer.get("wall_s")
            else f"{peer.get('note', 'not run'):>25}"
        )
        print(
            f"{row['n']:5d} {ours['wall_s']:9.1f} {ours['wall_s'] / row['n']:7.2f} "
            f"{ours['peak_mib']:7.0f}   {ad_cells}"
        )
    if len(results) >= 3:
        tail = results[1:]
        per_exposure = [row["drizzlepipe"]["wall_s"] / row["n"] for row in tail]
        memory = [row["drizzlepipe"]["peak_mib"] for row in tail]
        span = f"N = {tail[0]['n']} to {tail[-1]['n']}"
        for label, values in (("time per exposure", per_exposure), ("peak memory", memory)):
            spread, ok = flat_within(values, 0.2)
            print(
                f"drizzlepipe {label} {span}: spread {100 * spread:.0f}% "
                f"({'met' if ok else 'MISSED'}: flat within 20%)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
