"""Row-sectioned access to stacks of images, for combining them without loading them whole.

The combine engine (:mod:`drizzlepipe.algorithms.combine`) evaluates its result in blocks of
full-width rows. For every block it reads the same rows from each of the N inputs, so the memory
it needs grows with one block per input and not with the size of the whole stack. This module
holds the two pieces that make that possible:

:func:`plan_row_sections`
    Splits the rows of an image into blocks whose size is bounded by a buffer size in MiB per
    input (AstroDrizzle's ``combine_bufsize``), each block read with a *halo* of extra rows on
    both sides when the computation of a row needs its neighbours (minmed's ``grow``). Only the
    block's own rows are kept, so every output pixel sees exactly the same neighbourhood as if the
    whole image were in memory and results never depend on the buffer size.
:class:`ImageStack`
    Presents N two-dimensional inputs of one shape as a stack from which rows ``[start, stop)``
    of image ``i`` can be read. An input may be an in-memory array, a ``numpy.memmap``, a 3-D
    array or memmap holding the whole stack, or any object that supports ``obj[start:stop, :]``
    and has a ``shape`` (for example ``astropy.io.fits.ImageHDU.section``), so files on disk are
    read row block by row block.

Memory notes for inputs on disk. Pages of a memory-mapped file that have been read count in the
process's resident memory until the kernel needs them back. For ``numpy.memmap`` inputs opened
read-only or shared (modes ``"r"``, ``"r+"``, ``"w+"``) the mapped pages are released
(``madvise(MADV_DONTNEED)``) as soon as a block has been copied, so reading a stack from disk
keeps one block per input resident. Copy-on-write maps (mode ``"c"``, which is what
``astropy.io.fits`` uses for ``memmap=True``) may hold private changes and are left alone: open
FITS files with ``memmap=False`` and pass ``hdu.section``, which reads each block with ordinary
file reads.

This module does no file opening of its own: callers pass objects that are already open. A
disk-backed stack that is filled one frame at a time (as stcal's on-disk median computer does)
is simply ``numpy.lib.format.open_memmap(path, "w+", np.float32, (N, ny, nx))`` with
``stack[i] = frame``: there is no append counter, so stcal's bug of bounding appends by the
number of sections instead of the number of frames cannot arise.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BUFSIZE_MIB",
    "ImageStack",
    "RowSection",
    "plan_row_sections",
    "rows_per_section",
]

#: Buffer size per input in MiB used when none is given (AstroDrizzle's ``combine_bufsize``).
DEFAULT_BUFSIZE_MIB = 1.0

_BYTES_PER_MIB = 1024 * 1024
# Bytes per pixel of the working copy of a block: the engine works in float32.
_WORKING_ITEMSIZE = 4
# numpy.memmap modes whose pages can be dropped after reading without losing anything: read-only
# and shared maps ("c" is a private copy-on-write map that may hold changes not in the file).
_RELEASABLE_MEMMAP_MODES = ("r", "r+", "w+", "readonly", "readwrite", "write")


@dataclass(frozen=True)
class RowSection:
    """One block of rows: the rows read (with halo) and the rows whose results are kept.

    Attributes
    ----------
    read_start, read_stop : int
        Rows ``[read_start, read_stop)`` of every input are read for this block.
    keep_start, keep_stop : int
        Output rows ``[keep_start, keep_stop)`` are computed by this block; they lie inside the
        read rows, at least ``halo`` rows from either end unless that end is an image edge.
    """

    read_start: int
    read_stop: int
    keep_start: int
    keep_stop: int

    @property
    def n_read(self) -> int:
        """Number of rows read."""
        return self.read_stop - self.read_start

    @property
    def keep_in_read(self) -> slice:
        """Slice selecting the kept rows inside an array of the read rows."""
        return slice(self.keep_start - self.read_start, self.keep_stop - self.read_start)


def rows_per_section(ncols: int, bufsize: float | None = None, halo: int = 0) -> int:
    """Number of output rows one block computes for a buffer of ``bufsize`` MiB per input.

    Parameters
    ----------
    ncols : int
        Width of the images in pixels.
    bufsize : float or None
        Buffer size per input in MiB (2**20 bytes) of float32 rows; None means
        :data:`DEFAULT_BUFSIZE_MIB`. Zero asks for the smallest possible block.
    halo : int
        Extra rows read on each side of a block.

    Returns
    -------
    int
        Rows computed per block, at least 1. A block reads at most this plus ``2 * halo`` rows,
        which fits in ``bufsize`` unless even ``1 + 2 * halo`` rows do not.

    Raises
    ------
    ValueError
        If ``bufsize`` is negative or not finite, ``ncols`` < 1 or ``halo`` < 0.
    """
    bufsize = DEFAULT_BUFSIZE_MIB if bufsize is None else float(bufsize)
    if not math.isfinite(bufsize) or bufsize < 0:
        raise ValueError(f"bufsize must be a finite number of MiB >= 0, got {bufsize!r}")
    if ncols < 1:
        raise ValueError(f"images must have at least one column, got {ncols}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0 rows, got {halo}")
    budget_rows = int(bufsize * _BYTES_PER_MIB) // (ncols * _WORKING_ITEMSIZE)
    return max(1, budget_rows - 2 * halo)


def plan_row_sections(
    nrows: int,
    ncols: int,
    *,
    bufsize: float | None = None,
    halo: int = 0,
    rows: tuple[int, int] | None = None,
) -> list[RowSection]:
    """Split ``nrows`` rows into blocks bounded by ``bufsize`` MiB per input.

    Parameters
    ----------
    nrows, ncols : int
        Shape of the images.
    bufsize : float or None
        Buffer size per input in MiB; None means :data:`DEFAULT_BUFSIZE_MIB` (1 MiB, as
        AstroDrizzle). The halo rows count against it.
    halo : int
        Rows needed on each side of a row to compute it (minmed: ``grow``).
    rows : (int, int) or None
        Only the output rows ``[start, stop)`` (a band of the image, e.g. one worker's);
        their halos still reach into the rows around them. None: every row.

    Returns
    -------
    list of RowSection
        Blocks in order; their kept rows tile ``[0, nrows)`` (or ``rows``) exactly once.

    Notes
    -----
    AstroDrizzle reduces ``grow`` when a block is shorter than ``2 * grow + 1`` rows, so its
    result depends on ``combine_bufsize``. Here a block is never shorter than that: the halo is
    always read in full (up to the image edges) and results are independent of ``bufsize``.
    """
    if nrows < 1:
        raise ValueError(f"images must have at least one row, got {nrows}")
    first, last = (0, nrows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= first < last <= nrows:
        raise ValueError(f"rows must be a non-empty range within [0, {nrows}), got {rows}")
    core = rows_per_section(ncols, bufsize, halo)
    sections = []
    for keep_start in range(first, last, core):
        keep_stop = min(last, keep_start + core)
        sections.append(
            RowSection(
                read_start=max(0, keep_start - halo),
                read_stop=min(nrows, keep_stop + halo),
                keep_start=keep_start,
                keep_stop=keep_stop,
            )
        )
    return sections


def _shape_of(obj: Any) -> tuple[int, ...] | None:
    shape = getattr(obj, "shape", None)
    return None if shape is None else tuple(int(n) for n in shape)


def _release_memmap_pages(rows: Any) -> None:
    """Drop the resident pages of the memory map behind ``rows`` (a view of a numpy.memmap).

    Only for read-only and shared maps, whose pages are copies of the file (or of the page cache
    that backs it), so dropping them loses nothing: a later access refaults them from the page
    cache. The whole map is released, not just the rows read: on every fault the kernel also maps
    neighbouring cached pages (fault-around and read-ahead, up to several hundred KiB beyond the
    rows on Linux 6.x), which would otherwise accumulate.
    """
    mapping = getattr(rows, "_mmap", None)
    if not isinstance(mapping, mmap.mmap) or rows.size == 0:
        return
    if getattr(rows, "mode", None) not in _RELEASABLE_MEMMAP_MODES:
        return
    mapping.madvise(mmap.MADV_DONTNEED)


class ImageStack:
    """N two-dimensional images of one shape, readable by blocks of rows.

    Parameters
    ----------
    images : array-like of shape (N, ny, nx), or sequence of N 2-D inputs
        A 3-D array (or memmap, or any object with a 3-D ``shape`` supporting
        ``obj[i, start:stop, :]``), or a sequence whose items are 2-D arrays, memmaps, or objects
        with a 2-D ``shape`` supporting ``obj[start:stop, :]`` (e.g. ``ImageHDU.section``).
        Items without a ``shape`` (nested lists) are converted with ``numpy.asarray``. ``None``
        items are allowed when ``allow_none`` is true and read as ``None``.
    name : str
        What the inputs are, for error messages ("images", "masks", "weights").
    allow_none : bool
        Whether ``None`` items are allowed (an absent mask).

    Raises
    ------
    ValueError
        If the inputs are not two-dimensional or do not all have the same shape.
    """

    def __init__(self, images: Any, *, name: str = "images", allow_none: bool = False) -> None:
        self.name = name
        shape = _shape_of(images)
        if shape is not None and len(shape) == 3:
            self._cube = images
            self._items: list[Any] | None = None
            self.n_images = shape[0]
            self.shape: tuple[int, int] = (shape[1], shape[2])
            return
        if shape is not None and len(shape) != 1:
            raise ValueError(
                f"{name} must be an (N, ny, nx) stack or a sequence of 2-D images, "
                f"got an array of shape {shape}"
            )
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence | np.ndarray):
            raise ValueError(
                f"{name} must be an (N, ny, nx) stack or a sequence of 2-D images, "
                f"got {type(images).__name__}"
            )
        items = []
        shapes = []
        for index, item in enumerate(images):
            if item is None:
                if not allow_none:
                    raise ValueError(f"{name}[{index}] is None")
                items.append(None)
                continue
            if _shape_of(item) is None:
                item = np.asarray(item)
            item_shape = _shape_of(item)
            if len(item_shape) != 2:
                raise ValueError(f"{name}[{index}] must be 2-D, got shape {item_shape}")
            items.append(item)
            shapes.append(item_shape)
        if len(set(shapes)) > 1:
            raise ValueError(f"all {name} must have the same shape, got shapes {shapes}")
        self._cube = None
        self._items = items
        self.n_images = len(items)
        self.shape = shapes[0] if shapes else (0, 0)

    @property
    def in_memory(self) -> bool:
        """Whether every input is a numpy array (a memory map included): rows are then read
        from memory, with no file handle whose position concurrent readers would share."""
        items = [self._cube] if self._items is None else self._items
        return all(item is None or isinstance(item, np.ndarray) for item in items)

    def is_none(self, index: int) -> bool:
        """Whether input ``index`` is absent (``None``)."""
        return self._items is not None and self._items[index] is None

    def read_rows(self, index: int, start: int, stop: int, out: np.ndarray | None = None) -> Any:
        """Rows ``[start, stop)`` of input ``index`` as an in-memory array.

        Parameters
        ----------
        index : int
            Which input.
        start, stop : int
            Row range.
        out : ndarray, optional
            Array of shape ``(stop - start, nx)`` to copy the rows into (with conversion to its
            dtype). Without it a new array of the input's dtype (native byte order) is returned.

        Returns
        -------
        ndarray or None
            The rows (``out`` when given), or None for an absent input.
        """
        if self._items is None:
            rows = self._cube[index, start:stop, :]
        else:
            item = self._items[index]
            if item is None:
                return None
            rows = item[start:stop, :]
        if out is None:
            result = np.array(rows, copy=True)
            if not result.dtype.isnative:
                result = result.astype(result.dtype.newbyteorder("="))
        else:
            np.copyto(out, rows, casting="unsafe")
            result = out
        _release_memmap_pages(rows)
        return result
