"""One execution layer for independent per-chip and per-exposure work.

``scheduler`` is ``serial`` (in the calling thread), ``threads`` (a thread pool),
``processes`` (worker processes of a ``concurrent.futures`` pool, given the tasks directly: a
step's few large tasks need no task graph) or the address of a running ``dask.distributed``
scheduler (``tcp://host:port``). Results never depend on the scheduler:
tasks are pure functions of their arguments and results are combined in a fixed order.

The default is ``auto``: ``processes`` on a machine with two or more cores where workers can be
forked, else ``serial``. The drizzle and blot C kernels of the ``drizzle`` package hold Python's
GIL (two ``blot_image`` calls in two threads take exactly twice as long as one),
so only ``processes`` or a cluster run *those* in parallel; forked workers inherit the chips
without copies. ``threads`` (on request) suits the numpy-only parts.

Data passing: workers receive small arguments (WCS objects passed through
:meth:`Executor.portable`, scalars), :class:`ArrayRef` handles on arrays and :class:`ObjectRef`
handles on other objects (chip models). With ``serial`` and ``threads`` a handle wraps the
object itself. With ``processes`` on Linux the worker pool is forked *after* the objects were
shared (a new pool for every :meth:`Executor.map` that has new shared objects): the workers
inherit them copy-on-write, so nothing is copied, pickled or written. Elsewhere (a distributed
cluster, or platforms without ``fork``) an array is written once to a scratch directory as
``.npy`` and workers memory-map it; the scratch directory must then be on a file system the
workers share. Objects that cannot be inherited are opened by the worker from a file
(:class:`ObjectRef` with an opener).

Progress of a map is drawn by :class:`drizzlepipe.console.Progress` (on a terminal; log records
are held while the line is drawn, so the two never mix).
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .console import Progress, stop_holding

__all__ = ["ArrayRef", "ObjectRef", "Executor", "SCHEDULERS", "default_workers"]

log = logging.getLogger(__name__)

SCHEDULERS = ("auto", "serial", "threads", "processes")

# Worker processes are forked on Linux (see Executor._process_pool) and then inherit objects.
_FORK = sys.platform.startswith("linux")


def resolve_scheduler(scheduler, n_workers=None):
    """The scheduler ``auto`` stands for: ``processes`` when there are two or more workers and
    worker processes can be forked (drizzle's C kernels hold the GIL, so only processes run them
    side by side; forked workers inherit the chips without copies), else ``serial``. Other
    names are returned as given."""
    if scheduler != "auto":
        return scheduler
    workers = int(n_workers) if n_workers else default_workers()
    return "processes" if workers >= 2 and _FORK else "serial"


def default_workers():
    """Number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: Objects shared with forked worker processes, by token: a worker forked after an object was
#: registered finds it here (the parent drops it when its handle is garbage collected).
_INHERITED: dict[str, Any] = {}


def _inherited(token):
    try:
        return _INHERITED[token]
    except KeyError:
        raise RuntimeError(
            "a shared object is missing in this worker: it was started before the object was "
            "shared, or the handle was used after the executor closed"
        ) from None


def _register(handle, value):
    token = uuid.uuid4().hex
    _INHERITED[token] = value
    handle.token = token
    weakref.finalize(handle, _INHERITED.pop, token, None)
    return handle


@dataclass
class ArrayRef:
    """A handle on an array: the array itself (shared memory), an array inherited by forked
    workers (``token``) or a ``.npy`` file to map."""

    array: np.ndarray | None = None
    path: str | None = None
    token: str | None = None
    writable: bool = False

    def get(self):
        """The array (a memory map when it lives in a file: read-only unless ``writable``)."""
        if self.array is not None:
            return self.array
        if self.token is not None:
            return _inherited(self.token)
        return np.load(self.path, mmap_mode="r+" if self.writable else "r")

    def load(self):
        """The array in this process's memory (a file is read, not mapped)."""
        if self.array is None and self.token is None:
            return np.load(self.path)
        return self.get()

    def __getstate__(self):
        # A handle travels without the parent's finalizer; an inherited array stays behind.
        state = dict(self.__dict__)
        if self.token is not None:
            state["array"] = None
        return state


@dataclass
class ObjectRef:
    """A handle on an object for a task: the object itself, an object inherited by forked
    workers (``token``), or a module-level ``opener(*args)`` that builds it in the worker
    (e.g. opens a chip model from its file)."""

    obj: Any = None
    token: str | None = None
    opener: Callable | None = None
    args: tuple = ()

    def get(self):
        """The object."""
        if self.obj is not None:
            return self.obj
        if self.token is not None:
            return _inherited(self.token)
        return self.opener(*self.args)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.token is not None:
            state["obj"] = None
        return state


def _run_pickled(payload):
    """Run a task pickled by :meth:`Executor._map_on_pool`: ``func(item)``."""
    stop_holding()  # forked while a progress line held the log: this worker writes its own
    func, item = pickle.loads(payload)
    return func(item)


