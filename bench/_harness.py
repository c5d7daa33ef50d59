"""Shared benchmark harness: time and memory of drizzlepipe and of AstroDrizzle, side by side.

The bench scripts in this folder run with the main venv's interpreter and import this module
(``from _harness import measure, run_astrodrizzle, print_side_by_side``; running
``python bench/<script>.py`` puts ``bench/`` on ``sys.path``). AstroDrizzle (drizzlepac) lives
only in ``.venv-peers``, so it always runs in a subprocess of that interpreter.

What is measured, and why
-------------------------
Wall time
    ``time.perf_counter`` around the call. For AstroDrizzle ``AstroDrizzleRun.total_s`` is the
    ``AstroDrizzle()`` call timed *inside* the child, after its imports, so it compares with
    ``measure`` around our pipeline call (our imports are not timed either). The whole child
    process, interpreter start and drizzlepac imports included, is ``process_wall_s``.
Per-step times
    AstroDrizzle's own: ``drizzlepac.util.ProcSteps.reportTimes`` logs a table at the end of
    every run (``Step  Elapsed time`` header, one ``<name>  <seconds> sec [(off|skipped|aborted)]``
    line per step, then ``Total``). The log file handler prefixes each line with
    ``[INFO    ]``. :func:`parse_astrodrizzle_step_times` reads the last such table, because
    AstroDrizzle appends to an existing log.
Peak RSS
    ``measure`` samples the resident set size of the current process (plus any child
    processes, e.g. dask process workers) every ``interval`` seconds in a background thread with
    psutil. It also reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's exact
    high-water mark, before and after. That mark covers the whole life of the process, so it
    says nothing about the call when an earlier peak was higher; but when it *rose* during the
    call, its new value is the call's exact peak (it even catches spikes shorter than the
    sampling interval). The printed ``peak_rss_mib`` is therefore the sampled peak, replaced by
    the kernel's high-water mark whenever that mark rose during the call (the two then agree to
    within a sampling interval's worth of allocation). Both raw numbers are kept in the result.
    For AstroDrizzle the child reports its own peak (``VmHWM`` on Linux, exact for its single
    process: ``ru_maxrss`` there would carry the driver's mark across exec; else ``ru_maxrss``)
    and the parent polls the child's process tree with psutil (which sees ``num_cores > 1``
    workers, summed; forked workers share copy-on-write pages, so that sum over-counts).
    ``AstroDrizzleRun.peak_rss_mib`` is the larger of the two.
    All sizes are MiB (2**20 bytes) of absolute RSS, interpreter and imported modules included;
    ``start_rss_mib`` / ``baseline_rss_mib`` give the level just before the call, so the call's
    own increment is the difference.

AstroDrizzle edits its inputs (MDRIZSKY, DQ bit 4096), so :func:`run_astrodrizzle` runs it on
writable copies in ``workdir``; it runs offline (``ASTROMETRY_STEP_CONTROL=OFF``,
``updatewcs=False``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = REPO_ROOT / ".venv-peers" / "bin" / "python"

MIB = 2**20

#: The seven AstroDrizzle processing steps, in execution order, under the names the benchmarks
#: use for both AstroDrizzle and drizzlepipe.
STEP_KEYS = (
    "static_mask",
    "sky",
    "driz_separate",
    "median",
    "blot",
    "driz_cr",
    "final",
)

# AstroDrizzle's step names in its timing table (drizzlepac 3.11: the PROCSTEPS_NAME constants
# of staticMask, sky, adrizzle, createMedian, ablot, drizCR and "Initialization" in
# astrodrizzle.run), matched after lower-casing and dropping everything but letters so that
# spelling variants ("Driz_CR", "Driz CR") map to the same key.
_ASTRODRIZZLE_STEP_NAMES = {
    "initialization": "initialization",
    "staticmask": "static_mask",
    "subtractsky": "sky",
    "separatedrizzle": "driz_separate",
    "createmedian": "median",
    "blot": "blot",
    "drizcr": "driz_cr",
    "finaldrizzle": "final",
}

# Optional "[LEVEL   ]" prefix written by drizzlepac's log file handler.
_LOG_PREFIX = r"^\s*(?:\[\s*[A-Z]+\s*\]\s*)?"
_TABLE_HEADER = re.compile(_LOG_PREFIX + r"Step\s+Elapsed time\s*$")
_TABLE_ROW = re.compile(
    _LOG_PREFIX
    + r"(?P<name>[A-Za-z][A-Za-z0-9_ \-]*?)\s+"
    + r"(?P<seconds>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s+sec"
    + r"(?:\s+\((?P<status>[a-z]+)\))?\s*$"
)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (figures differ between hosts: every
    benchmark prints it beside its numbers), or ``"unknown CPU"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


def _maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """``getrusage(who).ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    maxrss = resource.getrusage(who).ru_maxrss
    return maxrss / MIB if sys.platform == "darwin" else maxrss / 1024.0


