"""DrizzlePipeline: StaticMask -> SkySub -> DrizSeparate -> CreateMedian -> BlotCR -> DrizFinal.

What passes between the steps: a :class:`~drizzlepipe.datamodels.ModelLibrary` of chips (static
mask, sky and cosmic-ray flags are recorded in it, never in the input files), the list of
single drizzled images, the median, and the final :class:`ResampledModel`, written as
``<name>_drz.fits`` where ``<name>`` is ``output_file``, else the association's product name,
else ``final`` (AstroDrizzle's default).

Before any work the pipeline chooses its parameter preset (``preset='auto'``: by instrument,
detector and number of exposures, :mod:`drizzlepipe.presets`), which sets the parameters the
user left at None, and checks what would otherwise fail late: the output directory is
writable, the output grids are within ``max_pixels``, and the inputs are consistent (the
library refuses duplicated exposures and mixed filters). Chips without a usable pixel (all NaN
or all flagged) are reported and left out; the rest runs. DQ bits ``resetbits`` (the cosmic rays
an earlier drizzle flagged, by default) are cleared in memory before any step.

Logic as AstroDrizzle's: with one exposure there is nothing to compare, so DrizSeparate,
CreateMedian and BlotCR are skipped (logged); if fewer than two single images are made or the
median rejects every pixel, CR detection is skipped with a warning; any step can be switched
off with ``skip=True`` (recorded as SKIPPED in ``meta.cal_step``), and a step whose input is
missing is skipped too.
"""

from __future__ import annotations

import logging
import tempfile
import time

import numpy as np

from .. import presets
from ..datamodels import ModelLibrary, build_association, dqflags
from ..datamodels.conversions import chip_label, has_usable_chip_pixel
from ..datamodels.library import is_model_list
from ..exceptions import DrizzlepipeInputError
from ..execution import Executor, default_workers
from ..memory import available_memory, plan_run
from ..numpy_tuning import advise_once
from ..steps import (
    BlotCRStep,
    CreateMedianStep,
    DrizFinalStep,
    DrizSeparateStep,
    SkySubStep,
    StaticMaskStep,
)
from ..steps._drizzle_common import OutputGridMaker
from .base import DrizPipeline

__all__ = ["DrizzlePipeline"]

log = logging.getLogger(__name__)


