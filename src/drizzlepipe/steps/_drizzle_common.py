"""Orchestration shared by the DrizSeparate and DrizFinal steps: the output grid from the step
parameters, and turning a chip model into what the drizzle accumulator takes.

Units: every chip is drizzled as a *rate per output pixel*: electrons/s for counts and count
rates (DN are multiplied by the gain), unchanged for surface brightness (MJy/sr), which is
independent of pixel area. The sky (``meta.background.level``, when not yet subtracted) is
subtracted on the fly; inputs are never modified.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS as FitsWCS

from .. import __version__
from ..algorithms.grid import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    OutputGridTooLargeError,
    default_output_grid,
    grid_from_reference,
    pixel_scale,
)
from ..algorithms.resample import pixel_area_ratio
from ..datamodels import dqflags, open_path
from ..datamodels.readers._common import celestial_wcs
from ..datamodels.units import electrons_per_unit
from ..exceptions import DrizzlepipeInputError
from ..execution import Executor
from ._tasks import ChipJob

__all__ = [
    "GRID_SPEC",
    "DRIZZLE_KERNELS",
    "OutputGridMaker",
    "ChipSources",
    "ModelChip",
    "chip_job",
    "exposure_times",
    "apply_carried",
    "carried_metadata",
    "exposure_product_root",
    "input_member",
    "mask_description",
]

log = logging.getLogger(__name__)

DRIZZLE_KERNELS = "option('square', 'point', 'turbo', 'gaussian', 'lanczos3'"

#: Output-grid parameters shared by the drizzle steps (names as JWST's resample).
GRID_SPEC = """
    rotation = float(default=None)  # Position angle of output +Y [deg], 0 = north up; None: first chip's
    pixel_scale = float(default=None)  # Output pixel scale [arcsec]; None: first chip's undistorted scale x ratio
    pixel_scale_ratio = float(default=1.0)  # Output/input pixel-scale ratio (ignored with pixel_scale)
    output_shape = int_list(min=2, max=2, default=None)  # Output shape [nx, ny]; None: covers every chip
    crval = float_list(min=2, max=2, default=None)  # RA, Dec [deg] of the reference pixel
    crpix = float_list(min=2, max=2, default=None)  # Reference pixel [x, y] (FITS, 1-based)
    refimage = string(default=None)  # Image (FITS/ASDF) whose WCS and shape define the grid
    stepsize = integer(default=10, min=1)  # Evaluate the WCS every stepsize pixels and interpolate
    max_pixels = integer(default=536870912, min=1)  # Largest output grid accepted [pixels] (2**29: 4 GiB for SCI+WHT)
