"""DrizSeparateStep: drizzle every exposure (all its chips) onto the common grid, one ``single``
product per exposure, as AstroDrizzle's driz_separate; the singles feed CreateMedian."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..algorithms.resample import ResampleInputError
from ..datamodels import ResampledModel
from ..datamodels.library import ChipInfo
from ._drizzle_common import (
    DRIZZLE_KERNELS,
    GRID_SPEC,
    ChipSources,
    OutputGridMaker,
    apply_carried,
    carried_metadata,
    chip_iscale,
    chip_label,
    drizzled_bunit,
    electrons_factor,
    exposure_product_root,
    input_member,
    mask_description,
    parse_fillval,
)
from ._tasks import DrizzleJob, drizzle_chips, output_buffers, received
from .base import DrizStep

__all__ = ["DrizSeparateStep"]

log = logging.getLogger(__name__)


class DrizSeparateStep(DrizStep):
    """Drizzle each exposure separately onto the common output grid (``_single`` products).

    Weights are the exposure time on good pixels (DQ with ``good_bits`` and the static mask);
    the sky is subtracted on the fly and data are converted to a rate per output pixel.
    Returns one single per exposure, in library group order: a :class:`ResampledModel`, or the
    path of its file when it was saved (``save_results``) or the library lives on disk.
    """

    class_alias = "driz_separate"

    spec = (
        f"""
    kernel = {DRIZZLE_KERNELS}, default='turbo')  # Drizzle kernel
    pixfrac = float(default=1.0, min=0.001)  # Drop size as a fraction of the input pixel
    fillval = string(default=None)  # Value where no input contributes: None/INDEF (0), NaN, number
    good_bits = string(default='0')  # DQ bits treated as good ('4+8', '~4', None = ignore DQ)
    """
        + GRID_SPEC
    )

    def process(self, input_data):
        """Drizzle every exposure onto the common grid.

        Parameters
        ----------
        input_data : ModelLibrary, str, list
            The chips, with their sky in ``meta.background`` (subtracted on the fly).

        Returns
        -------
        list of ResampledModel or str
            One single per exposure that reached the grid, in library order: the model, or
            the path of its file when it was saved (``save_results``, or an on-disk library).
            Data are a rate per output pixel (e-/s; MJy/sr for surface brightness), weights
            the exposure time on good pixels.
        """
        library = self.prepare_library(input_data)
        grid = OutputGridMaker.from_step(self).make(library)
        log.info(
            "Output grid %d x %d at %.5f arcsec/pixel, kernel %s, pixfrac %g",
            grid.shape[1], grid.shape[0], grid.pixel_scale, self.kernel, self.pixfrac,
        )  # fmt: skip
        groups = list(library.group_indices.values())
        # On disk (in_memory=False) the singles go to files that CreateMedian reads by row
        # sections, so memory holds only the exposures being drizzled, not all the singles.
        # Inside the pipeline they go to its scratch directory; a step run alone saves them.
        save, spill = self._saves(library)
        singles = []
        with self.execution() as executor, library:
            # Singles saved to files (on disk, or save_results): exposures in batches of one
            # per worker, at most that many singles in memory at a time. Otherwise all singles
            # stay in memory anyway (their arrays are the workers' output buffers), so one map
            # over all: one pool, no wait between batches.
            kept = not (library.on_disk or save)
            batch = len(groups) if kept else max(1, executor.n_workers)
            for start in range(0, len(groups), batch):
                jobs, metadata = [], []
                with ChipSources(library, executor) as sources:
                    for indices in groups[start : start + batch]:
                        job, meta = self._exposure_job(library, sources, indices, grid, executor)
                        job.out = output_buffers(executor, grid.shape)
                        jobs.append(job)
                        metadata.append(meta)
                    results = executor.map(drizzle_chips, jobs, label="Single drizzle")
                    # while the jobs hold the buffers' handles
                    for result in results:
                        result.product = received(result.product)
                del jobs
                for result, meta in zip(results, metadata):
                    single = self._finish(result, meta, grid, len(singles) + 1, len(groups))
                    if single is None:
                        continue
                    root = exposure_product_root(single.meta.group_id)
                    if save:
                        single = single.save(self.product_path(root, "single"))
                    elif spill is not None:
                        single = single.save(str(spill / f"{root}_single.fits"))
                    singles.append(single)
        if not singles:
            raise ResampleInputError(None, "no exposure overlaps the output grid")
        log.info("%d single images of %d exposures", len(singles), len(groups))
        return singles

    def _saves(self, library):
        """(save, spill): singles are saved as products, or spilled to the pipeline's scratch
        directory (an on-disk run that does not save them)."""
        scratch = getattr(self.parent, "scratch_dir", None) if self.parent is not None else None
        spill = Path(scratch) if library.on_disk and scratch and not self.save_results else None
        return self.save_results or (library.on_disk and spill is None), spill

    def _finish(self, result, meta, grid, number, total):
        """The single of one drizzled exposure, or None (with a warning) when it has no data."""
        for reason in result.skipped:
            log.warning("%s: skipped", reason)
        if result.product is None:
            why = "none of its chips could be drizzled" if result.skipped else "no overlap"
            log.warning("Exposure %s: %s, no single", meta[0], why)
            return None
        single = self._single(result, meta, grid)
        log.debug("Single %d/%d: %s", number, total, single.meta.filename)
        return single

    def _exposure_job(self, library, sources, indices, grid, executor):
        """The drizzle job of one exposure and the metadata its single needs."""
        chips, readnoise2, skies, first, members = [], [], [], None, []
        mask = mask_description(self.good_bits)
        for index in indices:
            model = library.borrow(index)
            try:
                members.append((chip_label(model), input_member(ChipInfo.of(model), mask)))
                chips.append(
                    sources.chip(index, grid.pixel_scale, model=model, good_bits=self.good_bits)
                )
                factor = electrons_factor(model)
                readnoise2.append(float(model.meta.detector.readnoise or 0.0) ** 2)
                # electrons per output pixel: an input pixel's sky times the area ratio
                sky = float(model.meta.background.level or 0.0) * factor
                sky *= chip_iscale(model, grid.pixel_scale)
                if model.meta.units == "countrate":
                    sky *= float(model.meta.exposure.exptime)
                skies.append(sky)
                first = first or _single_metadata(model, grid.pixel_scale)
                first["detectors"].add(model.meta.instrument.detector)
            finally:
                library.shelve(model, index, modify=False)
        job = DrizzleJob(
            chips=chips,
            grid_wcs=executor.portable(grid.wcs),
            grid_shape=grid.shape,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            fillval=parse_fillval(self.fillval),
            stepsize=self.stepsize,
        )
        # minmed's noise model needs these per exposure: rms read noise over the chips
        # (electrons, as AstroDrizzle) and the minimum sky over the chips in electrons per
        # *output* pixel (AstroDrizzle uses the sky per input pixel, a units quirk).
        readnoise = float(np.sqrt(np.mean(readnoise2)))
        meta = (first["group_id"], first, readnoise, float(min(skies)), members)
        return job, meta

    def _single(self, result, meta, grid):
        _, first, readnoise, sky, members = meta
        product = result.product
        single = ResampledModel(data=product.data, wht=product.wht)
        apply_carried(single.meta, first["carried"], first["detectors"])
        single.meta.wcs = grid.wcs
        single.meta.product_type = "single"
        single.meta.rootname = exposure_product_root(first["group_id"])
        single.meta.filename = f"{single.meta.rootname}_single.fits"
        single.meta.group_id = first["group_id"]
        single.meta.exposure.exptime = first["exptime"]
        single.meta.bunit = first["bunit"]
        single.meta.units = "countrate" if first["per_pixel"] else "surface_brightness"
        if first["telescope"]:
            single.meta.telescope = first["telescope"]
        resample = single.meta.resample
        resample.kernel = self.kernel
        resample.pixfrac = self.pixfrac
        resample.weight_type = "exptime"
        resample.pixel_scale = grid.pixel_scale
        resample.ndrizim = len(result.added)
        resample.inputs = list(result.added)
        added = set(result.added)
        resample.members = [member for label, member in members if label in added]
        resample.texptime = first["exptime"]
        resample.readnoise = readnoise
        resample.sky = sky
        self.record_step_status(single)
        return single


def _single_metadata(model, output_scale):
    return {
        # taken now: the chip is shelved (on disk: closed) when the single is made
        "carried": carried_metadata(model, output_scale),
        "detectors": set(),  # of all the exposure's chips
        "filename": model.meta.filename,
        "group_id": model.meta.group_id,
        "exptime": float(model.meta.exposure.exptime),
        "bunit": drizzled_bunit(model),
        "per_pixel": model.meta.units != "surface_brightness",
        "telescope": model.meta.telescope,
    }