class DrizzlePipeline(DrizPipeline):
    """Combine dithered exposures into one clean image, rejecting cosmic rays (AstroDrizzle).

    Call as ``DrizzlePipeline.call(inputs, steps={...}, output_dir=...)`` or
    ``strun drizzle_pipeline inputs``; inputs are anything
    :class:`~drizzlepipe.datamodels.ModelLibrary` accepts (association JSON, list, glob,
    ``@file``). Returns the final :class:`~drizzlepipe.datamodels.ResampledModel`.
    """

    class_alias = "drizzle_pipeline"

    spec = """
    preset = option('auto', 'none', 'few_exposures', 'many_exposures', 'undersampled', 'jwst_imaging', default='auto')  # Parameter preset for the parameters left at None (auto: chosen by instrument, detector and number of exposures; none: the built-in defaults, AstroDrizzle's); values set by the user win
    in_memory = boolean(default=None)  # Keep the chips' state in memory, pixels read from the files when used (False: state in temporary files, least RAM; None: the memory model decides)
    crbit = integer(default=None)  # DQ value of cosmic rays for blot_cr and driz_final where theirs is None (None: by mission)
    good_bits = string(default=None)  # DQ bits treated as good by sky_sub, driz_separate, blot_cr, driz_final where theirs is None (None: the preset's, else '0')
    save_intermediates = boolean(default=False)  # Save the products of every step
    units = option('counts', 'countrate', 'surface_brightness', default=None)  # Units of inputs without (or with a wrong) BUNIT
    exptime = float(default=None)  # Exposure time [s] of inputs without one
    gain = float(default=None, min=0.0001)  # Gain [e-/DN] overriding the instrument's or header's (None: from the data)
    readnoise = float(default=None, min=0)  # Read noise [e-] overriding the instrument's or header's
    resetbits = string(default='auto')  # DQ bits cleared in memory before any step ('auto': 4096 for HST/FITS, none for JWST; '0': none)
    allow_mixed = boolean(default=False)  # Combine inputs of different instruments or filters (else refused)
    """  # noqa: E501

    step_defs = {
        "static_mask": StaticMaskStep,
        "sky_sub": SkySubStep,
        "driz_separate": DrizSeparateStep,
        "create_median": CreateMedianStep,
        "blot_cr": BlotCRStep,
        "driz_final": DrizFinalStep,
    }

    def process(self, *inputs):
        """Run the six steps on the inputs.

        Parameters
        ----------
        *inputs : str, list, ModelLibrary
            The exposures: one argument (file, glob, ``@list``, association JSON, HST
            ``_asn.fits``, list of names or models, or a library), or several file names (as
            ``strun`` passes them).

        Returns
        -------
        ResampledModel or ModelLibrary or None
            The final product (written as ``<product>_drz.fits`` with an output directory or
            ``save_results``); the library when ``driz_final`` is skipped; None without inputs.
        """
        # strun passes every file named on the command line as its own argument
        input_data = list(inputs) if len(inputs) > 1 else (inputs[0] if inputs else None)
        if input_data is None:
            # e.g. "strun drizzle_pipeline --save-parameters=pars.asdf" without inputs
            log.info("No input given: nothing to drizzle")
            return None
        started = time.perf_counter()
        advise_once(log)
        library, workers = self._library(input_data)
        # The preset's values (chosen from the headers before any work) for the parameters the
        # user left at None; one executor (worker pool, scratch directory) shared by every step
        # of the run, and one scratch directory for the singles an on-disk run keeps in files.
        with (
            presets.applied(self, library),
            Executor(self.scheduler or "auto", workers) as self.executor,
            tempfile.TemporaryDirectory(prefix="drizzlepipe-", dir=self.output_dir) as scratch,
        ):
            self.scratch_dir = scratch
            log.info("Scheduler %s with %d worker(s)", self.executor.scheduler, workers)
            try:
                return self._run(library, started)
            finally:
                self.executor = self.scratch_dir = None

    def _library(self, input_data):
        """The library of the inputs and the number of workers: ``in_memory`` and ``n_workers``
        the user left at None are decided by the memory model from the inputs' headers and the
        memory available (:func:`~drizzlepipe.memory.plan_run`), and the choice is logged."""
        cores = self.n_workers or default_workers()
        if isinstance(input_data, ModelLibrary):
            return input_data, cores
        if is_model_list(input_data):  # the models are in memory already
            library = ModelLibrary(input_data, allow_mixed=self.allow_mixed,
                                   **self._open_options())  # fmt: skip
            return library, cores
        asn = build_association(input_data, allow_mixed=self.allow_mixed,
                                options=self._open_options())  # fmt: skip
        sizes = asn["sizes"]
        plan = plan_run(
            sizes["chip_pixels"], sizes["output_pixels"], sizes["n_chips"], sizes["n_exposures"],
            cores=default_workers(), available=available_memory(), in_memory=self.in_memory,
            n_workers=self.n_workers, compute_err=self.driz_final.compute_err,
            context=self.driz_final.context, final_runs=self.driz_final.runs,
        )  # fmt: skip
        log.info("Memory plan: %s", plan.reason)
        library = ModelLibrary(asn, on_disk=not plan.in_memory, allow_mixed=self.allow_mixed,
                               **self._open_options())  # fmt: skip
        return library, plan.n_workers

    def _run(self, library, started):
        self.product_root = self.product_name(library)
        self._share_defaults()
        library = self._usable(library)
        self._check_grids(library)
        n_exposures = len(library.group_names)
        log.info(
            "Drizzling %d chips of %d exposures into %s_drz",
            len(library), n_exposures, self.product_root,
        )  # fmt: skip
        timings = {}

        run = self._timed
        library = run(timings, "static_mask", library, library=library, on_skip=library)
        library = run(timings, "sky_sub", library, library=library, on_skip=library)
        if n_exposures < 2:
            for name in ("driz_separate", "create_median", "blot_cr"):
                log.info("Only one exposure: %s skipped (nothing to compare with)", name)
                self._mark_skipped(library, name)
        else:
            singles = run(timings, "driz_separate", library, library=library, on_skip=None)
            if singles is not None and len(singles) < 2:
                log.warning(
                    "Only %d single image overlaps the output grid: no median, no cosmic-ray "
                    "detection", len(singles),
                )  # fmt: skip
                singles = None
            median = run(timings, "create_median", singles, library=library, on_skip=None)
            del singles  # in memory: E x 8 O bytes no later step needs
            if median is not None and not np.isfinite(median.data).any():
                log.warning("The median rejected every pixel: cosmic-ray detection skipped")
                median = None
            if median is None and self.blot_cr.median:
                median_args = ()  # the user's median file (steps.blot_cr.median)
            else:
                median_args = (median,)
            library = run(
                timings, "blot_cr", library, *median_args, library=library, on_skip=library
            )
            del median, median_args  # not needed by the final drizzle
        final = run(timings, "driz_final", library, library=library, on_skip=None)
        if final is None:
            log.warning("driz_final was skipped: no final product")
            return library
        final.meta.cal_step.drizzle_pipeline = "COMPLETE"
        for name in self.step_defs:
            status = "SKIPPED" if name not in timings else "COMPLETE"
            setattr(final.meta.cal_step, name, status)
        self._summary(library, final, timings, time.perf_counter() - started)
        if self.save_results or self.output_file or self.output_dir:
            path = self.save_product(final, self.product_root, "drz")
            log.info("Final product written to %s", path)
        return final

    def _open_options(self):
        """What the user states about inputs (units, exposure time, gain, read noise) and the
        DQ bits to reset, for the readers."""
        stated = (("units", self.units), ("exptime", self.exptime), ("gain", self.gain),
                  ("readnoise", self.readnoise), ("resetbits", self.resetbits))  # fmt: skip
        return {key: value for key, value in stated if value is not None}

    def _usable(self, library):
        """The library without the chips that have no usable pixel (all NaN, or every pixel
        flagged by a DQ bit outside the final drizzle's ``good_bits``), each reported; an
        exposure left without chips is reported as left out."""
        library.preload()
        good_bits = self.driz_final.inherited("good_bits", "0")
        empty = []
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                try:
                    convention = model.meta.dq_convention or "hst"
                    good = dqflags.interpret_good_bits(good_bits, convention)
                    bad_bits = 0 if good is None else ~good & 0xFFFFFFFF
                    if not has_usable_chip_pixel(model, bad_bits):
                        empty.append(index)
                        log.warning(
                            "%s: no usable pixel (all NaN or flagged by DQ bits outside "
                            "good_bits=%s): left out", chip_label(model), good_bits,
                        )  # fmt: skip
                finally:
                    library.shelve(model, index, modify=False)
        if not empty:
            return library
        if len(empty) == len(library):
            raise DrizzlepipeInputError(None, "no input chip has a usable pixel")
        groups = library.group_indices
        for group, indices in groups.items():
            if set(indices) <= set(empty):
                log.warning("Exposure %s left out: none of its chips is usable", group)
        return library.subset([i for i in range(len(library)) if i not in set(empty)])

    def _check_grids(self, library):
        """Make the output grids of the drizzle steps now, so that a grid too large (or a
        reference image that cannot be read) is reported before any work, not after it."""
        single_exposure = len(library.group_indices) < 2  # no singles are made then
        for name in ("driz_separate", "driz_final"):
            step = getattr(self, name)
            if not step.skip and not (name == "driz_separate" and single_exposure):
                grid = OutputGridMaker.from_step(step).make(library)
                log.info(
                    "%s grid: %d x %d pixels at %.5f arcsec",
                    name, grid.shape[1], grid.shape[0], grid.pixel_scale,
                )  # fmt: skip

    def _share_defaults(self):
        """``save_intermediates`` saves every step's products (``good_bits`` and ``crbit`` the
        steps inherit themselves where theirs are None: :meth:`DrizStep.inherited`)."""
        if self.save_intermediates:
            for name in self.step_defs:
                if name != "driz_final":
                    getattr(self, name).save_results = True

    def _timed(self, timings, name, *args, library, on_skip):
        """Run one step with stpipe's ``run`` and log its wall time.

        A step with ``skip`` set is stpipe's to skip (it returns its input and records SKIPPED
        in what it was given); a step whose input was not produced is not run. Either way its
        status SKIPPED is in the chips and ``on_skip`` is returned.
        """
        step = getattr(self, name)
        if any(arg is None for arg in args):
            log.info("Step %s skipped (its input was not produced)", name)
            self._mark_skipped(library, name)
            return on_skip
        started = time.perf_counter()
        result = step.run(*args)
        if step.skip:
            log.info("Step %s skipped (skip=True)", name)
            if args[0] is not library:  # stpipe recorded it in the singles
                self._mark_skipped(library, name)
            return on_skip
        timings[name] = time.perf_counter() - started
        log.info("Step %s finished in %.2f s", name, timings[name])
        return result

    @staticmethod
    def _mark_skipped(library, name):
        with library:
            for index, model in enumerate(library):
                setattr(model.meta.cal_step, name, "SKIPPED")
                library.shelve(model, index, modify=True)

    def _summary(self, library, final, timings, total):
        rows = []
        with library:
            for group, indices in library.group_indices.items():
                chips = [library.chip_info(index) for index in indices]
                files = sorted({chip.filename for chip in chips})
                # a chip by its extension (HST) or, one chip a file (JWST), its detector
                names = [
                    chip.extension if chip.extension not in (None, "SCI", "PRIMARY")
                    else (chip.detector or f"SCI,{chip.chip}")
                    for chip in chips
                ]  # fmt: skip
                skies = ", ".join(f"{chip.sky or 0.0:.4g}" for chip in chips)
                flagged = sum(int(chip.cr_npix or 0) for chip in chips)
                # the pixels the input had not flagged: npix / fraction of every chip
                checked = sum(
                    chip.cr_npix / chip.cr_fraction if chip.cr_fraction else np.prod(chip.shape)
                    for chip in chips
                )
                rows.append((group, ", ".join(files), " ".join(names), skies, flagged / checked))
        header = ("exposure", "file", "chips", "sky (data units/pixel)")
        widths = [max(len(title), *(len(row[k]) for row in rows))
                  for k, title in enumerate(header)]  # fmt: skip
        lines = ["  ".join(f"{text:<{w}}" for text, w in zip(header, widths)) + "  CR fraction"]
        for row in rows:
            cells = "  ".join(f"{text:<{w}}" for text, w in zip(row[:4], widths))
            lines.append(f"{cells}  {100 * row[4]:10.3f}%")
        ny, nx = final.data.shape
        nan_fraction = float(np.isnan(final.data).mean())
        lines.append(
            f"output {nx} x {ny} pixels, total exposure {final.meta.exposure.exptime:.1f} s, "
            f"{100 * nan_fraction:.2f}% NaN (no data), {final.meta.resample.ndrizim} chips"
        )
        lines.append(
            "step times: "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
            + f"; total {total:.2f} s"
        )
        log.info("Summary\n%s", "\n".join(lines))