"""  # noqa: E501


def parse_fillval(value):
    """``None``/``"INDEF"`` -> 0.0 (nothing filled: untouched pixels stay 0), ``"NaN"`` -> NaN,
    numbers -> float."""
    if value is None:
        return 0.0
    text = str(value).strip()
    if text.upper() in ("", "NONE", "INDEF"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"fillval must be a number, 'NaN' or 'INDEF', got {value!r}") from None


def _refimage_grid(path, max_pixels):
    opened = open_path(path) if str(path).lower().endswith(".asdf") else None
    if opened is not None:
        return grid_from_reference(opened.meta.wcs, opened.data.shape, max_pixels=max_pixels)
    try:
        with fits.open(path) as hdulist:
            for index, hdu in enumerate(hdulist):
                if hdu.header.get("NAXIS", 0) == 2 and "CTYPE1" in hdu.header:
                    wcs = celestial_wcs(hdu.header, path, str(index), hdulist)
                    shape = (hdu.header["NAXIS2"], hdu.header["NAXIS1"])
                    return grid_from_reference(wcs, shape, max_pixels=max_pixels)
    except OSError as exc:
        raise DrizzlepipeInputError(path, f"refimage cannot be read ({exc})") from None
    raise DrizzlepipeInputError(path, "refimage has no 2-D image with a celestial WCS")


@dataclass
class OutputGridMaker:
    """The grid parameters of a drizzle step."""

    rotation: float | None = None
    pixel_scale: float | None = None
    pixel_scale_ratio: float = 1.0
    output_shape: tuple[int, int] | None = None  # [nx, ny] as given by the user
    crval: tuple[float, float] | None = None
    crpix: tuple[float, float] | None = None
    refimage: str | None = None
    max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    step_name: str = "driz_final"

    @classmethod
    def from_step(cls, step):
        """Read the :data:`GRID_SPEC` parameters of ``step``."""
        return cls(
            max_pixels=step.max_pixels,
            step_name=step.class_alias,
            rotation=step.rotation,
            pixel_scale=step.pixel_scale,
            pixel_scale_ratio=step.pixel_scale_ratio,
            output_shape=step.output_shape,
            crval=step.crval,
            crpix=step.crpix,
            refimage=step.refimage,
        )

    def make(self, library):
        """Build the grid for the chips of ``library`` (reads only their WCS and shapes).

        Raises
        ------
        OutputGridTooLargeError
            With the parameter to change (``steps.<step>.max_pixels``) in the message.
        """
        try:
            grid = self._make(library)
        except OutputGridTooLargeError as error:
            raise OutputGridTooLargeError(
                f"{self.step_name}: {error} (parameter steps.{self.step_name}.max_pixels)"
            ) from None
        # The WCS as every process and every saved product will see it (astropy's WCS goes
        # through a FITS header in a pickle and in ASDF, which rounds its last digits once):
        # in memory or on disk, every task then works with the same numbers.
        return replace(grid, wcs=Executor.portable(grid.wcs))

    def _make(self, library):
        if self.refimage:
            return _refimage_grid(self.refimage, self.max_pixels)
        with library:
            chips = [library.chip_info(index) for index in range(len(library))]
        wcs_list = [chip.wcs for chip in chips]
        shapes = [chip.shape for chip in chips]
        reference_scale = chips[0].pixel_scale
        shape = None if self.output_shape is None else (self.output_shape[1], self.output_shape[0])
        return default_output_grid(
            wcs_list,
            shapes,
            rotation=self.rotation,
            pixel_scale=self.pixel_scale,
            pixel_scale_ratio=self.pixel_scale_ratio if self.pixel_scale is None else 1.0,
            output_shape=shape,
            crval=self.crval,
            crpix=self.crpix,
            reference_scale=reference_scale,
            max_pixels=self.max_pixels,
        )


def data_with_sky(model):
    """The chip's data as read, sky included: a sky already subtracted is added back (a new
    array then; otherwise the model's own array)."""
    if model.meta.background.subtracted:
        return model.data + np.float32(model.meta.background.level or 0.0)
    return model.data


def chip_label(model):
    """``file[SCI,n]`` for messages and context bookkeeping (a model or its ``ChipInfo``)."""
    meta = getattr(model, "meta", None)
    if meta is None:  # ChipInfo
        return f"{model.filename}[{model.extension or f'SCI,{model.chip or 1}'}]"
    extension = meta.source.extension or f"SCI,{meta.chip or 1}"
    return f"{meta.filename}[{extension}]"


def electrons_factor(model):
    """Factor to electrons (or to the unit of surface brightness) from the chip's data units."""
    meta = model.meta
    return electrons_per_unit(meta.units, meta.detector.in_electrons, meta.detector.gain)


def chip_variance(model, factor):
    """Variance of the chip's data after multiplying them by ``factor`` (data units squared).

    From VAR_POISSON + VAR_RNOISE (+ VAR_FLAT) when present, as JWST's ERR is made, else ERR,
    else (no error information at all) the detector model ``max(signal, 0) + readnoise**2`` in
    electrons.
    """
    if model.var_poisson is not None and model.var_rnoise is not None:
        variance = model.var_poisson + model.var_rnoise
        if model.var_flat is not None:
            variance += model.var_flat
        return variance * np.float32(factor**2)
    if model.meta.has_err is not False:
        return np.square(model.err, dtype=np.float32) * np.float32(factor**2)
    return detector_variance(model, factor, np.clip(model.data * np.float32(factor), 0, None))


