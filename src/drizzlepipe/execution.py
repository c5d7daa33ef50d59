"""One execution layer for independent per-chip and per-exposure work, built on dask.

``scheduler`` is ``serial`` (in the calling thread), ``threads`` (dask's thread pool),
``processes`` (a pool of worker processes reused across steps) or the address of a running
``dask.distributed`` scheduler (``tcp://host:port``). Results never depend on the scheduler:
tasks are pure functions of their arguments and results are combined in a fixed order.

The default is ``threads``: no data is copied, and numpy releases the GIL. But the drizzle and
blot C kernels of the ``drizzle`` package hold Python's GIL (measured here: two ``blot_image``
calls in two threads take exactly twice as long as one), so only ``processes`` or a cluster
run *those* in parallel, at the price of writing the chips' arrays to scratch files.

Data passing: workers receive small arguments (WCS objects passed through
:meth:`Executor.portable`, scalars) and :class:`ArrayRef` handles. With ``serial`` and
``threads`` a handle wraps the array itself; otherwise the array is written once to a scratch
directory as ``.npy`` and workers memory-map it, so no large array travels through pickling and
the parent never holds a copy per worker. (For a distributed cluster the scratch directory must
be on a file system the workers share.)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ArrayRef", "Executor", "SCHEDULERS", "default_workers"]

log = logging.getLogger(__name__)

SCHEDULERS = ("serial", "threads", "processes")


def default_workers():
    """Number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class ArrayRef:
    """A handle on an array: the array itself (shared memory) or a ``.npy`` file to map."""

    array: np.ndarray | None = None
    path: str | None = None

    def get(self):
        """The array (read-only memory map when it lives in a file)."""
        if self.array is not None:
            return self.array
        return np.load(self.path, mmap_mode="r")


class Executor:
    """Run tasks with the chosen scheduler.

    Parameters
    ----------
    scheduler : str
        ``serial``, ``threads``, ``processes`` or ``tcp://host:port``.
    n_workers : int or None
        Workers for ``threads``/``processes`` (default: the machine's cores).
    scratch_dir : str or None
        Where arrays for other processes are written (default: the system's temporary
        directory); a new subdirectory is made and removed by :meth:`close`.
    """

    def __init__(self, scheduler="threads", n_workers=None, scratch_dir=None):
        scheduler = str(scheduler or "threads")
        if scheduler not in SCHEDULERS and not scheduler.startswith(("tcp://", "tls://")):
            raise ValueError(
                f"scheduler must be one of {', '.join(SCHEDULERS)} or a dask.distributed "
                f"address (tcp://host:port), got {scheduler!r}"
            )
        self.scheduler = scheduler
        self.n_workers = int(n_workers) if n_workers else default_workers()
        self._scratch_root = scratch_dir
        self._scratch = None
        self._pool = None
        self._client = None

    @property
    def shares_memory(self):
        """True when tasks run in this process (arrays need not be written out)."""
        return self.scheduler in ("serial", "threads") or (
            self.scheduler == "processes" and self.n_workers == 1
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def share(self, array):
        """An :class:`ArrayRef` for ``array`` that the workers can read."""
        if self.shares_memory or array is None:
            return ArrayRef(array=array)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="drizzlepipe-", dir=self._scratch_root))
        path = self._scratch / f"{uuid.uuid4().hex}.npy"
        np.save(path, np.ascontiguousarray(array))
        return ArrayRef(path=str(path))

    @staticmethod
    def portable(obj):
        """``obj`` as a worker process receives it (a pickle round trip), for every scheduler.

        astropy's WCS pickles through a FITS header, which keeps 12-13 significant digits
        (CRVAL changes by ~1e-13 deg): harmless for the science, but tasks given the original
        object in this process and its pickled copy elsewhere would differ in the last bits.
        Giving every scheduler the round-tripped object keeps results bit-identical.
        """
        return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def map(self, func, items):
        """``[func(item) for item in items]``, run by the scheduler, in input order."""
        items = list(items)
        if not items:
            return []
        if self.shares_memory and self.scheduler != "threads":
            return [func(item) for item in items]
        import dask

        tasks = [dask.delayed(func, pure=False)(item) for item in items]
        if self.scheduler == "threads":
            return list(dask.compute(*tasks, scheduler="threads", num_workers=self.n_workers))
        if self.scheduler == "processes":
            return list(dask.compute(*tasks, scheduler="processes", pool=self._process_pool()))
        return list(dask.compute(*tasks, scheduler=self._distributed_client()))

    def _process_pool(self):
        if self._pool is None:
            # fork: workers start with everything already imported and, unlike spawn and
            # forkserver, do not re-run the user's __main__ module (scripts without a
            # ``if __name__ == "__main__"`` guard and notebooks keep working).
            method = "fork" if sys.platform.startswith("linux") else "spawn"
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

    def close(self):
        """Stop worker processes, disconnect, and remove the scratch directory."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
