"""Atomic file writing: a temporary file in the target directory, then a rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_target"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_target(path, suffix):
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary file gets the permissions a plain ``open(path, "w")`` would give (``mkstemp``
    makes it 0600), and is removed when the writer fails, so the target is either the old file
    or the complete new one.

    Parameters
    ----------
    path : str or Path
        Final file.
    suffix : str
        Extension of the temporary file (writers choose the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield tmp_name
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
