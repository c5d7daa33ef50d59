"""NumPy's AVX-512 sort on AMD Zen 4: detection, advice and the tuned child environment."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from drizzlepipe import numpy_tuning
from drizzlepipe.numpy_tuning import avx2_sort_setting, is_zen4, tuned_environment


def _cpuinfo(vendor, family, flags):
    processor = f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
    processor += f"model\t\t: 17\nflags\t\t: fpu sse4_2 avx2 {flags}\n"
    return "\n".join(processor.format(n=n) for n in range(2))


ZEN4 = _cpuinfo("AuthenticAMD", 25, "avx512f avx512bw avx512vl")
ZEN3 = _cpuinfo("AuthenticAMD", 25, "")
ZEN5 = _cpuinfo("AuthenticAMD", 26, "avx512f avx512bw avx512vl")
SAPPHIRE_RAPIDS = _cpuinfo("GenuineIntel", 6, "avx512f avx512bw avx512vl avx512_fp16")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(ZEN4, True), (ZEN3, False), (ZEN5, False), (SAPPHIRE_RAPIDS, False), ("", False)],
)
def test_only_amd_family_25_with_avx512_counts_as_zen4(cpuinfo, expected):
    assert is_zen4(cpuinfo) is expected


def test_tuned_environment_sets_the_avx2_setting_only_on_zen4_and_never_over_the_user():
    base = {"PATH": "/usr/bin"}
    setting = avx2_sort_setting()
    assert tuned_environment(base, ZEN4) == {**base, "NPY_DISABLE_CPU_FEATURES": setting}
    assert tuned_environment(base, SAPPHIRE_RAPIDS) == base
    mine = {**base, "NPY_DISABLE_CPU_FEATURES": "AVX512_SPR"}
    assert tuned_environment(mine, ZEN4) == mine
    enabled = {**base, "NPY_ENABLE_CPU_FEATURES": "X86_V2 X86_V3 X86_V4"}
    assert tuned_environment(enabled, ZEN4) == enabled
    assert base == {"PATH": "/usr/bin"}  # the caller's mapping is not changed


_CHILD = """
import json, sys
import numpy as np
from drizzlepipe.numpy_tuning import numpy_sorts_with_avx512
values = np.random.default_rng(3).random(100_000).astype(np.float32)
ordered = bool(np.all(np.diff(np.sort(values)) >= 0))
median = float(np.median(values))
report = {"avx512": numpy_sorts_with_avx512(), "sorted": ordered, "median": median}
json.dump(report, sys.stdout)
"""


def _child_report(environment):
    run = subprocess.run(
        [sys.executable, "-c", _CHILD], env=environment, capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


def test_a_child_started_with_the_setting_leaves_the_avx512_sort_and_sorts_the_same():
    tuned = _child_report(tuned_environment(os.environ, ZEN4))
    plain = _child_report({k: v for k, v in os.environ.items() if not k.startswith("NPY_")})
    assert tuned["avx512"] is False
    if is_zen4():  # NumPy uses AVX-512 there by default: the setting is what switched it off
        assert plain["avx512"] is True
    assert tuned["sorted"] and plain["sorted"]
    assert tuned["median"] == plain["median"]  # exact either way: only the speed changes


def test_advice_is_logged_once_and_only_on_a_slow_sort(monkeypatch, caplog):
    numpy_tuning.slow_sort_advice.cache_clear()
    monkeypatch.setattr(numpy_tuning, "is_zen4", lambda cpuinfo=None: True)
    monkeypatch.setattr(numpy_tuning, "numpy_sorts_with_avx512", lambda: True)
    monkeypatch.setattr(numpy_tuning, "_advised", False)
    logger = logging.getLogger("drizzlepipe.test_tuning")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        numpy_tuning.advise_once(logger)
        numpy_tuning.advise_once(logger)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and avx2_sort_setting() in messages[0]
    numpy_tuning.slow_sort_advice.cache_clear()
    monkeypatch.setattr(numpy_tuning, "numpy_sorts_with_avx512", lambda: False)
    assert numpy_tuning.slow_sort_advice() is None
    numpy_tuning.slow_sort_advice.cache_clear()


def test_the_setting_names_only_avx512_dispatch_targets_of_the_installed_numpy():
    from numpy._core._multiarray_umath import __cpu_dispatch__

    names = avx2_sort_setting().split()
    assert names and all(name == "X86_V4" or name.startswith("AVX512") for name in names)
    assert set(names) <= set(__cpu_dispatch__)  # NumPy ignores names it does not dispatch to