def detector_variance(model, factor, signal):
    """Poisson + read-noise variance of ``signal`` (the chip's data units x ``factor``).

    Counts are electrons already; rates are turned into electrons with the exposure time and
    the variance back into rate units (``(rate t + rn**2) / t**2``). Where the file gives each
    pixel's own integration time (WFC3/IR and NICMOS ``TIME``: shorter for pixels that
    saturated), ``t`` is that time, as AstroDrizzle's IR sky image uses it.
    """
    per_second = model.meta.units == "countrate"
    exptime = np.float32(model.meta.exposure.exptime)
    if per_second and model.time is not None:
        exptime = np.where(model.time > 0, model.time, exptime).astype(np.float32)
    electrons = np.asarray(signal, dtype=np.float32) * (exptime if per_second else np.float32(1))
    readnoise = float(model.meta.detector.readnoise or 0.0)
    variance = electrons + np.float32(readnoise**2)
    if per_second:
        variance /= np.square(exptime)
    return variance.astype(np.float32)


def bad_pixels(model, good_bits, *, use_static=True, crbit=None):
    """True where DQ has a bit outside ``good_bits``, the static mask or ``crbit`` is set."""
    convention = model.meta.dq_convention or "hst"
    bad = dqflags.bad_pixel_mask(model.dq, good_bits, convention)
    if crbit:
        bad |= (model.dq & np.uint32(crbit)) != 0
    if use_static and model.static_mask is not None:
        bad |= model.static_mask.astype(bool)
    return bad


def weight_variance(model, factor, weight_type):
    """Variance behind ``err``/``ivm`` weights, in (data x factor) units squared, or None.

    ``err``: ERR**2, AstroDrizzle's ``(EXPTIME/ERR)**2`` weighting. ``ivm``: the variance without
    the sources' own Poisson noise, which would weight bright pixels down and bias fluxes low:
    VAR_RNOISE when the file has it (as the JWST pipeline), else sky + read noise (AstroDrizzle's
    automatic IVM without the flat field and dark).
    """
    if weight_type == "err":
        return np.square(model.err, dtype=np.float32) * np.float32(factor**2)
    if weight_type != "ivm":
        return None
    if model.var_rnoise is not None:
        return model.var_rnoise * np.float32(factor**2)
    if model.meta.units == "surface_brightness":
        # no gain or electrons to make a detector variance of
        raise DrizzlepipeInputError(
            chip_label(model), "weight_type='ivm' needs VAR_RNOISE for surface-brightness data; "
            "use weight_type='exptime' or 'err'",
        )  # fmt: skip
    sky = max(float(model.meta.background.level or 0.0) * factor, 0.0)
    variance = detector_variance(model, factor, np.full(model.data.shape, sky, np.float32))
    return np.maximum(variance, np.float32(1e-30))


def chip_job(model, output_scale, executor, *, good_bits, crbit=None, with_variance=False,
             weight_type="exptime", context_id=None):  # fmt: skip
    """Sky-subtract and convert one chip for drizzling (the model is left unchanged).

    Parameters
    ----------
    model : ImageModel
        The chip.
    output_scale : float
        Pixel scale of the output grid [arcsec].
    executor : Executor
        Makes the arrays and the WCS readable by the workers.
    good_bits : str or int or None
        DQ bits that do not make a pixel bad.
    crbit : int or "auto", optional
        DQ value of cosmic rays flagged by BlotCR (always bad); ``"auto"``: the default of the
        chip's DQ convention (4096 for HST, OUTLIER + DO_NOT_USE for JWST).
    with_variance : bool
        Also pass the variance of the drizzled data (error propagation).
    weight_type : str
        ``exptime``, ``err`` or ``ivm``: which variance the weights need.
    context_id : int, optional
        The chip's context bit in the product.

    Returns
    -------
    ChipJob
    """
    if weight_type == "err" and model.meta.has_err is False:
        raise DrizzlepipeInputError(
            chip_label(model), "weight_type='err' but there is no ERR array"
        )
    if crbit == "auto":
        crbit = dqflags.default_crbit(model.meta.dq_convention or "hst")
    factor = electrons_factor(model)
    sky = 0.0 if model.meta.background.subtracted else float(model.meta.background.level or 0.0)
    data = (model.data - np.float32(sky)) * np.float32(factor)
    input_scale = model.meta.detector.pixel_scale or pixel_scale(model.meta.wcs, model.data.shape)
    return ChipJob(
        data=executor.share(data),
        bad_mask=executor.share(bad_pixels(model, good_bits, crbit=crbit)),
        variance=executor.share(chip_variance(model, factor)) if with_variance else None,
        weight_variance=executor.share(weight_variance(model, factor, weight_type)),
        wcs=executor.portable(model.meta.wcs),
        shape=tuple(model.data.shape),
        exptime=float(model.meta.exposure.exptime),
        in_units="counts" if model.meta.units == "counts" else "cps",
        iscale=chip_iscale(model, output_scale, input_scale),
        pixel_scale_ratio=output_scale / input_scale,
        label=chip_label(model),
        context_id=context_id,
        group_id=model.meta.group_id,
        exposure=exposure_times(model),
    )


