"""The execution layer: every scheduler gives bit-identical products."""

from __future__ import annotations

import numpy as np
import pytest

from drizzlepipe.execution import ArrayRef, Executor
from drizzlepipe.pipelines import DrizzlePipeline


def _square(ref):
    return float(np.sum(ref.get() ** 2))


def test_executor_maps_in_order_and_shares_arrays_through_files():
    arrays = [np.arange(10, dtype=np.float32) * k for k in range(5)]
    expected = [float(np.sum(a**2)) for a in arrays]
    for scheduler in ("serial", "threads", "processes"):
        with Executor(scheduler, n_workers=2) as executor:
            refs = [executor.share(a) for a in arrays]
            assert executor.map(_square, refs) == expected
            if scheduler == "processes":
                assert all(ref.array is None and ref.path for ref in refs)
                scratch = executor._scratch
        if scheduler == "processes":
            assert not scratch.exists()  # removed by close()
    assert ArrayRef(array=arrays[1]).get() is arrays[1]


def test_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="scheduler"):
        Executor("gpu")


@pytest.fixture(scope="module")
def by_scheduler(small_simulation):
    files = [str(p) for p in small_simulation.flt_files]
    products = {}
    for scheduler in ("serial", "threads", "processes"):
        products[scheduler] = DrizzlePipeline.call(files, scheduler=scheduler, n_workers=2)
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        products["distributed"] = DrizzlePipeline.call(
            files, scheduler=cluster.scheduler_address, n_workers=2
        )
    return products


@pytest.mark.parametrize("scheduler", ["threads", "processes", "distributed"])
def test_final_products_are_identical_across_schedulers(by_scheduler, scheduler):
    reference, other = by_scheduler["serial"], by_scheduler[scheduler]
    for name in ("data", "wht", "err", "con"):
        np.testing.assert_array_equal(getattr(other, name), getattr(reference, name))