def _tree_rss_bytes(process: psutil.Process, include_children: bool) -> int:
    """Memory of ``process`` (bytes): its resident set size alone, or with its live
    descendants the sum of their *proportional* set sizes (PSS), when the system reports them.

    Forked workers share the parent's pages copy-on-write; summing RSS would count every
    shared page once per process (a 2 GB parent with two forked workers would "use" 6 GB).
    PSS splits each shared page among the processes mapping it, so the sum over the tree is
    the memory the tree really holds; for a single process without shared memory it equals
    RSS.
    """
    if not include_children:
        return process.memory_info().rss
    members = [process]
    try:
        members += process.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    if len(members) == 1:
        return process.memory_info().rss
    total = 0
    for member in members:
        try:
            total += _pss_bytes(member)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            # A worker that ended between listing and reading holds no memory any more.
            continue
    return total


def _pss_bytes(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except AttributeError:  # pragma: no cover - no PSS on this platform
        return process.memory_info().rss


#: Shortest interval between two samples of a process tree's proportional set sizes (s).
_PSS_INTERVAL = 2.0


class _RssSampler:
    """Background thread recording the peak RSS of a process (tree) every ``interval`` s."""

    def __init__(self, pid: int, interval: float, include_children: bool,
                 interval_with_children: float = _PSS_INTERVAL):  # fmt: skip
        self._process = psutil.Process(pid)
        self._interval = interval
        self._interval_with_children = interval_with_children
        self._include_children = include_children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_bytes = 0
        self.samples = 0
        self.series: list[tuple[float, int]] = []  # (time.time(), bytes) of every sample

    def sample(self) -> None:
        try:
            rss = _tree_rss_bytes(self._process, self._include_children)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return  # the watched process has ended: its last reading stands
        self.samples += 1
        self.peak_bytes = max(self.peak_bytes, rss)
        self.series.append((time.time(), rss))

    def _run(self) -> None:
        while not self._stop.wait(self._wait()):
            self.sample()

    def _wait(self) -> float:
        """Seconds to the next sample: ``interval``, but at least ``interval_with_children``
        (default ``_PSS_INTERVAL``, 2 s) while the process has children. Their proportional
        set sizes come from /proc/<pid>/smaps_rollup, which walks every page table of a
        process holding its memory-map lock and slows the measured run's page faults: on the
        four UVIS exposures polling every 20 ms gave 37 s instead of 22-29 s, and every 0.25 s
        still 26-30 s against 20-21 s every 2 s (same machine, same hour; the same runs without
        any sampler 18.5-20.7 s). The peak, a plateau of several seconds in the final drizzle,
        read the same at 0.25 s and 2 s (2095 and 2098-2100 MiB)."""
        try:
            has_children = self._include_children and bool(self._process.children())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            has_children = False
        if has_children:
            return max(self._interval, self._interval_with_children)
        return self._interval

    def __enter__(self) -> _RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB


@dataclass(frozen=True)
class Measurement:
    """Result of :func:`measure`; unpacks as ``result, wall_s, peak_rss_mib``.

    Attributes
    ----------
    result : object
        What the measured function returned.
    wall_s : float
        Wall-clock duration of the call, seconds.
    peak_rss_mib : float
        Peak resident set size of this process (and its children) during the call, MiB; the
        sampled peak, or the kernel high-water mark when that mark rose during the call.
    start_rss_mib : float
        RSS just before the call, MiB (``peak_rss_mib - start_rss_mib`` is the call's own cost).
    sampled_peak_rss_mib : float
        Highest psutil sample, MiB.
    ru_maxrss_before_mib, ru_maxrss_after_mib : float
        ``getrusage(RUSAGE_SELF).ru_maxrss`` before and after the call, MiB.
    samples : int
        Number of RSS samples taken.
    """

    result: Any
    wall_s: float
    peak_rss_mib: float
    start_rss_mib: float
    sampled_peak_rss_mib: float
    ru_maxrss_before_mib: float
    ru_maxrss_after_mib: float
    samples: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.result, self.wall_s, self.peak_rss_mib))


