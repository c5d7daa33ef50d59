"""Hundreds of inputs: files are never left open (AstroDrizzle failed with 'Too many open
files' on about 300 inputs, drizzlepac #39), and context planes beyond 32 chips work."""

from __future__ import annotations

import numpy as np
import psutil

from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.steps import DrizFinalStep
from fitsfactory import make_hst_flt


def test_four_hundred_inputs_keep_the_open_files_bounded(tmp_path):
    paths = []
    for index in range(400):
        path = tmp_path / f"j{index:04d}01q_flt.fits"
        make_hst_flt(path, shape=(8, 10), chips=1, rootname=f"j{index:04d}01q", seed=index)
        paths.append(str(path))
    process = psutil.Process()
    before = process.num_fds()
    library = ModelLibrary(paths)
    peak = 0
    with library:
        for index, model in enumerate(library):
            peak = max(peak, process.num_fds())
            library.shelve(model, index, modify=False)
    # a handful of descriptors may come and go (logging, numpy), never one per input
    assert peak - before < 20
    final = DrizFinalStep(scheduler="serial").run(library)
    assert process.num_fds() - before < 20
    assert final.meta.resample.ndrizim == 400
    assert final.con.shape[0] == 13  # ceil(400 / 32) context planes
    # every input chip overlaps the same sky: the central pixel has all 400 bits set
    ny, nx = final.data.shape
    centre = final.con[:, ny // 2, nx // 2].view(np.uint32)
    assert sum(bin(int(plane)).count("1") for plane in centre) == 400
