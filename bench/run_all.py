"""Run every benchmark of ``bench/`` in turn (``make bench``); each prints its own table.

Usage: ``python bench/run_all.py [--peer-python PATH] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Scripts in the order they run (cheap ones first); each takes --peer-python.
BENCHMARKS = (
    "imagestats.py",
    "sky_match.py",
    "median.py",
    "resample_kernels.py",
    "pipeline_vs_astrodrizzle.py",
    "kernel_floor.py",  # after the pipeline bench: reads its data, grid and AstroDrizzle's times
    "fresh_memory.py",  # this VM's cost of new memory pages, against both pipelines' peaks
    "schedulers.py",
    "science.py",  # ~40 minutes: cosmic-ray curves of both pipelines on 18 simulated sets
    "scaling.py",  # about an hour: 8, 32 and 128 exposures of 2048 x 2048, AstroDrizzle too
)

#: Arguments some scripts get: the pipeline comparison reports per-step medians of three
#: alternating runs of each pipeline (single runs swing by +-20% with this VM).
EXTRA_ARGS = {"pipeline_vs_astrodrizzle.py": ["--repeat", "3", "--step-memory"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=str(HERE.parent / ".venv-peers/bin/python"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these scripts")
    args = parser.parse_args(argv)
    failed = []
    for name in BENCHMARKS:
        if args.only and name not in args.only and name.removesuffix(".py") not in args.only:
            continue
        print(f"\n===== {name} =====", flush=True)
        started = time.perf_counter()
        run = subprocess.run(
            [
                sys.executable,
                str(HERE / name),
                "--peer-python",
                args.peer_python,
                *EXTRA_ARGS.get(name, []),
            ],
            check=False,
        )
        print(f"===== {name}: exit {run.returncode}, {time.perf_counter() - started:.0f} s")
        if run.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
