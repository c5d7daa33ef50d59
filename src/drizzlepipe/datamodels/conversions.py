"""A chip model as the algorithms take it: its data in electrons (or a surface brightness),
its variance, its bad pixels, its intensity scale on an output grid.

Units: counts and count rates are turned into electrons and electrons/s (DN times the gain);
surface brightness (MJy/sr) is unchanged. Masks are boolean, True = bad. The chip model is
never changed (new arrays are returned where the data change).
"""

from __future__ import annotations

import numpy as np

from ..algorithms.grid import pixel_scale
from ..algorithms.resample import pixel_area_ratio
from ..algorithms.stats import has_usable_pixel
from ..exceptions import DrizzlepipeInputError
from . import dqflags
from .pixels import pixel_rows
from .units import electrons_per_unit

__all__ = [
    "bad_pixels",
    "chip_iscale",
    "chip_label",
    "chip_variance",
    "data_with_sky",
    "detector_variance",
    "electrons_factor",
    "exposure_times",
    "has_usable_chip_pixel",
    "weight_variance",
]


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
        variance *= np.float32(factor**2)
        return variance
    if model.meta.has_err is not False:
        variance = np.square(model.err, dtype=np.float32)
        variance *= np.float32(factor**2)  # in place: one chip-sized array, not two
        return variance
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


def has_usable_chip_pixel(model, bad_bits, first_rows=64):
    """True if some pixel of the chip is finite and has none of ``bad_bits`` (an int) set in
    its DQ (:func:`~drizzlepipe.algorithms.stats.has_usable_pixel`).

    The first ``first_rows`` rows are examined first, read alone from the chip's file when its
    pixels are there (:func:`~drizzlepipe.datamodels.pixels.pixel_rows`); the whole chip is
    read only when none of them is usable.
    """
    rows = slice(0, first_rows)
    if has_usable_pixel(pixel_rows(model, "data", rows), model.dq[rows], bad_bits):
        return True
    return has_usable_pixel(model.data, model.dq, bad_bits)


def bad_pixels(model, good_bits, *, use_static=True, crbit=None):
    """True where DQ has a bit outside ``good_bits``, the static mask or ``crbit`` is set."""
    convention = model.meta.dq_convention or "hst"
    bad = dqflags.bad_pixel_mask(model.dq, good_bits, convention)
    if crbit:
        bad |= dqflags.any_bits_set(model.dq, crbit)
    if use_static and model.static_mask is not None:
        np.logical_or(bad, model.static_mask, out=bad)
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
    variance = detector_variance(model, factor, np.full(model.shape, sky, np.float32))
    return np.maximum(variance, np.float32(1e-30))


def chip_iscale(chip, output_scale, input_scale=None):
    """Intensity scale of the chip's drizzled data: the output/input pixel-area ratio for
    per-pixel quantities, 1 for surface brightness (``chip``: a model or its ``ChipInfo``)."""
    meta = getattr(chip, "meta", None)
    if meta is None:  # ChipInfo
        units, wcs, known = chip.units, chip.wcs, chip.pixel_scale
    else:
        units, wcs, known = meta.units, meta.wcs, meta.detector.pixel_scale
    if input_scale is None:
        input_scale = known or pixel_scale(wcs, chip.shape)
    return pixel_area_ratio(output_scale, input_scale, per_pixel=units != "surface_brightness")


def exposure_times(model):
    """Exposure time, start and end (MJD, or None) of the chip's exposure."""
    exposure = model.meta.exposure
    return {
        "exptime": float(exposure.exptime),
        "start": exposure.start if exposure.hasattr("start") else None,
        "end": exposure.end if exposure.hasattr("end") else None,
    }
