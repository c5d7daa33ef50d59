"""in_memory=False keeps memory bounded: a 60-exposure run stays under the memory model's bound."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from drizzlepipe.memory import estimate_memory

# The child measures its own resident memory: after importing the pipeline (the baseline), then
# every 10 ms during the run, and the kernel's own maximum at the end: VmHWM, the high-water mark
# of the process's own memory (getrusage's ru_maxrss would include the RSS of the pytest
# process the child was forked from, which Linux carries across exec).
CHILD = r"""
import glob, json, sys, threading
import psutil
from drizzlepipe.pipelines import DrizzlePipeline
process = psutil.Process()
baseline = process.memory_info().rss
peak, stop = [baseline], threading.Event()
def sample():
    while not stop.wait(0.01):
        peak[0] = max(peak[0], process.memory_info().rss)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
files = sorted(glob.glob(sys.argv[1] + "/*_flt.fits"))
product = DrizzlePipeline.call(
    files, output_dir=sys.argv[2], in_memory=sys.argv[3] == "memory", scheduler="threads",
    n_workers=2,
)
stop.set()
sampler.join()
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print(json.dumps({"baseline": baseline, "peak": max(peak[0], hwm),
                  "output_shape": list(product.data.shape)}))
"""

#: Modules the run imports after the baseline (dask, scipy's image and interpolation code,
#: gwcs, ...) and allocator slack: measured 60-90 MiB whatever the input size.
IMPORT_ALLOWANCE = 128 << 20

N_EXPOSURES, CHIP_SHAPE = 60, (512, 512)


@pytest.fixture(scope="module")
def sixty_exposures(tmp_path_factory):
    from drizzlepipe.simulator import simulate

    outdir = tmp_path_factory.mktemp("sim60")
    return simulate(
        outdir, exposures=N_EXPOSURES, shape=CHIP_SHAPE, chips=1, seed=3, n_stars=60,
        dither=20.0,
    )  # fmt: skip


def _run(simulation, tmp_path, mode):
    outdir = tmp_path / mode
    outdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(simulation.flt_files[0].parent), str(outdir), mode],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sixty_exposures_on_disk_stay_under_the_memory_models_bound(sixty_exposures, tmp_path):
    measured = _run(sixty_exposures, tmp_path, "disk")
    chip_pixels = CHIP_SHAPE[0] * CHIP_SHAPE[1]
    output_pixels = measured["output_shape"][0] * measured["output_shape"][1]
    shape = {"n_chips": N_EXPOSURES, "n_exposures": N_EXPOSURES, "n_workers": 2}
    on_disk = estimate_memory(chip_pixels, output_pixels, in_memory=False, **shape)
    in_memory = estimate_memory(chip_pixels, output_pixels, in_memory=True, **shape)
    bound = measured["baseline"] + on_disk.total + IMPORT_ALLOWANCE
    used = measured["peak"] - measured["baseline"]
    assert measured["peak"] <= bound, (
        f"peak {measured['peak'] / 2**20:.0f} MiB above the bound {bound / 2**20:.0f} MiB "
        f"(baseline {measured['baseline'] / 2**20:.0f} MiB, model {on_disk})"
    )
    # The bound is tight enough to matter: the chips and singles an in-memory run holds
    # would not fit under it.
    assert in_memory.total - on_disk.total > IMPORT_ALLOWANCE
    assert used < in_memory.chips + in_memory.singles


def test_plan_keeps_chips_in_memory_when_they_fit_and_on_disk_otherwise():
    from drizzlepipe.memory import plan_run

    uvis = (8_400_896, 17_300_000, 8, 4)  # four full-frame UVIS exposures
    roomy = plan_run(*uvis, cores=2, available=23 * 2**30)
    assert (roomy.in_memory, roomy.n_workers) == (True, 2)
    assert "fits in half of the 23.0 GiB available" in roomy.reason
    tight = plan_run(*uvis, cores=2, available=3 * 2**30)
    assert tight.in_memory is False and "exceeds" in tight.reason
    # too little even on disk for two workers' tasks: one worker
    assert plan_run(*uvis, cores=2, available=int(1.6 * 2**30)).n_workers == 1
    # the user's values are kept
    given = plan_run(*uvis, cores=2, available=3 * 2**30, in_memory=True, n_workers=2)
    assert (given.in_memory, given.n_workers) == (True, 2)


def test_available_memory_respects_a_cgroup_limit(monkeypatch):
    import drizzlepipe.memory as memory

    files = {
        "/sys/fs/cgroup/memory.max": "2147483648",
        "/sys/fs/cgroup/memory.current": "536870912",
    }
    monkeypatch.setattr(memory, "_read_number",
                        lambda path: int(files[path]) if path in files else None)  # fmt: skip
    monkeypatch.setattr(memory, "_system_available", lambda: 20 * 2**30)
    assert memory.available_memory() == 2147483648 - 536870912
    monkeypatch.setattr(memory, "_read_number", lambda path: None)  # "max": no limit
    assert memory.available_memory() == 20 * 2**30


def test_the_pipeline_logs_its_memory_plan_and_follows_it(small_simulation, monkeypatch,
                                                        caplog):  # fmt: skip
    import logging

    import drizzlepipe.pipelines.drizzle_pipeline as module
    from drizzlepipe.pipelines import DrizzlePipeline

    files = [str(p) for p in small_simulation.flt_files[:2]]
    monkeypatch.setattr(module, "available_memory", lambda: 10 * 2**20)  # 10 MiB
    with caplog.at_level(logging.INFO, logger="drizzlepipe"):
        DrizzlePipeline.call(files, configure_log=False, steps={"blot_cr": {"skip": True}})
    assert "Memory plan: in_memory=False" in caplog.text and "1 worker(s)" in caplog.text
    assert "Scheduler serial with 1 worker(s)" in caplog.text
