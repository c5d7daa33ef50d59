"""The execution layer: every scheduler gives bit-identical products."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import sys
import threading
import time

import numpy as np
import pytest

from drizzlepipe import execution
from drizzlepipe.execution import _INHERITED, ArrayRef, Executor, ObjectRef
from drizzlepipe.pipelines import DrizzlePipeline


def _square(ref):
    return float(np.sum(ref.get() ** 2))


def _worker_pid_and_sum(ref):
    return os.getpid(), float(np.sum(ref.get()))


def test_executor_maps_in_order_and_forked_workers_inherit_shared_arrays():
    arrays = [np.arange(10, dtype=np.float32) * k for k in range(5)]
    expected = [float(np.sum(a**2)) for a in arrays]
    for scheduler in ("serial", "threads", "processes"):
        with Executor(scheduler, n_workers=2) as executor:
            refs = [executor.share(a) for a in arrays]
            assert executor.map(_square, refs) == expected
            if scheduler == "processes":
                # inherited by the forked workers: nothing written, only a token pickled
                assert all(ref.token and ref.path is None for ref in refs)
                assert executor._scratch is None
                shipped = pickle.loads(pickle.dumps(refs[1]))
                assert shipped.array is None and shipped.token == refs[1].token
                # a worker forked for a later map sees an array shared after the first map
                late = executor.share(np.full(7, 3.0))
                results = executor.map(_worker_pid_and_sum, [late, late])
                assert [total for _, total in results] == [21.0, 21.0]
                assert all(pid != os.getpid() for pid, _ in results)
    assert ArrayRef(array=arrays[1]).get() is arrays[1]


class _RowFiller:
    """Fills rows with their index and the process id; returns the band it was given."""

    def __init__(self, source):
        self.source = source

    def __call__(self, start, stop, arrays):
        arrays["rows"][start:stop] = self.source[start:stop] * 2
        arrays["pid"][start:stop] = os.getpid()
        return start, stop


@pytest.mark.parametrize("scheduler", ["serial", "threads", "processes", "distributed"])
def test_row_bands_fill_every_row_once_side_by_side_where_the_task_can_be_shared(
    scheduler, monkeypatch
):
    source = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    if scheduler == "distributed":
        # a cluster gets no inherited task: the rows are filled here, in one band
        monkeypatch.setattr(Executor, "shares_objects", property(lambda self: False))
        scheduler = "processes"
    with Executor(scheduler, n_workers=2) as executor:
        arrays, bands = executor.map_row_bands(
            _RowFiller(source), (7, 3), {"rows": np.float32, "pid": np.int64}
        )
        parallel = executor.scheduler != "serial" and executor.shares_objects
    np.testing.assert_array_equal(arrays["rows"], source * 2)
    assert bands == ([(0, 4), (4, 7)] if parallel else [(0, 7)])
    in_workers = set(np.unique(arrays["pid"])) != {os.getpid()}
    assert in_workers == (scheduler == "processes" and parallel)


def test_dropped_handles_release_inherited_arrays():
    with Executor("processes", n_workers=2) as executor:
        ref = executor.share(np.ones(5))
        token = ref.token
        assert token in _INHERITED
        del ref
        gc.collect()
        assert token not in _INHERITED


def _identity_of(ref):
    return ref.get()["name"]


def test_object_refs_reach_workers_inherited_or_opened():
    payload = {"name": "chip"}
    for scheduler in ("serial", "threads", "processes"):
        with Executor(scheduler, n_workers=2) as executor:
            assert executor.shares_objects
            ref = executor.share_object(payload)
            assert executor.map(_identity_of, [ref, ref]) == ["chip", "chip"]
    opened = ObjectRef(opener=dict, args=({"name": "opened"},))
    with Executor("processes", n_workers=2) as executor:
        assert executor.map(_identity_of, [opened]) == ["opened"]


def test_arrays_go_through_scratch_files_where_workers_cannot_inherit(monkeypatch):
    monkeypatch.setattr(execution, "_FORK", False)
    with Executor("processes", n_workers=2) as executor:
        assert not executor.inherits and not executor.shares_objects
        ref = executor.share(np.arange(4.0))
        assert ref.path and ref.token is None
        np.testing.assert_array_equal(ref.get(), np.arange(4.0))
        with pytest.raises(RuntimeError, match="cannot share"):
            executor.share_object({})
        scratch = executor._scratch
    assert not scratch.exists()  # removed by close()


def test_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="scheduler"):
        Executor("gpu")


@pytest.fixture(scope="module")
def by_scheduler(small_simulation):
    files = [str(p) for p in small_simulation.flt_files]
    products = {}
    for scheduler in ("serial", "threads", "processes"):
        products[scheduler] = DrizzlePipeline.call(files, scheduler=scheduler, n_workers=2)
    # the defaults: scheduler and in_memory chosen by the pipeline (auto, memory model), and
    # the other memory mode (chips in temporary files)
    products["default"] = DrizzlePipeline.call(files)
    products["on_disk"] = DrizzlePipeline.call(files, in_memory=False)
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        products["distributed"] = DrizzlePipeline.call(
            files, scheduler=cluster.scheduler_address, n_workers=2
        )
    return products


@pytest.mark.parametrize("scheduler", ["threads", "processes", "distributed", "default", "on_disk"])
def test_final_products_are_identical_across_schedulers(by_scheduler, scheduler):
    reference, other = by_scheduler["serial"], by_scheduler[scheduler]
    for name in ("data", "wht", "err", "con"):
        np.testing.assert_array_equal(getattr(other, name), getattr(reference, name))


def _slow_square(value):
    time.sleep(0.3)
    return value * value


@pytest.mark.parametrize("scheduler", ["serial", "threads", "processes"])
def test_progress_bar_on_request_and_not_by_default_off_a_terminal(scheduler, capsys):
    with Executor(scheduler, n_workers=2, progress=True) as executor:
        assert executor.map(_slow_square, [1, 2, 3, 4], label="Squaring") == [1, 4, 9, 16]
    drawn = capsys.readouterr().err
    assert "] 100% Squaring 4/4 |" in drawn and drawn.endswith("\n")
    with Executor(scheduler, n_workers=2) as executor:  # stderr is not a terminal here
        assert executor.map(_slow_square, [1, 2, 3]) == [1, 4, 9]
    quiet = capsys.readouterr().err
    assert "Squaring" not in quiet and "%" not in quiet


def _square_and_log(value):
    logging.getLogger("drizzlepipe.test_progress").warning("squared %d", value)
    return value * value


@pytest.mark.parametrize("scheduler", ["serial", "threads"])
def test_log_records_never_land_inside_a_progress_line(scheduler, capsys):
    logger = logging.getLogger("drizzlepipe.test_progress")
    handler = logging.StreamHandler(sys.stderr)  # the stream the progress line is drawn on
    logger.addHandler(handler)
    try:
        with Executor(scheduler, n_workers=2, progress=True) as executor:
            executor.map(_square_and_log, [1, 2, 3], label="Squaring")
            logger.warning("after the map")
    finally:
        logger.removeHandler(handler)
    lines = capsys.readouterr().err.split("\n")
    # the progress line is whole, then the records held while it was drawn, in order
    assert lines[0].startswith("\r[") and lines[0].endswith("|" + lines[0].split("|")[-1])
    assert "squared" not in lines[0]
    assert sorted(lines[1:4]) == ["squared 1", "squared 2", "squared 3"]
    assert lines[4] == "after the map"
    assert not handler.filters  # nothing held any more


def test_without_a_terminal_a_long_map_logs_its_progress_by_quarters(caplog):
    with caplog.at_level(logging.INFO, logger="drizzlepipe.console"):
        with Executor("serial") as executor:
            executor.map(abs, range(40), label="Counting")
    quarters = [r.getMessage() for r in caplog.records if r.name == "drizzlepipe.console"]
    assert quarters == ["Counting: 10 of 40 done", "Counting: 20 of 40 done",
                        "Counting: 30 of 40 done"]  # fmt: skip


@pytest.mark.parametrize("fork", [True, False])
def test_results_in_shared_buffers_come_back_as_handles_not_arrays(monkeypatch, fork):
    from drizzlepipe.algorithms.resample import PartialDrizzle
    from drizzlepipe.chipwork import _InBuffer, _ship, received

    monkeypatch.setattr(execution, "_FORK", fork)
    with Executor("processes", n_workers=2) as executor:
        refs = {name: executor.shared_zeros((3, 4), np.float32) for name in ("img", "wht")}
        # what a worker does: map each buffer once, accumulate into it, ship the result
        out = {name: (ref, ref.get()) for name, ref in refs.items()}
        out["img"][1][...] = 5.0
        out["wht"][1][...] = 2.0
        partial = PartialDrizzle(
            img=out["img"][1], wht=out["wht"][1], var=None, context=np.ones((1, 3, 4), np.int32),
            context_ids=(0,),
        )  # fmt: skip
        shipped = pickle.loads(pickle.dumps(_ship(partial, out)))
        assert isinstance(shipped.img, _InBuffer) and isinstance(shipped.wht, _InBuffer)
        assert isinstance(shipped.context, np.ndarray)  # not in a buffer: travels as it is
        back = received(shipped)
        np.testing.assert_array_equal(back.img, np.full((3, 4), 5.0, np.float32))
        np.testing.assert_array_equal(back.wht, np.full((3, 4), 2.0, np.float32))


def test_an_input_error_in_a_worker_process_reaches_the_caller_as_itself(small_simulation):
    from conftest import library_with_true_sky
    from drizzlepipe.exceptions import DrizzlepipeInputError
    from drizzlepipe.steps import DrizFinalStep

    library = library_with_true_sky(small_simulation)
    with library:
        model = library.borrow(3)
        model.meta.has_err = False  # as a file without ERR arrays
        library.shelve(model, 3)
    step = DrizFinalStep(weight_type="err", scheduler="processes", n_workers=2)
    with pytest.raises(DrizzlepipeInputError, match=r"\[SCI,2\]: weight_type='err'") as caught:
        step.run(library)
    assert caught.value.file.endswith("_flt.fits[SCI,2]")
    assert "no ERR array" in caught.value.problem


def test_input_errors_survive_pickling_with_their_parts():
    from drizzlepipe.algorithms.resample import NoOverlapError
    from drizzlepipe.exceptions import DrizzlepipeInputError

    for error in (
        DrizzlepipeInputError("a_flt.fits", "no exposure time", "SCI,2"),
        DrizzlepipeInputError(None, "no inputs given"),
        NoOverlapError("a_flt.fits[SCI,1]", "no pixel of the chip falls on the output grid"),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert (again.file, again.problem, again.extension) == (
            error.file, error.problem, error.extension,
        )  # fmt: skip


def _write_sevens(ref):
    ref.get()[...] = 7.0
    return True


def test_a_shared_buffer_written_by_a_forked_worker_is_read_here_and_outlives_the_executor():
    with Executor("processes", n_workers=2) as executor:
        refs = [executor.shared_zeros((40, 50), np.float64) for _ in range(2)]
        arrays = [ref.get() for ref in refs]
        assert all(np.all(array == 0.0) for array in arrays)
        assert not np.shares_memory(arrays[0], arrays[1])
        assert executor.map(_write_sevens, refs[:1]) == [True]
    # the worker's writes are seen here, the other buffer is untouched, and an array in use
    # keeps its memory after the executor closed
    assert np.all(arrays[0] == 7.0) and np.all(arrays[1] == 0.0)
    arrays[1][...] = 1.5
    assert float(arrays[1].sum()) == 3000.0


def _identity(value):
    return value


def test_a_task_that_cannot_be_pickled_raises_in_the_caller_and_the_pool_goes_on():
    # pickled in the calling thread: a failure in the pool's feeder thread could leave the
    # pool's shutdown waiting forever
    lock = threading.Lock()
    with Executor("processes", n_workers=2) as executor:
        with pytest.raises(TypeError, match="pickle"):
            executor.map(_identity, [lock, lock, lock])
        assert executor.map(_identity, [1, 2, 3]) == [1, 2, 3]
        assert executor.map(lambda value: 2 * value, [1, 2]) == [2, 4]  # closures travel


def _fail_first_else_sleep(args):
    index, folder = args
    if index == 0:
        raise ValueError("task 0 fails")
    time.sleep(0.5)
    (folder / f"{index}.done").touch()
    return index


@pytest.mark.parametrize("progress", [False, True])
def test_a_failing_task_stops_the_process_map_without_running_the_rest(tmp_path, progress):
    # the first failure is raised once the running tasks end; the queued ones are dropped
    # (also while the progress bar waits for completions)
    with Executor("processes", n_workers=2, progress=progress) as executor:
        with pytest.raises(ValueError, match="task 0 fails"):
            executor.map(_fail_first_else_sleep, [(k, tmp_path) for k in range(12)])
        assert len(list(tmp_path.glob("*.done"))) < 11
        assert executor.map(_identity, [1, 2]) == [1, 2]  # the executor goes on


def test_auto_is_processes_with_two_cores_and_serial_with_one(monkeypatch):
    from drizzlepipe.execution import resolve_scheduler

    assert resolve_scheduler("auto", 2) == ("processes" if execution._FORK else "serial")
    assert resolve_scheduler("auto", 1) == "serial"
    assert resolve_scheduler("threads", 2) == "threads"  # only by request
    monkeypatch.setattr(execution, "_FORK", False)
    assert resolve_scheduler("auto", 4) == "serial"
    with Executor(n_workers=1) as executor:
        assert executor.scheduler == "serial"
