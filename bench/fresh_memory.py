"""The cost of touching memory for the first time on this machine, which sets a floor under
both pipelines' times (every step writes hundreds of MB of new arrays).

On this 2-vCPU VM the host backs guest memory lazily: the first write to a page the guest has
not used recently costs a host-side fault. The script measures, in one run:

1. anonymous memory: ``np.ones`` of ``--gib`` GiB, freed, again at once (the guest reuses the
   pages it just freed), and again after ``--idle`` seconds (freed guest pages go back to the
   host after a short while, so they are cold again);
2. the page cache: copying one of the pipeline bench's 168 MB exposures to a new file twice
   (new page-cache pages are fresh memory too; the second copy reuses the first's), as
   writing ``_crf`` or ``_blt`` files does;
3. both pipelines' peak memory and what touching it once costs, from the pipeline bench's
   last results (``results.json``), when there are any.

Usage::

    .venv/bin/python bench/fresh_memory.py [--gib 1] [--idle 20] [--workdir bench/output/pipeline]

``--peer-python`` is accepted (``run_all.py`` passes it) and unused: the peer is the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def touch_seconds(n_bytes):
    """Seconds to allocate and write ``n_bytes`` of new memory (``np.ones``); freed after."""
    started = time.perf_counter()
    block = np.ones(n_bytes // 4, dtype=np.float32)
    elapsed = time.perf_counter() - started
    del block
    return elapsed


def copy_seconds(source, destination):
    started = time.perf_counter()
    shutil.copyfile(source, destination)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of anonymous memory")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds before the 3rd touch")
    parser.add_argument("--workdir", type=Path, default=HERE / "output" / "pipeline")
    parser.add_argument("--peer-python", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    n_bytes = int(args.gib * 2**30)
    first = touch_seconds(n_bytes)
    again = touch_seconds(n_bytes)
    time.sleep(args.idle)
    after_idle = touch_seconds(n_bytes)
    print(f"Writing {args.gib:g} GiB of new anonymous memory (np.ones):")
    print(f"  first time            {first:6.3f} s  ({first / args.gib:.2f} s/GiB)")
    print(f"  again at once         {again:6.3f} s  (pages just freed by this process)")
    print(f"  after {args.idle:g} s idle      {after_idle:6.3f} s  (freed pages went cold again)")
    print(f"  cold / warm           {first / max(again, 1e-9):6.1f}x")

    exposures = sorted((args.workdir / "data").glob("*_flt.fits"))
    if exposures:
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
            target = Path(scratch) / "copy.fits"
            size_mb = exposures[0].stat().st_size / 1e6
            exposures[0].read_bytes()  # the source in the page cache: time only the new file
            cold = copy_seconds(exposures[0], target)
            target.unlink()
            warm = copy_seconds(exposures[0], target)
        print(f"Copying a {size_mb:.0f} MB exposure to a new file (page cache):")
        print(f"  first time            {cold:6.3f} s,  again at once {warm:6.3f} s")
    else:
        print(f"(no exposures in {args.workdir / 'data'}: run pipeline_vs_astrodrizzle.py first)")

    results_file = args.workdir / "results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
        rate = first / args.gib
        print(f"Touching each pipeline's peak memory once at {rate:.2f} s/GiB (last pipeline run):")
        for name, key in (("drizzlepipe", "drizzlepipe"), ("AstroDrizzle", "astrodrizzle")):
            peak = results.get(key, {}).get("peak_rss_mib")
            total = results.get(key, {}).get("total_s")
            if peak is None:
                continue
            cost = peak / 1024 * rate
            share = f", {100 * cost / total:.0f}% of its {total:.1f} s" if total else ""
            print(f"  {name:<14} peak {peak:6.0f} MiB -> {cost:5.2f} s{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