def measure(
    func: Callable[..., Any],
    *args: Any,
    interval: float = 0.02,
    include_children: bool = True,
    **kwargs: Any,
) -> Measurement:
    """Call ``func(*args, **kwargs)`` and measure its wall time and this process's peak RSS.

    Parameters
    ----------
    func : callable
        The code to measure.
    *args, **kwargs
        Passed to ``func`` (``interval`` and ``include_children`` are taken by ``measure``).
    interval : float
        Seconds between two RSS samples of the background thread (default 20 ms).
    include_children : bool
        Add the RSS of this process's child processes (e.g. dask process workers) to each sample.

    Returns
    -------
    Measurement
        ``result, wall_s, peak_rss_mib = measure(...)`` works; the other fields say how the peak
        was obtained (see the module docstring for why the printed peak is chosen this way).
    """
    ru_maxrss_before = _maxrss_mib()
    with _RssSampler(os.getpid(), interval, include_children) as sampler:
        start_rss_mib = sampler.peak_mib
        start = time.perf_counter()
        result = func(*args, **kwargs)
        wall_s = time.perf_counter() - start
        # One last sample while ``result`` is still alive: a call that returns a large array
        # ends at its peak.
        sampler.sample()
    ru_maxrss_after = _maxrss_mib()
    peak = sampler.peak_mib
    if ru_maxrss_after > ru_maxrss_before:
        peak = max(peak, ru_maxrss_after)
    return Measurement(
        result=result,
        wall_s=wall_s,
        peak_rss_mib=peak,
        start_rss_mib=start_rss_mib,
        sampled_peak_rss_mib=sampler.peak_mib,
        ru_maxrss_before_mib=ru_maxrss_before,
        ru_maxrss_after_mib=ru_maxrss_after,
        samples=sampler.samples,
    )


@dataclass(frozen=True)
class StepTimes:
    """AstroDrizzle's timing table: seconds and status per step, and its ``Total`` line.

    ``seconds`` and ``status`` are keyed by :data:`STEP_KEYS` plus ``"initialization"``;
    ``status`` is ``"finished"`` or AstroDrizzle's note (``"off"``, ``"skipped"``, ``"aborted"``).
    ``total_s`` is the table's ``Total`` (AstroDrizzle's sum of the steps), or ``None``.
    """

    seconds: dict[str, float]
    status: dict[str, str]
    total_s: float | None


_AD_STEP_EVENT = re.compile(
    r"Processing Step '(?P<name>[^']+)' (?P<event>started|finished) at "
    r"(?P<time>\d\d:\d\d:\d\d(?:\.\d+)?) \((?P<date>\d\d/\d\d/\d{4})\)"
)
_OURS_STEP_EVENT = re.compile(
    r"^(?P<asctime>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) .*?Step (?P<name>\w+) finished in "
    r"(?P<seconds>[0-9.]+) s",
    re.MULTILINE,
)


