"""Shared pytest configuration for drizzlepipe's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path of ``../shared/data`` (real HST exposures); skips cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"optional real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng():
    """A seeded random generator so every test is reproducible."""
    import numpy as np

    return np.random.default_rng(20261122)