@dataclass
class _RowBand:
    """One band of :meth:`Executor.map_row_bands`: the task, the outputs and its rows."""

    task: ObjectRef
    outputs: dict
    start: int
    stop: int


def _fill_row_band(band):
    arrays = {name: ref.get() for name, ref in band.outputs.items()}
    return band.task.get()(band.start, band.stop, arrays)


def _await(futures, progress):
    """Wait for ``futures`` in completion order, counting them on ``progress``; stop at the
    first failure (the caller raises it)."""
    from concurrent.futures import as_completed

    for future in as_completed(futures):
        progress.update()
        if future.exception() is not None:
            break


class Executor:
    """Run tasks with the chosen scheduler.

    Parameters
    ----------
    scheduler : str
        ``auto`` (:func:`resolve_scheduler`), ``serial``, ``threads``, ``processes`` or
        ``tcp://host:port``.
    n_workers : int or None
        Workers for ``threads``/``processes`` (default: the machine's cores).
    scratch_dir : str or None
        Where arrays for other processes are written (default: the system's temporary
        directory); a new subdirectory is made and removed by :meth:`close`.
    progress : bool or None
        Draw a progress bar on standard error for maps of several tasks (None: when standard
        error is a terminal). Not drawn for a distributed cluster (see its dashboard).
    """

    def __init__(self, scheduler="auto", n_workers=None, scratch_dir=None, progress=None):
        scheduler = str(scheduler or "auto")
        if scheduler not in SCHEDULERS and not scheduler.startswith(("tcp://", "tls://")):
            raise ValueError(
                f"scheduler must be one of {', '.join(SCHEDULERS)} or a dask.distributed "
                f"address (tcp://host:port), got {scheduler!r}"
            )
        self.n_workers = int(n_workers) if n_workers else default_workers()
        self.scheduler = resolve_scheduler(scheduler, self.n_workers)
        self._scratch_root = scratch_dir
        self._scratch = None
        self.progress = progress
        self._pool = None
        self._client = None

    @property
    def shares_memory(self):
        """True when tasks run in this process (arrays need not be written out)."""
        return self.scheduler in ("serial", "threads") or (
            self.scheduler == "processes" and self.n_workers == 1
        )

    @property
    def inherits(self):
        """True when workers are forked processes that inherit shared objects."""
        return self.scheduler == "processes" and not self.shares_memory and _FORK

    @property
    def shares_objects(self):
        """True when :meth:`share_object` works (tasks run here or in forked workers)."""
        return self.shares_memory or self.inherits

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def share(self, array):
        """An :class:`ArrayRef` for ``array`` that the workers can read."""
        if self.shares_memory or array is None:
            return ArrayRef(array=array)
        if self.inherits:
            return _register(ArrayRef(array=array), array)
        path = self._scratch_path()
        np.save(path, np.ascontiguousarray(array))
        return ArrayRef(path=str(path))

    def _scratch_path(self):
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="drizzlepipe-", dir=self._scratch_root))
        return self._scratch / f"{uuid.uuid4().hex}.npy"

    def shared_zeros(self, shape, dtype):
        """A zero-filled array that workers write into and this process then reads (an
        :class:`ArrayRef` with ``writable``): results come back without being pickled.

        Shared anonymous memory for forked workers (pages are allocated as workers touch
        them), a plain array for ``serial``/``threads``, a ``.npy`` file in the scratch
        directory otherwise.
        """
        shape = tuple(int(n) for n in shape)
        if self.shares_memory:
            return ArrayRef(array=np.zeros(shape, dtype=dtype), writable=True)
        if self.inherits:
            # MAP_SHARED | MAP_ANONYMOUS: a forked worker's writes are seen here; the memory
            # is unmapped with the last array on it
            buffer = mmap.mmap(-1, max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1))
            array = np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
            return _register(ArrayRef(array=array, writable=True), array)
        path = self._scratch_path()
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
        return ArrayRef(path=str(path), writable=True)

    def share_object(self, obj):
        """An :class:`ObjectRef` for ``obj`` (only when :attr:`shares_objects`)."""
        if self.shares_memory:
            return ObjectRef(obj=obj)
        if not self.inherits:
            raise RuntimeError(f"scheduler {self.scheduler!r} cannot share Python objects")
        return _register(ObjectRef(obj=obj), obj)

    def map_row_bands(self, func, shape, outputs, *, label=None):
        """Fill new arrays band of rows by band of rows: ``func(start, stop, arrays)`` fills
        rows ``[start, stop)`` of every array in ``arrays`` and returns something small.

        The bands go to the workers side by side (one per worker) when ``func`` can reach
        them (tasks in this process or forked workers, see :attr:`shares_objects`), else
        ``func`` fills every row here. ``func`` must give the same values whatever the bands.

        Parameters
        ----------
        func : callable
            ``func(start, stop, arrays) -> result``; ``arrays`` maps the names of
            ``outputs`` to arrays of ``shape``.
        shape : tuple of int
            Shape of every output; bands split its first axis.
        outputs : dict
            ``{name: dtype}`` of the arrays to fill.
        label : str, optional
            Names the work on the progress bar.

        Returns
        -------
        arrays : dict
            ``{name: numpy.ndarray}``, filled.
        results : list
            What ``func`` returned for each band, in row order.
        """
        nrows = int(shape[0])
        parallel = self.scheduler != "serial" and self.n_workers > 1 and self.shares_objects
        n_bands = min(self.n_workers, nrows) if parallel else 1
        if n_bands == 1:
            arrays = {name: np.empty(shape, dtype=dtype) for name, dtype in outputs.items()}
            return arrays, [func(0, nrows, arrays)]
        refs = {name: self.shared_zeros(shape, dtype) for name, dtype in outputs.items()}
        task = self.share_object(func)
        edges = np.linspace(0, nrows, n_bands + 1).round().astype(int)
        bands = [_RowBand(task, refs, int(start), int(stop))
                 for start, stop in zip(edges[:-1], edges[1:])]  # fmt: skip
        results = self.map(_fill_row_band, bands, label=label)
        return {name: ref.get() for name, ref in refs.items()}, results

    @staticmethod
    def portable(obj):
        """``obj`` as a worker process receives it (a pickle round trip), for every scheduler.

        astropy's WCS pickles through a FITS header, which keeps 12-13 significant digits
        (CRVAL changes by ~1e-13 deg): harmless for the science, but tasks given the original
        object in this process and its pickled copy elsewhere would differ in the last bits.
        Giving every scheduler the round-tripped object keeps results bit-identical.
        """
        return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def map(self, func, items, label=None):
        """``[func(item) for item in items]``, run by the scheduler, in input order.

        ``label`` names the work on the progress bar (see ``progress``).
        """
        items = list(items)
        if not items:
            return []
        if self.scheduler.startswith(("tcp://", "tls://")):
            import dask

            tasks = [dask.delayed(func, pure=False)(item) for item in items]
            return list(dask.compute(*tasks, scheduler=self._distributed_client()))
        with self._progress(label, len(items)) as progress:
            if self.scheduler == "processes" and not self.shares_memory:
                return self._map_on_pool(func, items, progress)
            if self.scheduler == "threads" and self.n_workers > 1 and len(items) > 1:
                with ThreadPoolExecutor(min(self.n_workers, len(items))) as pool:
                    futures = [pool.submit(func, item) for item in items]
                    try:
                        _await(futures, progress)
                        return [future.result() for future in futures]
                    finally:
                        for future in futures:
                            future.cancel()  # after a failure, the tasks not started yet
            results = []
            for item in items:
                results.append(func(item))
                progress.update()
            return results

    def _map_on_pool(self, func, items, progress):
        """``map`` on the worker processes, submitted to the pool directly.

        A step's tasks are few, large and independent, so a task graph adds nothing; going
        through dask cost time the first time (importing its scheduler, while the workers
        waited) and batched ready tasks unless told not to. Results come back in input order;
        the first failure (in input order) is raised as the worker raised it, once the tasks
        the workers have started have stopped (the others are cancelled where the pool still
        allows it). A pool that broke (a worker died) is not used again.
        """
        # Pickled here, not by the pool's feeder thread: an argument that cannot be pickled
        # raises in this thread (a feeder-thread failure can leave the pool's shutdown
        # waiting forever on Python 3.11). cloudpickle, as dask did, also takes closures.
        import cloudpickle

        payloads = [
            cloudpickle.dumps((func, item), protocol=pickle.HIGHEST_PROTOCOL) for item in items
        ]
        pool = self._process_pool()
        futures = []
        broken = False
        try:
            for payload in payloads:
                futures.append(pool.submit(_run_pickled, payload))
            _await(futures, progress)
            return [future.result() for future in futures]
        except BrokenProcessPool:
            broken = True
            raise
        finally:
            for future in futures:
                future.cancel()
            if self.inherits or broken:
                # Forked workers see the objects shared before they were forked, and they
                # keep the parent's memory as it was then: none outlives its map.
                self._close_pool()

    def _progress(self, label, n_tasks):
        """The :class:`~drizzlepipe.console.Progress` of a map (drawn for two or more tasks
        when ``progress`` says so, by default on a terminal)."""
        enabled = self.progress if n_tasks >= 2 else False
        return Progress(label, n_tasks, enabled=enabled)

    def _process_pool(self):
        if self._pool is None:
            # fork: workers start with everything already imported and, unlike spawn and
            # forkserver, do not re-run the user's __main__ module (scripts without a
            # ``if __name__ == "__main__"`` guard and notebooks keep working).
            method = "fork" if _FORK else "spawn"
            context = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(max_workers=self.n_workers, mp_context=context)
            log.debug("Started %d worker processes (%s)", self.n_workers, method)
        return self._pool

    def _distributed_client(self):
        if self._client is None:
            from distributed import Client

            self._client = Client(self.scheduler)
            log.info("Connected to dask.distributed scheduler %s", self.scheduler)
        return self._client

    def _close_pool(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self):
        """Stop worker processes, disconnect and remove the scratch directory."""
        self._close_pool()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