def astrodrizzle_step_windows(log_text: str) -> dict[str, tuple[float, float]]:
    """``{step key: (start, end)}`` (``time.time()`` seconds) of every AstroDrizzle step, from
    its log's "Processing Step '...' started/finished at" lines (local time)."""
    starts, windows = {}, {}
    for match in _AD_STEP_EVENT.finditer(log_text):
        squeezed = re.sub(r"[^a-z]", "", match.group("name").lower())
        key = _ASTRODRIZZLE_STEP_NAMES.get(squeezed, squeezed)
        clock = match.group("time")
        when = time.strptime(f"{match.group('date')} {clock[:8]}", "%d/%m/%Y %H:%M:%S")
        stamp = time.mktime(when) + float(clock[8:] or 0.0)
        if match.group("event") == "started":
            starts[key] = stamp
        elif key in starts:
            windows[key] = (starts.pop(key), stamp)
    return windows


def drizzlepipe_step_windows(log_text: str) -> dict[str, tuple[float, float]]:
    """``{step name: (start, end)}`` (``time.time()`` seconds) from drizzlepipe's
    "Step <name> finished in <s> s" lines logged with ``%(asctime)s`` first (local time)."""
    windows = {}
    for match in _OURS_STEP_EVENT.finditer(log_text):
        clock, millis = match.group("asctime").split(",")
        end = time.mktime(time.strptime(clock, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000.0
        windows[match.group("name")] = (end - float(match.group("seconds")), end)
    return windows


def peaks_in_windows(series, windows) -> dict[str, float | None]:
    """The largest sample of ``series`` (``(time, bytes)``) inside each window, MiB; None for a
    window no sample fell in."""
    peaks = {}
    for name, (start, end) in windows.items():
        inside = [value for stamp, value in series if start <= stamp <= end]
        peaks[name] = max(inside) / MIB if inside else None
    return peaks


def chip_overlap(path, other, margin: float = 3.0):
    """Boolean mask of the pixels of ``path``'s first chip (``SCI,1``) whose centre lies at least
    ``margin`` pixels inside ``other``'s first chip (both WCS from the files, distortion
    included): where two exposures overlap, for comparing what each pipeline flags there."""
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    def chip_wcs(name):
        with fits.open(name) as hdulist:
            return WCS(hdulist["SCI", 1].header, hdulist)

    own, theirs = chip_wcs(path), chip_wcs(other)
    ny, nx = fits.getval(path, "NAXIS2", ("SCI", 1)), fits.getval(path, "NAXIS1", ("SCI", 1))
    yy, xx = np.mgrid[0:ny, 0:nx]
    x, y = theirs.all_world2pix(*own.all_pix2world(xx.ravel(), yy.ravel(), 0), 0)
    inside = (x >= margin) & (x <= nx - 1 - margin) & (y >= margin) & (y <= ny - 1 - margin)
    return inside.reshape(ny, nx)


def parse_astrodrizzle_step_times(log_text: str) -> StepTimes:
    """Read the per-step elapsed times from an AstroDrizzle log (the last timing table in it).

    Parameters
    ----------
    log_text : str
        Contents of ``astrodrizzle.log`` (or AstroDrizzle's console output).

    Returns
    -------
    StepTimes
        Seconds per step under the :data:`STEP_KEYS` names (plus ``initialization``). Steps
        whose names are not recognised are kept under their lower-cased, underscore-joined name.

    Raises
    ------
    ValueError
        If the text holds no timing table.
    """
    lines = log_text.splitlines()
    header_rows = [i for i, line in enumerate(lines) if _TABLE_HEADER.match(line)]
    if not header_rows:
        raise ValueError("no AstroDrizzle timing table ('Step ... Elapsed time') in the log")
    seconds: dict[str, float] = {}
    status: dict[str, str] = {}
    total_s = None
    for line in lines[header_rows[-1] + 1 :]:
        if re.fullmatch(_LOG_PREFIX + r"[-=\s]*", line):
            continue  # rule lines and empty lines inside the table
        row = _TABLE_ROW.match(line)
        if row is None:
            break
        name = row.group("name").strip()
        value = float(row.group("seconds"))
        if name.lower() == "total":
            total_s = value
            break
        squeezed = re.sub(r"[^a-z]", "", name.lower())
        key = _ASTRODRIZZLE_STEP_NAMES.get(squeezed, re.sub(r"\W+", "_", name.lower()))
        seconds[key] = value
        status[key] = row.group("status") or "finished"
    if not seconds:
        raise ValueError("the AstroDrizzle timing table in the log has no step rows")
    return StepTimes(seconds=seconds, status=status, total_s=total_s)


@dataclass(frozen=True)
class AstroDrizzleRun:
    """What :func:`run_astrodrizzle` measured and where AstroDrizzle wrote its files.

    Attributes
    ----------
    total_s : float
        Wall time of the ``AstroDrizzle()`` call inside the child, seconds (no imports).
    process_wall_s : float
        Wall time of the whole child process (interpreter start, imports, the call), seconds.
    step_s : dict of str to float
        AstroDrizzle's per-step times, seconds, keyed by :data:`STEP_KEYS` (+ initialization).
    step_status : dict of str to str
        ``"finished"``, ``"off"``, ``"skipped"`` or ``"aborted"`` per step.
    log_total_s : float or None
        The ``Total`` line of AstroDrizzle's table (its sum of the step times), seconds.
    peak_rss_mib : float
        Peak RSS of the child, MiB: the larger of its own ``ru_maxrss`` and the polled tree.
    baseline_rss_mib : float
        Child's RSS after its imports, just before the call, MiB.
    maxrss_mib, polled_peak_rss_mib : float
        The two peak readings ``peak_rss_mib`` is taken from, MiB.
    workdir, log_path : Path
        Where AstroDrizzle ran, and its log (``runfile``).
    input_copies : list of Path
        The copies it ran on (their DQ arrays carry the cosmic rays it found, bit 4096).
    products : list of Path
        ``*_drz.fits`` / ``*_drc.fits`` (``build=True``) or their ``*_sci.fits`` (``build=False``).
    crmasks, medians, single_sci, single_wht, blots : list of Path
        ``*_crmask.fits``, ``*_med.fits``, ``*_single_sci.fits``, ``*_single_wht.fits``,
        ``*_blt.fits`` still present after the run (``clean=True`` removes them).
    new_files : list of Path
        Every file in ``workdir`` the run created or modified.
    step_peak_mib : dict of str to float or None
        Largest memory sample (MiB) inside each step's window of the log (:data:`STEP_KEYS`).
    """

    total_s: float
    process_wall_s: float
    step_s: dict[str, float]
    step_status: dict[str, str]
    log_total_s: float | None
    peak_rss_mib: float
    baseline_rss_mib: float
    maxrss_mib: float
    polled_peak_rss_mib: float
    workdir: Path
    log_path: Path
    input_copies: list[Path]
    products: list[Path] = field(default_factory=list)
    crmasks: list[Path] = field(default_factory=list)
    medians: list[Path] = field(default_factory=list)
    single_sci: list[Path] = field(default_factory=list)
    single_wht: list[Path] = field(default_factory=list)
    blots: list[Path] = field(default_factory=list)
    new_files: list[Path] = field(default_factory=list)
    step_peak_mib: dict[str, float | None] = field(default_factory=dict)

    @property
    def product(self) -> Path:
        """The final drizzled product (the first of ``products``)."""
        if not self.products:
            raise FileNotFoundError(f"AstroDrizzle wrote no _drz/_drc product in {self.workdir}")
        return self.products[0]


# Runs inside the peer interpreter: argv[1] is a JSON file with the call's inputs, argv[2] the
# JSON file it writes its own timing and memory readings to. It stays importable without
# drizzlepipe, which the peer venv need not have.
_CHILD_SCRIPT = r"""
import json, os, resource, sys, time, traceback
spec = json.load(open(sys.argv[1]))
os.chdir(spec["workdir"])
def maxrss_mib(who):
    if who == resource.RUSAGE_SELF and os.path.exists("/proc/self/status"):
        # VmHWM, this process image's own peak: Linux's ru_maxrss keeps the high-water mark
        # of the process it was forked from (the bench driver) across exec
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    value = resource.getrusage(who).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024.0
def rss_mib():
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return maxrss_mib(resource.RUSAGE_SELF)  # an upper bound of the current RSS
report = {}
try:
    start = time.perf_counter()
    from drizzlepac.astrodrizzle import AstroDrizzle
    report["import_s"] = time.perf_counter() - start
    report["baseline_rss_mib"] = rss_mib()
    start = time.perf_counter()
    AstroDrizzle(input=spec["inputs"], runfile=spec["runfile"], **spec["pars"])
    report["call_s"] = time.perf_counter() - start
except BaseException:
    report["error"] = traceback.format_exc()
report["maxrss_self_mib"] = maxrss_mib(resource.RUSAGE_SELF)
report["maxrss_children_mib"] = maxrss_mib(resource.RUSAGE_CHILDREN)
with open(sys.argv[2], "w") as out:
    json.dump(report, out)
sys.exit(1 if "error" in report else 0)
"""

_OUTPUT_PATTERNS = {
    "products": ("*_drz.fits", "*_drc.fits", "*_drz_sci.fits", "*_drc_sci.fits"),
    "crmasks": ("*_crmask.fits",),
    "medians": ("*_med.fits",),
    "single_sci": ("*_single_sci.fits",),
    "single_wht": ("*_single_wht.fits",),
    "blots": ("*_blt.fits",),
}


def _snapshot(directory: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in directory.iterdir() if path.is_file()}


def run_astrodrizzle(
    input_files: Iterable[str | os.PathLike],
    workdir: str | os.PathLike,
    *,
    peer_python: str | os.PathLike = DEFAULT_PEER_PYTHON,
    runfile: str = "astrodrizzle.log",
    interval: float = 0.02,
    timeout: float | None = None,
    **astrodrizzle_pars: Any,
) -> AstroDrizzleRun:
    """Run ``drizzlepac.astrodrizzle.AstroDrizzle`` on copies of the inputs in a subprocess.

    Parameters
    ----------
    input_files : iterable of path
        The FLT/FLC (or other HST) exposures. They are copied into ``workdir`` (writable; a
        same-named file there is replaced) and AstroDrizzle runs on the copies.
    workdir : path
        Directory to run in; created when missing. Files present before the run are not
        reported as outputs unless the run rewrites them. The harness leaves three files of
        its own there: ``_harness_call.json`` (the call), ``_harness_report.json`` (the child's
        timings and memory) and ``_harness_stdout.txt`` (AstroDrizzle's console output).
    peer_python : path
        Interpreter of the venv that has drizzlepac (default: the repo's ``.venv-peers``).
    runfile : str
        Name of AstroDrizzle's log file in ``workdir``; an old one is removed first.
    interval : float
        Seconds between two psutil polls of the child's RSS.
    timeout : float, optional
        Seconds after which the child is killed and ``subprocess.TimeoutExpired`` raised.
    **astrodrizzle_pars
        AstroDrizzle parameters (JSON-serialisable), e.g. ``num_cores=1, build=True,
        clean=True, in_memory=False, context=True, preserve=False, restore=False``.
        ``updatewcs`` is forced to False (offline) unless given.

    Returns
    -------
    AstroDrizzleRun
        Total and per-step wall times (seconds), peak RSS (MiB) and the paths of its files.

    Raises
    ------
    FileNotFoundError
        If ``peer_python`` does not exist.
    RuntimeError
        If AstroDrizzle fails; the message carries the end of its traceback and log path.
    ValueError
        If its log lacks a timing row for one of :data:`STEP_KEYS`.
    """
    if isinstance(input_files, str | os.PathLike):
        input_files = [input_files]
    if not Path(peer_python).exists():
        raise FileNotFoundError(
            f"no peer interpreter at {peer_python} (`make test-peers` creates .venv-peers)"
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    input_copies = []
    for source in map(Path, input_files):
        copy = workdir / source.name
        if copy.resolve() != source.resolve():
            shutil.copyfile(source, copy)  # content only: read-only sources give writable copies
        copy.chmod(copy.stat().st_mode | 0o200)
        input_copies.append(copy)
    if not input_copies:
        raise ValueError("run_astrodrizzle needs at least one input file")

    log_path = workdir / runfile
    log_path.unlink(missing_ok=True)  # AstroDrizzle appends to an existing log
    spec_path = workdir / "_harness_call.json"
    report_path = workdir / "_harness_report.json"
    report_path.unlink(missing_ok=True)
    pars = {"updatewcs": False, **astrodrizzle_pars}
    spec_path.write_text(
        json.dumps(
            {
                "workdir": str(workdir),
                "inputs": [copy.name for copy in input_copies],
                "runfile": runfile,
                "pars": pars,
            }
        )
    )
    before = _snapshot(workdir)

    env = dict(os.environ, ASTROMETRY_STEP_CONTROL="OFF")
    stdout_path = workdir / "_harness_stdout.txt"
    with stdout_path.open("w") as console:
        start = time.perf_counter()
        child = subprocess.Popen(
            [os.fspath(peer_python), "-c", _CHILD_SCRIPT, str(spec_path), str(report_path)],
            cwd=workdir,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        try:
            with _RssSampler(child.pid, interval, include_children=True) as sampler:
                returncode = child.wait(timeout=timeout)
        except BaseException:
            # Timeout or interrupt: stop the child and any workers it started (num_cores > 1).
            try:
                workers = psutil.Process(child.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                workers = []
            child.kill()
            for worker in workers:
                try:
                    worker.kill()
                except psutil.NoSuchProcess:
                    continue
            child.wait()
            raise
        process_wall_s = time.perf_counter() - start

    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if returncode != 0 or "call_s" not in report:
        detail = report.get("error") or stdout_path.read_text()[-3000:]
        raise RuntimeError(
            f"AstroDrizzle failed (exit {returncode}); log: {log_path}\n{detail[-3000:]}"
        )
    times = parse_astrodrizzle_step_times(log_path.read_text())
    missing = [key for key in STEP_KEYS if key not in times.seconds]
    if missing:
        raise ValueError(f"no timing for {missing} in {log_path}")

    after = _snapshot(workdir)
    harness_files = {spec_path, report_path, stdout_path}
    new_files = sorted(
        path
        for path, mtime in after.items()
        if before.get(path) != mtime and path not in harness_files
    )
    outputs = {
        name: sorted(
            {path for pattern in patterns for path in workdir.glob(pattern)} & set(new_files)
        )
        for name, patterns in _OUTPUT_PATTERNS.items()
    }
    maxrss_mib = max(report["maxrss_self_mib"], report["maxrss_children_mib"])
    return AstroDrizzleRun(
        total_s=report["call_s"],
        process_wall_s=process_wall_s,
        step_s=times.seconds,
        step_status=times.status,
        log_total_s=times.total_s,
        peak_rss_mib=max(maxrss_mib, sampler.peak_mib),
        baseline_rss_mib=report["baseline_rss_mib"],
        maxrss_mib=maxrss_mib,
        polled_peak_rss_mib=sampler.peak_mib,
        workdir=workdir,
        log_path=log_path,
        input_copies=input_copies,
        new_files=new_files,
        step_peak_mib=peaks_in_windows(
            sampler.series, astrodrizzle_step_windows(log_path.read_text())
        ),
        **outputs,
    )


def step_rows(
    ours_step_s: Mapping[str, float | None],
    astrodrizzle_step_s: Mapping[str, float | None],
    *,
    ours_total_s: float | None = None,
    astrodrizzle_total_s: float | None = None,
) -> list[tuple[str, float | None, float | None]]:
    """Rows for :func:`print_side_by_side`: the :data:`STEP_KEYS` in order, then ``total``.

    Steps missing from a mapping show as ``None``; the totals are printed only when given.
    """
    rows = [(key, ours_step_s.get(key), astrodrizzle_step_s.get(key)) for key in STEP_KEYS]
    if ours_total_s is not None or astrodrizzle_total_s is not None:
        rows.append(("total", ours_total_s, astrodrizzle_total_s))
    return rows


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or ours <= 0.0:
        return "-"
    return f"{theirs / ours:.2f}"


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_side_by_side(
    rows: Sequence[tuple[str, float | None, float | None]],
    *,
    peak_rss_mib: tuple[float | None, float | None] | None = None,
    title: str | None = None,
    file: TextIO | None = None,
    unit: str = "s",
) -> str:
    """Print a fixed-width table: step, drizzlepipe s, AstroDrizzle s, ratio (AD/ours).

    Parameters
    ----------
    rows : sequence of (str, float or None, float or None)
        Step label, drizzlepipe seconds, AstroDrizzle seconds (``None`` prints ``-``).
    peak_rss_mib : (float or None, float or None), optional
        Peak RSS of drizzlepipe and of AstroDrizzle, MiB, printed below the times with their
        ratio (AD/ours).
    title : str, optional
        A line printed above the table.
    file : text stream, optional
        Where to print (default ``sys.stdout``).
    unit : str, optional
        Unit of the values: ``"s"`` (3 decimals) or ``"MiB"`` (none).

    Returns
    -------
    str
        The printed text.
    """
    header = f"{'step':<16}{f'drizzlepipe {unit}':>16}{f'AstroDrizzle {unit}':>17}{'AD/ours':>9}"
    fmt = ".3f" if unit == "s" else ".0f"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for label, ours, theirs in rows:
        lines.append(
            f"{label:<16}{_cell(ours, fmt):>16}{_cell(theirs, fmt):>17}{_ratio(ours, theirs):>9}"
        )
    if peak_rss_mib is not None:
        ours_rss, theirs_rss = peak_rss_mib
        lines.append("-" * len(header))
        lines.append(
            f"{'peak RSS MiB':<16}{_cell(ours_rss, '.0f'):>16}{_cell(theirs_rss, '.0f'):>17}"
            f"{_ratio(ours_rss, theirs_rss):>9}"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="", file=file or sys.stdout)
    return text


#: Python source that makes stsci.skypac 1.0.12 work with spherical-geometry 1.4 (which removed
#: ``SphericalPolygon.iter_polygons_flat``): without it AstroDrizzle's ``match`` sky methods
#: crash inside skypac and silently fall back to ``localmin``. Run it (``exec``) or install it
#: as ``sitecustomize.py`` in the peer process.
SKYPAC_PATCH = """\
from spherical_geometry.polygon import SphericalPolygon

if not hasattr(SphericalPolygon, "iter_polygons_flat"):

    def iter_polygons_flat(polygon):
        for part in polygon.polygons:
            if isinstance(part, SphericalPolygon):
                yield from iter_polygons_flat(part)
            else:
                yield part

    SphericalPolygon.iter_polygons_flat = iter_polygons_flat
"""
