"""The pipeline's memory model: how much memory a run needs, as a formula
(docs/developer/memory.md).

Sizes are in bytes. ``P`` is the number of pixels of one chip, ``O`` of the output grid, ``C``
the number of chips, ``E`` of exposures and ``W`` the number of workers.

* Chips: ``13 P`` each (SCI and ERR float32, DQ uint32, static mask uint8). In memory all ``C``
  of them stay resident; on disk (``in_memory=False``) only the ones borrowed at a time, at
  most ``W``.
* Singles (DrizSeparate): ``8 O`` each (SCI, WHT float32). In memory all ``E``; on disk they are
  files and CreateMedian reads row sections of ``bufsize`` MiB from each.
* Working set of a task on one chip: its pixel map (``16 P``, float64 x, y) and the prepared
  copies (sky-subtracted data, variance, weight, masks: about ``14 P``), ``30 P`` per worker.
* Outputs, whichever step is largest: BlotCR holds the median, its hole-filled copy, its hole
  map and its weight (``16 O``); DrizFinal holds ``runs`` partial accumulations (default 2),
  each ``8 O`` (SCI, WHT) + ``4 O`` with the error image + ``4 O`` per 32 chips of context,
  and merges them in place.
* Bookkeeping per chip (models' metadata, WCS objects, names): about 1 MiB, measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MemoryEstimate", "estimate_memory", "PER_CHIP_OVERHEAD"]

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
    resident_chips = n_chips if in_memory else min(w, n_chips)
    partial = 8 * o + (4 * o if compute_err else 0)
    if context:
        partial += 4 * o * math.ceil(max(n_chips, 1) / 32)
    return MemoryEstimate(
        chips=13 * p * resident_chips,
        singles=8 * o * n_exposures if in_memory else 0,
        median_sections=0 if in_memory else int(2 * bufsize_mib * _MIB * n_exposures),
        tasks=30 * p * min(w, n_chips),
        outputs=max(16 * o, partial * min(max(int(final_runs), 1), n_chips)),
        bookkeeping=PER_CHIP_OVERHEAD * n_chips,
    )
