"""Median / minmed benchmark: drizzlepipe's combine engine side by side with its peers.

One run builds a seeded stack on disk and times, each case in a fresh process so that the peak
resident memory (VmHWM) belongs to that case alone:

* median of N = 10 float32 4096x4096 images with 5% masked pixels: ``combine_stack`` against
  ``stsci.image.numcombine.num_combine`` (whole stack, and in AstroDrizzle's 1 MiB row sections),
  ``numpy.nanmedian`` and, when installed, ``bottleneck.nanmedian``;
* minmed of the same stack: ``combine_stack`` against ``drizzlepac.minmed.min_med`` (whole stack
  and sectioned as AstroDrizzle's createMedian);
* peak RSS of ``combine_stack`` reading the stack from disk (``np.load(mmap_mode="r")``) with
  ``bufsize=1`` MiB: N = 10 at 4096x4096, and N = 10, 50, 100 at 2048x2048 to show how memory
  grows per added input.

The peers live in another virtual environment and run with ``--peer-python``. The outputs of
every case are compared with ours (pixels with at least one good value). Wall times exclude
loading the inputs. Run from the repository root::

    .venv/bin/python bench/median.py --peer-python .venv-peers/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SEED = 20261122
MASKED_FRACTION = 0.05
EXPTIME = 400.0
READNOISE = 4.0
SKY = 20.0
BUFSIZE_MIB = 1.0


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def write_stack(directory: Path, n: int, size: int, with_weights: bool) -> None:
    """Seeded count-rate images with cosmic rays, masks and weights as .npy files."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + n * 7919 + size)
    shape = (n, size, size)
    data = np.lib.format.open_memmap(directory / "data.npy", "w+", np.float32, shape)
    masks = np.lib.format.open_memmap(directory / "masks.npy", "w+", np.bool_, shape)
    weights = None
    if with_weights:
        weights = np.lib.format.open_memmap(directory / "weights.npy", "w+", np.float32, shape)
    noise = np.float32(np.sqrt(5.0 * EXPTIME) / EXPTIME)
    for index in range(n):
        frame = rng.standard_normal((size, size), dtype=np.float32)
        frame *= noise
        frame += np.float32(5.0)
        hits = rng.integers(0, size, (2, size * size // 2000))
        frame[hits[0], hits[1]] += rng.uniform(1, 100, hits.shape[1]).astype(np.float32)
        data[index] = frame
        masks[index] = rng.random((size, size), dtype=np.float32) < MASKED_FRACTION
        if weights is not None:
            weights[index] = EXPTIME * rng.uniform(0.9, 1.0, (size, size)).astype(np.float32)
    for array in (data, masks, weights):
        if array is not None:
            array.flush()


# --------------------------------------------------------------------------------------------
# Workers (each runs in its own process; peers run under the peer interpreter)
# --------------------------------------------------------------------------------------------


def _astrodrizzle_sections(nrows: int, ncols: int, grow: int):
    """Row sections exactly as drizzlepac.createMedian._median builds them (1 MiB, float32)."""
    rows = min(nrows, int(BUFSIZE_MIB * 1024 * 1024 / (ncols * 4)))
    overlap = 2 * grow
    step = rows - overlap
    count = -(-(nrows - overlap) // step)
    for k in range(count):
        start, stop = k * step, k * step + rows
        keep_start, keep_stop = grow, grow + step
        if k == 0:
            keep_start = 0
        if k == count - 1:
            stop = min(stop, nrows)
            start = min(start, stop - overlap - 1)
            keep_stop = stop - start
        yield start, stop, keep_start, keep_stop


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB.

    VmHWM is the peak resident set of this process image. ru_maxrss is not used: on Linux it
    keeps the high-water mark of the parent at fork time across exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class _AnonymousPeak:
    """Samples RssAnon (memory the process allocated, without mapped file pages) every 1 ms.

    VmHWM also counts the file pages mapped at that moment, which fluctuate by a few MiB; the
    anonymous peak is the memory the combine itself holds.
    """

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_mb("RssAnon"))
            time.sleep(0.001)

    def __enter__(self) -> _AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mb("RssAnon"))


def run_worker(name: str, directory: Path, output: Path | None) -> dict:
    n = np.load(directory / "data.npy", mmap_mode="r").shape[0]
    from_disk = name.endswith("-disk")
    mode = "r" if from_disk else None
    data = np.load(directory / "data.npy", mmap_mode=mode)
    masks = np.load(directory / "masks.npy", mmap_mode=mode)
    need_weights = "minmed" in name
    weights = np.load(directory / "weights.npy", mmap_mode=mode) if need_weights else None
    scalars = dict(readnoise=[READNOISE] * n, exptime=[EXPTIME] * n, background=[SKY] * n)
    rss_before = _status_mb("VmRSS")
    anonymous_peak = None
    start = time.perf_counter()
    if name.startswith("ours"):
        from drizzlepipe.algorithms.combine import combine_stack

        kind = "minmed" if need_weights else "median"
        extra = dict(weights=weights, **scalars) if need_weights else {}
        if from_disk:
            with _AnonymousPeak() as sampler:
                result = combine_stack(data, masks, combine_type=kind, bufsize=BUFSIZE_MIB, **extra)
            anonymous_peak = sampler.peak
        else:
            result = combine_stack(data, masks, combine_type=kind, bufsize=BUFSIZE_MIB, **extra)
    elif name == "numpy-nanmedian":
        result = np.nanmedian(np.where(masks, np.float32(np.nan), data), axis=0)
    elif name == "bottleneck-nanmedian":
        import bottleneck

        result = bottleneck.nanmedian(np.where(masks, np.float32(np.nan), data), axis=0)
    elif name == "numcombine":
        from stsci.image.numcombine import num_combine

        result = num_combine(data, masks=masks, combination_type="median")
    elif name == "numcombine-sections":
        from stsci.image.numcombine import num_combine

        result = np.zeros(data.shape[1:], dtype=np.float32)
        for r0, r1, k0, k1 in _astrodrizzle_sections(*data.shape[1:], grow=0):
            section = num_combine(data[:, r0:r1], masks=masks[:, r0:r1], combination_type="median")
            result[r0 + k0 : r0 + k1] = section[k0:k1]
    elif name in ("minmed", "minmed-sections"):
        from drizzlepac.minmed import min_med

        rn, t, b = scalars["readnoise"], scalars["exptime"], scalars["background"]
        if name == "minmed":
            result = min_med(data, weights, rn, t, b, weight_masks=masks, combine_grow=1)
        else:
            result = np.zeros(data.shape[1:], dtype=np.float32)
            for r0, r1, k0, k1 in _astrodrizzle_sections(*data.shape[1:], grow=1):
                section = min_med(
                    data[:, r0:r1],
                    weights[:, r0:r1],
                    rn,
                    t,
                    b,
                    weight_masks=masks[:, r0:r1],
                    combine_grow=1,
                )
                result[r0 + k0 : r0 + k1] = section[k0:k1]
    else:
        raise ValueError(f"unknown worker {name}")
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    if output is not None:
        np.save(output, np.asarray(result, dtype=np.float32))
    return {
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rss_before_mb": rss_before,
        "anonymous_peak_mb": anonymous_peak,
    }


def launch(python: str, name: str, directory: Path, output: Path | None) -> dict:
    command = [python, os.path.abspath(__file__), "--worker", name, "--workdir", str(directory)]
    if output is not None:
        command += ["--output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def max_relative_difference(ours: Path, theirs: Path, masks: np.ndarray) -> float:
    a = np.load(ours)
    b = np.load(theirs)
    covered = ~masks.all(axis=0)
    scale = np.maximum(np.abs(b[covered]), 1e-30)
    return float(np.max(np.abs(a[covered] - b[covered]) / scale))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=".venv-peers/bin/python")
    parser.add_argument("--size", type=int, default=4096, help="image size of the speed test")
    parser.add_argument("--n", type=int, default=10, help="images in the speed test")
    parser.add_argument("--rss-size", type=int, default=2048)
    parser.add_argument("--rss-n", type=int, nargs="*", default=[10, 50, 100])
    parser.add_argument("--workdir", default=None, help="where the stacks go (default: tmp)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        output = Path(args.output) if args.output else None
        print(json.dumps(run_worker(args.worker, Path(args.workdir), output)))
        return

    ours_python = sys.executable
    peer_python = args.peer_python
    if not Path(peer_python).exists():
        sys.exit(f"peer interpreter {peer_python} not found (use --peer-python)")
    root = Path(tempfile.mkdtemp(prefix="bench_median_", dir=args.workdir))
    try:
        speed_dir = root / f"speed_{args.n}x{args.size}"
        write_stack(speed_dir, args.n, args.size, with_weights=True)
        masks = np.load(speed_dir / "masks.npy")
        print(f"# stack: N={args.n} float32 {args.size}x{args.size}, {MASKED_FRACTION:.0%} masked")
        header = ("case", "seconds", "vs ours", "peak RSS MiB", "max rel diff")
        print(f"{header[0]:34s} {header[1]:>8s} {header[2]:>8s} {header[3]:>12s} {header[4]:>13s}")
        targets = []
        for kind, cases in (
            (
                "median",
                [
                    ("ours-median", ours_python),
                    ("numcombine", peer_python),
                    ("numcombine-sections", peer_python),
                    ("numpy-nanmedian", ours_python),
                    ("bottleneck-nanmedian", ours_python),
                ],
            ),
            (
                "minmed",
                [
                    ("ours-minmed", ours_python),
                    ("minmed", peer_python),
                    ("minmed-sections", peer_python),
                ],
            ),
        ):
            ours_time = None
            ours_output = root / f"{kind}_ours.npy"
            for name, python in cases:
                output = ours_output if name.startswith("ours") else root / f"{name}.npy"
                result = launch(python, name, speed_dir, output)
                if "error" in result:
                    print(f"{name:34s} skipped: {result['error'][0]}")
                    continue
                seconds = result["seconds"]
                if name.startswith("ours"):
                    ours_time = seconds
                    ratio, difference = "1.0", "-"
                else:
                    ratio = f"{seconds / ours_time:.1f}x"
                    difference = f"{max_relative_difference(ours_output, output, masks):.1e}"
                    if name in ("numcombine", "numpy-nanmedian", "minmed"):
                        targets.append((f"{kind}: ours vs {name}", seconds / ours_time))
                print(
                    f"{name:34s} {seconds:8.2f} {ratio:>8s} {result['peak_rss_mb']:12.0f} "
                    f"{difference:>13s}"
                )
            print()
        for label, speedup in targets:
            verdict = "ok" if speedup >= 3 else "BELOW TARGET"
            print(f"target >= 3x  {label:40s} {speedup:5.1f}x  {verdict}")
        print()

        print("# peak RSS reading from disk (np.load mmap_mode='r'), bufsize=1 MiB")
        columns = ("case", "seconds", "peak RSS MiB", "anon peak MiB", "before MiB")
        print(
            f"{columns[0]:34s} {columns[1]:>8s} {columns[2]:>12s} {columns[3]:>13s} "
            f"{columns[4]:>10s}"
        )

        def show(label: str, result: dict) -> None:
            print(
                f"{label:34s} {result['seconds']:8.2f} {result['peak_rss_mb']:12.1f} "
                f"{result['anonymous_peak_mb']:13.1f} {result['rss_before_mb']:10.1f}"
            )

        result = launch(ours_python, "ours-median-disk", speed_dir, None)
        show(f"median N={args.n} {args.size}^2", result)
        verdict = "ok" if result["peak_rss_mb"] * 2**20 < 400e6 else "ABOVE TARGET"
        print(f"target < 400 MB peak: {verdict}")
        shutil.rmtree(speed_dir)

        for kind in ("median", "minmed"):
            peaks = {}
            for n in args.rss_n:
                directory = root / f"rss_{n}x{args.rss_size}"
                if not directory.exists():
                    write_stack(directory, n, args.rss_size, with_weights=True)
                result = launch(ours_python, f"ours-{kind}-disk", directory, None)
                peaks[n] = (result["peak_rss_mb"], result["anonymous_peak_mb"])
                show(f"{kind} N={n} {args.rss_size}^2", result)
            counts = sorted(peaks)
            for low, high in zip(counts, counts[1:], strict=False):
                rss_slope = (peaks[high][0] - peaks[low][0]) / (high - low)
                anon_slope = (peaks[high][1] - peaks[low][1]) / (high - low)
                # the anonymous peak is sampled every 1 ms: allow 1 MiB of sampling error overall
                allowed = BUFSIZE_MIB + 1.0 / (high - low)
                verdict = "ok" if anon_slope <= allowed else "ABOVE ONE SECTION"
                print(
                    f"  {kind}: N {low} -> {high} per added input: peak RSS {rss_slope:+.3f} MiB, "
                    f"anonymous {anon_slope:+.3f} MiB (one section = {BUFSIZE_MIB:.3f} MiB) "
                    f"{verdict}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