def exposure_times(model):
    """Exposure time, start and end (MJD, or None) of the chip's exposure."""
    exposure = model.meta.exposure
    return {
        "exptime": float(exposure.exptime),
        "start": exposure.start if exposure.hasattr("start") else None,
        "end": exposure.end if exposure.hasattr("end") else None,
    }


#: Prepares chips inside a task, where arrays need not be shared any further.
_IN_TASK = Executor("serial")


@dataclass
class ModelChip:
    """A chip model to be prepared for drizzling (:func:`chip_job`) by the task itself, so the
    sky subtraction, unit conversion and masks run in the worker, one chip at a time, and the
    parent copies nothing: ``model`` is the model itself, inherited by forked workers, or
    opened by the worker from the library's file."""

    model: object  # drizzlepipe.execution.ObjectRef
    output_scale: float
    good_bits: object
    crbit: int | None = None
    with_variance: bool = False
    weight_type: str = "exptime"
    context_id: int | None = None

    def prepare(self):
        """The :class:`~drizzlepipe.steps._tasks.ChipJob` of this chip."""
        return chip_job(
            self.model.get(), self.output_scale, _IN_TASK, good_bits=self.good_bits,
            crbit=self.crbit, with_variance=self.with_variance, weight_type=self.weight_type,
            context_id=self.context_id,
        )  # fmt: skip


class ChipSources:
    """Hands the chips of a library to drizzle tasks with as little copying as the scheduler
    allows, and returns borrowed models afterwards (a context manager).

    * on-disk library: tasks open their chip from the library's file (no model in the parent);
    * serial, threads, forked processes: the borrowed model itself (inherited by forked
      workers), prepared in the task;
    * a distributed cluster with an in-memory library: the chip is prepared here and its
      arrays go through the executor's scratch files.
    """

    def __init__(self, library, executor):
        self.library, self.executor = library, executor
        self._borrowed = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for index, model in self._borrowed.items():
            self.library.shelve(model, index, modify=False)
        self._borrowed.clear()

    def chip(self, index, output_scale, model=None, **options):
        """A :class:`ModelChip` or a ready :class:`ChipJob` for chip ``index`` (``options``
        as :func:`chip_job`); ``model``: the chip, when the caller has borrowed it already."""
        if model is None and self.library.on_disk:
            return ModelChip(self.library.member_ref(index), output_scale, **options)
        if model is None:
            model = self.library.borrow(index)
            self._borrowed[index] = model
        if self.executor.shares_objects:
            return ModelChip(self.executor.share_object(model), output_scale, **options)
        return chip_job(model, output_scale, self.executor, **options)


def chip_iscale(model, output_scale, input_scale=None):
    """Intensity scale of the chip's drizzled data: the output/input pixel-area ratio for
    per-pixel quantities, 1 for surface brightness."""
    if input_scale is None:
        input_scale = model.meta.detector.pixel_scale or pixel_scale(
            model.meta.wcs, model.data.shape
        )
    per_pixel = model.meta.units != "surface_brightness"
    return pixel_area_ratio(output_scale, input_scale, per_pixel=per_pixel)


def drizzled_bunit(model, units="cps"):
    """BUNIT of a drizzled product made from chips like ``model``."""
    if model.meta.units == "surface_brightness":
        return model.meta.bunit
    return "ELECTRONS/S" if units == "cps" else "ELECTRONS"


