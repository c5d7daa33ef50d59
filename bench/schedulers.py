"""Benchmark: the whole pipeline with each scheduler, and AstroDrizzle with two cores (issue 8).

On the four full-frame WFC3/UVIS-like exposures of ``bench/pipeline_vs_astrodrizzle.py`` (the
same simulation, parameters and output grid; ``--reuse`` keeps the data), in one run:

* drizzlepipe with its default (no scheduler given: ``auto``), ``serial``, ``threads`` and
  ``processes``, each in a fresh process, timed around the pipeline call, with the peak memory
  of its process tree (sum of proportional set sizes);
* drizzlepipe on a ``dask.distributed`` cluster that this script starts on loopback (a scheduler
  and two single-threaded worker processes), ``scheduler=tcp://...`` (the workers' memory is
  not in its peak);
* AstroDrizzle with ``num_cores=2`` (``--ad-num-cores``).

It prints the times, the speed-up of each scheduler over ``serial`` (issue 17's target: the
default at least 1.6x) and checks that every scheduler wrote the same final product, bit for
bit (SCI, WHT, ERR, CTX). Results go to ``<workdir>/schedulers.json``.

Usage::

    .venv/bin/python bench/schedulers.py [--reuse] [--workdir bench/output/pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from _harness import DEFAULT_PEER_PYTHON, REPO_ROOT
from pipeline_vs_astrodrizzle import (
    astrodrizzle_parameters,
    run_drizzlepipe,
    run_peer,
    simulated_data,
    source_version,
    write_default_grid,
)

SKY_METHOD = "globalmin+match"
#: None: the pipeline's default (``auto``), what ``strun`` without flags runs.
LOCAL_SCHEDULERS = ("serial", None, "threads", "processes")


def final_arrays(path):
    """SCI, WHT, ERR and CTX of a final product."""
    with fits.open(path) as product:
        return {name: product[name].data.copy() for name in ("SCI", "WHT", "ERR", "CTX")}


def same_arrays(first, second):
    """Names of the arrays that differ in any bit (NaN equal to NaN)."""
    return [
        name
        for name in first
        if first[name].shape != second[name].shape
        or not np.array_equal(first[name], second[name], equal_nan=True)
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench/output/pipeline")
    parser.add_argument("--peer-python", default=os.path.relpath(DEFAULT_PEER_PYTHON))
    parser.add_argument("--ad-num-cores", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="reuse the simulated data")
    parser.add_argument("--no-astrodrizzle", action="store_true")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    version = source_version()
    print(
        f"drizzlepipe commit {version['commit']}"
        f"{' with uncommitted changes in src/' if version['src_modified'] else ''}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    simulation = simulated_data(workdir / "data", 4, (2051, 4096), 0, args.reuse)
    grid_file = workdir / "grid.fits"
    write_default_grid(simulation.flt_files, grid_file)

    runs, products = {}, {}
    for scheduler in LOCAL_SCHEDULERS:
        name = scheduler or "default (auto)"
        print(f"drizzlepipe, scheduler {name} ...", flush=True)
        out = workdir / f"sched_{scheduler or 'default'}"
        run = run_drizzlepipe(simulation.flt_files, out, SKY_METHOD, scheduler=scheduler)
        runs[name] = {"total_s": run.total_s, "peak_mib": run.peak_rss_mib}
        products[name] = final_arrays(out / "ours_drz.fits")

    from distributed import LocalCluster

    print("drizzlepipe on a dask.distributed cluster (2 worker processes, loopback) ...")
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        out = workdir / "sched_distributed"
        started = time.perf_counter()
        run = run_drizzlepipe(
            simulation.flt_files, out, SKY_METHOD, scheduler=cluster.scheduler_address
        )
        print(f"  cluster {cluster.scheduler_address}, {time.perf_counter() - started:.0f} s")
    runs["distributed"] = {"total_s": run.total_s, "peak_mib": None}
    products["distributed"] = final_arrays(out / "ours_drz.fits")

    if not args.no_astrodrizzle:
        print(f"AstroDrizzle, num_cores={args.ad_num_cores} ...", flush=True)
        pars = astrodrizzle_parameters(grid_file, SKY_METHOD, args.ad_num_cores, False)
        peer = run_peer(
            simulation.flt_files, workdir / "astrodrizzle_cores", os.path.abspath(args.peer_python),
            pars, SKY_METHOD,
        )  # fmt: skip
        runs["astrodrizzle"] = {"total_s": peer.total_s, "peak_mib": peer.peak_rss_mib}

    serial = runs["serial"]["total_s"]
    print(f"\n{'run':<24} {'total s':>8} {'vs serial':>10} {'peak MiB':>9}  identical to serial")
    for name, run in runs.items():
        label = name if name != "astrodrizzle" else f"AstroDrizzle num_cores={args.ad_num_cores}"
        differing = same_arrays(products["serial"], products[name]) if name in products else None
        same = "-" if differing is None else ("yes" if not differing else f"NO: {differing}")
        peak = f"{run['peak_mib']:9.0f}" if run["peak_mib"] else f"{'-':>9}"
        print(f"{label:<24} {run['total_s']:8.2f} {serial / run['total_s']:9.2f}x {peak}  {same}")
    speedup = serial / runs["default (auto)"]["total_s"]
    print(
        f"default >= 1.6x serial: {speedup:.2f}x ({'met' if speedup >= 1.6 else 'MISSED'}); "
        f"threads {serial / runs['threads']['total_s']:.2f}x, "
        f"processes {serial / runs['processes']['total_s']:.2f}x"
    )
    identical = all(not same_arrays(products["serial"], arrays) for arrays in products.values())
    print(f"all schedulers wrote the same final product: {'yes' if identical else 'NO'}")
    (workdir / "schedulers.json").write_text(
        json.dumps({"version": version, "runs": runs, "identical": identical}, indent=1)
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
