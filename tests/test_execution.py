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
    from drizzlepipe.steps._tasks import _InBuffer, _ship, received

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


def _freeze_count(_):
    return gc.get_freeze_count()


class _Node:
    pass


def test_frozen_objects_spares_existing_objects_and_collects_new_cycles():
    import weakref

    assert gc.get_freeze_count() == 0
    with execution.frozen_objects():
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the imported packages' objects
        node = _Node()
        node.cycle = node  # garbage only the collector can free
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None
        made_inside = _Node()
        with execution.frozen_objects():  # nested: nothing more is frozen, nothing thawed
            pass
        assert any(item is made_inside for item in gc.get_objects())  # still collectable
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


def test_forked_workers_are_frozen_and_this_process_is_not(monkeypatch):
    monkeypatch.setattr(execution, "_FORK", True)
    assert gc.get_freeze_count() == 0
    with Executor("processes", 2) as executor:
        counts = executor.map(_freeze_count, range(4))
        assert gc.get_freeze_count() == 0
    # workers' collectors do not touch (and so copy) the pages of inherited objects
    assert all(count > 1000 for count in counts)
    with execution.frozen_objects(), Executor("processes", 2) as executor:
        executor.map(_freeze_count, range(2))
        assert gc.get_freeze_count() > 1000  # a frozen process stays frozen


def _address(array):
    return array.__array_interface__["data"][0]


def _write_sevens(ref):
    ref.get()[...] = 7.0
    return True


def test_shared_buffers_are_reused_zeroed_only_after_every_view_is_gone():
    with Executor("processes", n_workers=2) as executor:
        ref = executor.shared_zeros((40, 50), np.float64)
        assert executor.map(_write_sevens, [ref]) == [True]  # a forked worker writes into it
        first = ref.get()
        assert np.all(first == 7.0)
        address = _address(first)
        view = first[10:20, 5:]
        del ref, first
        gc.collect()
        # a view still lives: the buffer must not be handed out again
        second = executor.shared_zeros((40, 50), np.float64).get()
        assert _address(second) != address and not np.shares_memory(second, view)
        assert np.all(view == 7.0)
        del view
        gc.collect()
        # the same size is now served from the freed buffer, zeroed
        third = executor.shared_zeros((2000,), np.float64).get()
        assert _address(third) == address and np.all(third == 0.0)
        # another size never gets it
        other = executor.shared_zeros((10,), np.float64).get()
        assert _address(other) != address
        third[...] = 1.5
    # an array in use outlives the executor and its pool
    assert float(third.sum()) == 3000.0 and np.all(second == 0.0)


def _mapped_address(buffer):
    return _address(np.frombuffer(buffer, dtype=np.uint8))


def test_reserved_buffers_are_faulted_in_the_background_and_served_zeroed_first(monkeypatch):
    import threading

    released = threading.Event()
    write_zeros = execution._write_zeros

    def slow_write_zeros(buffers):
        released.wait(10)
        write_zeros(buffers)

    monkeypatch.setattr(execution, "_write_zeros", slow_write_zeros)
    with Executor("processes", n_workers=2) as executor:
        executor.reserve_zeros((30, 40), np.float32, 3)
        pool = executor._buffers
        reserved = {_mapped_address(buffer) for buffer in pool._free[30 * 40 * 4]}
        assert len(reserved) == 3
        # a reserved buffer is not handed out while its zeros are still being written
        taken = []
        taker = threading.Thread(
            target=lambda: taken.append(executor.shared_zeros((30, 40), np.float32))
        )
        taker.start()
        taker.join(0.3)
        assert taker.is_alive() and not taken
        released.set()
        taker.join(10)
        refs = taken + [executor.shared_zeros((30, 40), np.float32) for _ in range(3)]
        arrays = [ref.get() for ref in refs]
        # the three reserved buffers first, then a new one
        assert [_address(array) in reserved for array in arrays] == [True, True, True, False]
        assert all(np.all(array == 0.0) for array in arrays)
        assert executor.map(_write_sevens, refs[:2]) == [True, True]
        assert np.all(arrays[0] == 7.0) and np.all(arrays[1] == 7.0)  # not zeroed behind us
        executor.reserve_zeros((5, 5), np.float64, 2)  # never taken: unmapped at close
    assert not pool._free and not pool._threads
    for scheduler in ("serial", "threads"):
        with Executor(scheduler, n_workers=2) as executor:
            executor.reserve_zeros((30, 40), np.float32, 3)  # nothing to reserve: plain arrays
            assert not executor._buffers._free


