"""NumPy's AVX-512 sort on AMD Zen 4: detect it, advise, and tune child processes.

NumPy (2.x, through x86-simd-sort) sorts and partitions 32- and 64-bit arrays with AVX-512 code
wherever the CPU has AVX-512. On AMD Zen 4 (family 25 with AVX-512) that code's compress-store
instruction is microcoded and the "fast" sort is several times slower than NumPy's AVX2 sort
(numpy/numpy pull request 32690 and x86-simd-sort issue 6 discuss it; timings in
docs/developer/performance.md, *Timings behind the code*). The sky and static-mask statistics
sort every chip once (exact clipped statistics), so such a machine runs the whole pipeline
markedly slower.

NumPy chooses its code paths when it is imported, so a running process cannot switch; the
remedy is the environment variable ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``
set before Python starts. This module tells the user (:func:`slow_sort_advice`, logged once by
the pipeline) and sets it for the child processes drizzlepipe itself starts
(:func:`tuned_environment`: ``make demo``, the benchmarks). Nothing is changed where the user set
``NPY_DISABLE_CPU_FEATURES`` or ``NPY_ENABLE_CPU_FEATURES`` already.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = [
    "AVX2_SORT_SETTING",
    "advise_once",
    "avx2_sort_setting",
    "is_zen4",
    "numpy_sorts_with_avx512",
    "slow_sort_advice",
    "tuned_environment",
]

#: Value of ``NPY_DISABLE_CPU_FEATURES`` that keeps NumPy >= 2.4 on its AVX2 code paths (the
#: names of NumPy's AVX-512 dispatch targets; :func:`avx2_sort_setting` gives those of the
#: installed NumPy, e.g. ``AVX512_SKX`` for 2.0-2.3).
AVX2_SORT_SETTING = "X86_V4 AVX512_ICL AVX512_SPR"
_USER_SETTINGS = ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES")


def _cpu_fields(cpuinfo: str) -> dict:
    """The first processor's ``key: value`` fields of a ``/proc/cpuinfo`` text."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def is_zen4(cpuinfo: str | None = None) -> bool:
    """True on an AMD CPU of family 25 (Zen 3/Zen 4) with AVX-512, i.e. Zen 4.

    Parameters
    ----------
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo`` (read when None; False where it does not exist).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    fields = _cpu_fields(cpuinfo)
    return (
        fields.get("vendor_id") == "AuthenticAMD"
        and fields.get("cpu family") == "25"
        and "avx512f" in fields.get("flags", "").split()
    )


def avx2_sort_setting() -> str:
    """``NPY_DISABLE_CPU_FEATURES`` value for the installed NumPy: its AVX-512 dispatch targets
    (``X86_V4`` and the ``AVX512_*`` groups), or :data:`AVX2_SORT_SETTING` when NumPy does not
    list them. NumPy ignores (with an ImportWarning) names it does not dispatch to, and
    refuses to disable its baseline, so only dispatch targets are named."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # pragma: no cover - NumPy < 2 or a changed private module
        return AVX2_SORT_SETTING
    names = [name for name in __cpu_dispatch__ if name == "X86_V4" or name.startswith("AVX512")]
    return " ".join(names) or AVX2_SORT_SETTING


def numpy_sorts_with_avx512() -> bool:
    """True when the imported NumPy dispatches its sorts to AVX-512 code (X86_V4 enabled)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - NumPy < 2 or a changed private module
        return False
    return bool(__cpu_features__.get("X86_V4") or __cpu_features__.get("AVX512_SKX"))


@functools.lru_cache(maxsize=1)
def slow_sort_advice() -> str | None:
    """A message for the log when NumPy sorts with AVX-512 on a Zen 4 CPU, else None."""
    if not (is_zen4() and numpy_sorts_with_avx512()):
        return None
    return (
        "NumPy sorts with AVX-512 code, which is several times slower than its AVX2 code on this "
        "AMD Zen 4 CPU (sky and static-mask statistics take ~2x longer). Start Python with "
        f'NPY_DISABLE_CPU_FEATURES="{avx2_sort_setting()}" to use the faster code '
        "(see drizzlepipe.numpy_tuning)"
    )


_advised = False


def advise_once(logger) -> None:
    """Log :func:`slow_sort_advice` as a warning on ``logger``, once per process."""
    global _advised
    if _advised:
        return
    _advised = True
    advice = slow_sort_advice()
    if advice:
        logger.warning(advice)


def tuned_environment(environ=None, cpuinfo: str | None = None) -> dict:
    """A copy of ``environ`` (default ``os.environ``) for a child Python process of this
    interpreter: with ``NPY_DISABLE_CPU_FEATURES`` set to :func:`avx2_sort_setting` on a Zen 4
    CPU unless the user chose NumPy's CPU features already; unchanged elsewhere."""
    environment = dict(os.environ if environ is None else environ)
    if is_zen4(cpuinfo) and not any(environment.get(name) for name in _USER_SETTINGS):
        environment["NPY_DISABLE_CPU_FEATURES"] = avx2_sort_setting()
    return environment
