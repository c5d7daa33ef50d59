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


@pytest.fixture(scope="session")
def small_simulation(tmp_path_factory):
    """Four dithered 2-chip exposures of 256 x 256 pixels with truth (simulated once per run)."""
    from drizzlepipe.simulator import simulate

    outdir = tmp_path_factory.mktemp("sim4x2")
    # More and brighter stars than the default field, so flux tests have enough isolated ones.
    return simulate(
        outdir, exposures=4, shape=(256, 256), chips=2, seed=7, n_stars=120,
        star_flux_range=(20.0, 3000.0),
    )  # fmt: skip


def library_with_true_sky(simulation, **kwargs):
    """A ModelLibrary of the simulated chips with ``meta.background.level`` set to the truth."""
    from drizzlepipe.datamodels import ModelLibrary

    library = ModelLibrary([str(p) for p in simulation.flt_files], **kwargs)
    with library:
        for index, model in enumerate(library):
            model.meta.background.level = simulation.sky[model.meta.group_id]
            library.shelve(model, index)
    return library