def test_the_pool_keeps_at_most_four_free_buffers_per_worker_and_size():
    with Executor("processes", n_workers=2) as executor:
        arrays = [executor.shared_zeros((16, 16), np.float32).get() for _ in range(11)]
        del arrays
        gc.collect()
        assert len(executor._buffers._free[16 * 16 * 4]) == 8  # the other three are unmapped


def test_the_pipeline_reserves_the_singles_buffers_before_the_sky_step(
    small_simulation, tmp_path, monkeypatch
):
    calls, served = [], []
    original_reserve, original_take = Executor.reserve_zeros, execution._BufferPool.take

    def recording(self, shape, dtype, count):
        calls.append((tuple(shape), np.dtype(dtype), count))
        return original_reserve(self, shape, dtype, count)

    def take(pool, size):
        served.append(bool(pool._free.get(size)) and id(pool._free[size][-1]) in pool._faulting)
        return original_take(pool, size)

    monkeypatch.setattr(Executor, "reserve_zeros", recording)
    monkeypatch.setattr(execution._BufferPool, "take", take)
    files = [str(p) for p in small_simulation.flt_files]
    final = DrizzlePipeline.call(
        files, output_dir=str(tmp_path), scheduler="processes", n_workers=2,
        steps={"create_median": {"skip": True}, "blot_cr": {"skip": True}},
    )  # fmt: skip
    # one SCI and one WHT buffer per exposure, on the grid the singles use (the final's here)
    assert calls == [(final.data.shape, np.dtype(np.float32), 2 * len(files))]
    # the singles got exactly the reserved buffers; the final's came back from the singles
    assert served[: 2 * len(files)] == [True] * (2 * len(files))
    assert not any(served[2 * len(files) :])


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


def test_chips_split_between_blot_cr_tasks_give_the_serial_product(small_simulation, monkeypatch):
    # with 64-row bands the 256-row chips have 4 bands, so the last two chips of the map go to
    # the two worker processes as two row-range tasks each; serial runs whole chips
    from drizzlepipe.steps import _tasks, blot_cr

    monkeypatch.setattr(_tasks, "BAND_ROWS", 64)
    splits = []

    def counting_split(job, parts):
        tasks = _tasks.split_rows(job, parts)
        splits.append(len(tasks))
        return tasks

    monkeypatch.setattr(blot_cr, "split_rows", counting_split)
    files = [str(p) for p in small_simulation.flt_files]
    serial = DrizzlePipeline.call(files, scheduler="serial")
    assert splits == []
    split = DrizzlePipeline.call(files, scheduler="processes", n_workers=2)
    assert splits.count(2) == 2 and splits.count(1) == 6
    for name in ("data", "wht", "err", "con"):
        np.testing.assert_array_equal(getattr(split, name), getattr(serial, name))


def test_auto_is_processes_with_two_cores_and_serial_with_one(monkeypatch):
    from drizzlepipe.execution import resolve_scheduler

    assert resolve_scheduler("auto", 2) == ("processes" if execution._FORK else "serial")
    assert resolve_scheduler("auto", 1) == "serial"
    assert resolve_scheduler("threads", 2) == "threads"  # only by request
    monkeypatch.setattr(execution, "_FORK", False)
    assert resolve_scheduler("auto", 4) == "serial"
    with Executor(n_workers=1) as executor:
        assert executor.scheduler == "serial"