def exposure_product_root(group_id):
    """File-name root of a per-exposure product (``_single``, ``_blot``, ``_crmask``): the
    exposure's name (the file's root name for HST and plain FITS, ``<root>_sci<n>`` for a STIS
    imset, the exposure group for JWST), made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(group_id))


def _distortion(wcs):
    """What describes a chip's distortion, AstroDrizzle's ``COEF`` (``SIP``, ``NPOL``...)."""
    if not isinstance(wcs, FitsWCS):
        return type(wcs).__name__.lower()
    parts = [name for name, present in (
        ("SIP", wcs.sip is not None), ("NPOL", wcs.cpdis1 is not None or wcs.cpdis2 is not None),
        ("D2IM", wcs.det2im1 is not None or wcs.det2im2 is not None),
    ) if present]  # fmt: skip
    return "+".join(parts) or "none"


def mask_description(good_bits, *, use_static=True, crbit=None):
    """Which pixels a drizzle step left out, for the ``D%03dMASK`` keyword."""
    parts = [f"DQ bits outside {good_bits}" if good_bits not in (None, "None") else "no DQ"]
    if use_static:
        parts.append("static mask")
    if crbit:
        parts.append("cosmic rays" if crbit == "auto" else f"cosmic rays ({crbit})")
    return ", ".join(parts)


def input_member(info, mask):
    """One row of a product's input table (``meta.resample.members``, written as the
    ``D%03d*`` keywords and ``HDRTAB``) from a chip's :class:`ChipInfo`."""
    extension = info.extension or f"SCI,{info.chip or 1}"
    extname, _, extver = extension.partition(",")
    return {
        "data": f"{info.filename}[{extension.lower()}]",
        "file": info.filename,
        "extname": extname,
        "extver": int(extver) if extver.strip().isdigit() else 1,
        "rootname": info.rootname,
        "filter": info.filter,
        "exptime": info.exptime,
        "expstart": info.start,
        "expend": info.end,
        "sky": float(info.sky or 0.0),
        "pixel_scale": info.pixel_scale or pixel_scale(info.wcs, info.shape),
        "distortion": _distortion(info.wcs),
        "mask": mask,
        "weight_scale": 1.0,
        "software": f"drizzlepipe {__version__} (drizzle {_drizzle_version()})",
        "wcskey": "",
    }


@lru_cache(maxsize=1)
def _drizzle_version():
    try:
        return version("drizzle")
    except PackageNotFoundError:  # pragma: no cover - drizzle is a dependency
        return "?"


def carried_metadata(model, output_scale=None):
    """What a product made from ``model`` (its first input chip) carries of it: header cards,
    root name and photometry, in the product's units (data in DN are drizzled as electrons,
    so PHOTFLAM and PHOTFNU, per DN/s, are divided by the gain; JWST pixel areas become the
    output pixel's, ``output_scale`` [arcsec]). Apply with :func:`apply_carried`."""
    meta = model.meta
    photometry = dict(meta.photometry.instance) if meta.hasattr("photometry") else {}
    # a resampled product (a single for the median) is in electrons already
    factor = electrons_factor(model) if meta.hasattr("detector") else 1.0
    for name in ("photflam", "photfnu"):
        if name in photometry:
            photometry[name] = float(photometry[name]) / factor
    if output_scale is not None and ("pixar_sr" in photometry or "pixar_a2" in photometry):
        photometry["pixar_a2"] = float(output_scale) ** 2
        photometry["pixar_sr"] = float(output_scale) ** 2 * (np.pi / 180.0 / 3600.0) ** 2
    cards = meta.header_cards.instance if meta.hasattr("header_cards") else {}
    return {"header_cards": dict(cards or {}), "photometry": photometry}


def apply_carried(product_meta, carried, detectors=()):
    """Set what :func:`carried_metadata` returned in a product's metadata; a product of chips
    of several ``detectors`` (JWST NRCB1 and NRCB2...) says ``DETECTOR = 'MULTIPLE'``."""
    cards = dict(carried["header_cards"])
    if len(set(detectors)) > 1:
        product_meta.instrument.detector = "MULTIPLE"
        if "DETECTOR" in cards:
            cards["DETECTOR"] = "MULTIPLE"
    if cards:
        product_meta.header_cards = cards
    for name, value in carried["photometry"].items():
        setattr(product_meta.photometry, name, value)
