"""The pipeline's memory model: how much memory a run needs, as a formula
(docs/developer/memory.md).

Sizes are in bytes. ``P`` is the number of pixels of one chip, ``O`` of the output grid, ``C``
the number of chips, ``E`` of exposures and ``W`` the number of workers.

* Chips in memory: their state, ``5 P`` each (DQ uint32, static mask uint8), all ``C``; their
  pixels (SCI, ERR) are read from the files when used (:mod:`drizzlepipe.datamodels.pixels`).
  Another ``5 P`` each covers what the sky step may keep: the chips' data it replaces (``4 P``
  with ``subtract=True``, or for inputs whose sky was subtracted before they were read), else
  the data and mask of the chip each of its threads measures (``5 P`` per thread). On disk
  (``in_memory=False``): ``13 P`` (SCI, ERR, DQ, static mask) for the chips borrowed at a time,
  at most ``W``.
* Singles (DrizSeparate): ``8 O`` each (SCI, WHT float32). In memory all ``E``; on disk they are
  files and CreateMedian reads row sections of ``bufsize`` MiB from each.
* Working set of a task on one chip: one input array at a time while it is prepared (``4 P``),
  the prepared copies (sky-subtracted data, variance, masks: ``10 P``), and the bands it is
  drizzled (or blotted) in, whose pixel maps and weights take some 30 MB: ``16 P`` per worker.
* Outputs, whichever step is largest: BlotCR holds the median, its hole-filled copy, its hole
  map and its weight (``16 O``); DrizFinal holds ``runs`` partial accumulations (default 2),
  each ``8 O`` (SCI, WHT) + ``4 O`` with the error image + ``4 O`` per 32 chips of context,
  and merges them in place.
* Bookkeeping per chip (models' metadata, WCS objects, names): about 1 MiB, measured.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = [
    "MEMORY_SHARE",
    "MemoryEstimate",
    "PER_CHIP_OVERHEAD",
    "RunPlan",
    "available_memory",
    "estimate_memory",
    "plan_run",
]

#: Python objects kept per chip (metadata tree, WCS, labels), measured on 15 and 60 exposures.
PER_CHIP_OVERHEAD = 1 << 20

_MIB = 1 << 20


@dataclass(frozen=True)
class MemoryEstimate:
    """Terms of :func:`estimate_memory` (bytes); ``total`` is their sum."""

    chips: int
    singles: int
    median_sections: int
    tasks: int
    outputs: int
    bookkeeping: int

    @property
    def total(self) -> int:
        """Peak bytes above the interpreter's own use (imports included)."""
        return (
            self.chips
            + self.singles
            + self.median_sections
            + self.tasks
            + self.outputs
            + self.bookkeeping
        )


def estimate_memory(
    chip_pixels: int,
    output_pixels: int,
    n_chips: int,
    n_exposures: int,
    *,
    n_workers: int = 1,
    in_memory: bool = True,
    compute_err: bool = True,
    context: bool = True,
    bufsize_mib: float = 1.0,
    final_runs: int = 2,
) -> MemoryEstimate:
    """Peak memory of a pipeline run by the model above.

    Parameters
    ----------
    chip_pixels : int
        Pixels of the largest chip (P).
    output_pixels : int
        Pixels of the output grid (O).
    n_chips, n_exposures : int
        Chips (C) and exposures (E) of the input.
    n_workers : int
        Workers (W) of the scheduler.
    in_memory : bool
        The pipeline's ``in_memory``.
    compute_err, context : bool
        DrizFinal's error image and context image switches.
    bufsize_mib : float
        CreateMedian's ``bufsize`` (MiB read per single at a time).
    final_runs : int
        DrizFinal's ``runs`` (partial accumulations).

    Returns
    -------
    MemoryEstimate
    """
    p, o, w = int(chip_pixels), int(output_pixels), max(int(n_workers), 1)
    resident_chips = min(w, n_chips)
    partial = 8 * o + (4 * o if compute_err else 0)
    if context:
        partial += 4 * o * math.ceil(max(n_chips, 1) / 32)
    return MemoryEstimate(
        chips=10 * p * n_chips if in_memory else 13 * p * resident_chips,
        singles=8 * o * n_exposures if in_memory else 0,
        median_sections=0 if in_memory else int(2 * bufsize_mib * _MIB * n_exposures),
        tasks=16 * p * min(w, n_chips),
        outputs=max(16 * o, partial * min(max(int(final_runs), 1), n_chips)),
        bookkeeping=PER_CHIP_OVERHEAD * n_chips,
    )


def _read_number(path):
    try:
        text = open(path).read().strip()  # noqa: SIM115 - tiny /sys files
    except OSError:
        return None
    return None if not text or text == "max" else int(text.split()[0])


def _system_available():
    """MemAvailable of /proc/meminfo (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_memory():
    """Bytes this process can still use: the system's available memory, or less when a cgroup
    (a container, a batch job) limits the process (cgroup v2 ``memory.max``, v1
    ``memory.limit_in_bytes``, minus what the group uses already)."""
    available = _system_available()
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit = _read_number(limit_file)
        if limit is not None and limit < (1 << 60):
            used = _read_number(usage_file) or 0
            available = min(available, max(limit - used, 0))
            break
    return int(available)


#: Share of the available memory a run may plan to use: the rest stays for the system and
#: for what the model does not count (page cache, the interpreter's growth).
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class RunPlan:
    """What :func:`plan_run` decided, and why (for the log)."""

    in_memory: bool
    n_workers: int
    reason: str


def plan_run(chip_pixels, output_pixels, n_chips, n_exposures, *, cores, available,
             in_memory=None, n_workers=None, **options):  # fmt: skip
    """Choose ``in_memory`` and ``n_workers`` where the user left them to the model.

    In memory when the whole run fits in :data:`MEMORY_SHARE` of the available memory, else
    on disk; workers up to ``cores`` while their tasks fit too (at least one). Values the user
    gave are kept.

    Parameters
    ----------
    chip_pixels, output_pixels, n_chips, n_exposures : int
        As :func:`estimate_memory`.
    cores : int
        CPU cores this process may use.
    available : int
        Bytes available (:func:`available_memory`).
    in_memory : bool or None
        The user's value, or None to decide.
    n_workers : int or None
        The user's value, or None to decide.
    **options
        Passed to :func:`estimate_memory` (``compute_err``, ``final_runs``...).

    Returns
    -------
    RunPlan
    """
    budget = MEMORY_SHARE * available
    workers = n_workers or max(1, int(cores))

    def need(keep, count):
        return estimate_memory(chip_pixels, output_pixels, n_chips, n_exposures,
                               n_workers=count, in_memory=keep, **options).total  # fmt: skip

    if in_memory is None:
        in_memory = need(True, workers) <= budget
        how = "fits in" if in_memory else "exceeds"
        reason = (f"in_memory={in_memory}: {need(True, workers) / 2**30:.2f} GiB "
                  f"{how} half of the {available / 2**30:.1f} GiB available")  # fmt: skip
    else:
        reason = f"in_memory={in_memory} (given)"
    if n_workers is None:
        while workers > 1 and need(in_memory, workers) > budget:
            workers -= 1
        reason += f"; {workers} worker(s) of {cores} core(s)"
    return RunPlan(bool(in_memory), int(workers), reason)
