"""Cosmic-ray detection against the blotted median image (AstroDrizzle ``driz_cr``).

Every input chip is compared with the median image blotted (resampled) back onto that chip. A
pixel is a cosmic ray when its residual ``|data - blot|`` is too large to be explained by noise
and by the blot's own interpolation error near sharp structure, estimated from the blot's
derivative image ``D`` (the largest absolute difference of a blot pixel to its four direct
neighbours).

Two passes, as in AstroDrizzle (``drizCR.py``) and stcal (``flag_resampled_crs``)::

    fail_k = |data - blot| > scale_k * D + snr_k * sigma        k = 1, 2
    cr     = fail_2 AND (fail_1 anywhere in the 3x3 neighbourhood, the pixel included)

The first pass (higher ``snr``, larger ``scale``) finds the cores of the cosmic rays; the second
pass, with lower thresholds, then adds the fainter pixels next to them. The noise ``sigma`` comes
from one of two models:

``noise="detector"`` (AstroDrizzle)
    ``sigma = sqrt(gain * |blot| + readnoise**2) / gain``. ``data`` and ``blot`` must both be in
    counts that still include the sky (the blot has the chip's sky added back), ``readnoise`` is
    in electrons and ``gain`` is the effective gain in electrons per count: 1 for data already in
    electrons, which is what AstroDrizzle passes for ACS and WFC3 (``_effGain``). ``sigma`` is
    then in the units of ``data``.
``noise="err"`` (JWST/stcal)
    ``sigma = err``, the input's ERR array in the units of ``data``; NaN errors count as 0 as in
    stcal. ``blot`` must then include the background that ``data`` contains (stcal's ``backg``
    added to the blot).

Afterwards the mask can be grown by a ``grow`` x ``grow`` box (the pixel plus its box
neighbours; 1 = no growth) and along the readout direction by ``ctegrow`` pixels to catch the
charge-transfer trails of cosmic rays. The two growths are both applied to the two-pass mask and
OR-ed, as AstroDrizzle does (the trail is not grown from the box-grown mask).

Conventions: masks are boolean with True = bad, here True = cosmic ray. Arrays are indexed
``[row, column]`` (``[y, x]``); the "readout direction" follows AstroDrizzle's ``cte_dir``:
for ``readout_direction=+1`` a cosmic ray at row ``r`` also flags rows ``r - ctegrow .. r - 1``
of its column, for ``-1`` it flags rows ``r + 1 .. r + ctegrow``. The ``grow`` box around a
cosmic ray at ``(r, c)`` spans rows ``r - (grow - 1) // 2 .. r + grow // 2`` and the same
columns, which for even widths is where ``scipy.signal.convolve2d(mode="same")`` puts it in
AstroDrizzle.

The median's own noise (``model_variance``): AstroDrizzle and stcal compare the residual with
the noise of the input pixel alone, as if the blotted median were exact. A median of ``n``
exposures has a variance of about ``(pi / 2) sigma**2 / n``, which passing ``model_variance``
adds. This is not "snr in true sigmas": a clean pixel's own value is part of the median it is
compared with, which makes its residual scatter *less* than ``sigma``. Measured on the simulated
sets of ``bench/science.py`` (minmed of 4, median of 8 exposures), the robust scatter of
``(data - blot) / sigma`` over clean sky pixels is 0.84-0.93, and ``sqrt(1 + pi / (2 n))`` is
1.18 (n = 4) and 1.09 (n = 8). A cosmic ray, rejected from the median, does see the median's
noise. Within one data set the term acts much like a higher ``snr`` (the recall / false-flag
curves with and without it agree to the sets' counting noise); its place is in the defaults.

Seeds (``no_seed``): the second pass searches the 3 x 3 neighbourhood of every first-pass
failure, with its lower threshold. A pixel flagged bad before (a hot, warm or saturated pixel)
fails the first pass by its own excess, which is not a cosmic ray, and AstroDrizzle then flags
the noise of its neighbours at the second threshold. ``no_seed`` keeps such pixels from opening
the search (they are still flagged themselves when they fail both passes). Measured on the
simulated sets of ``bench/science.py``: with ``snr="4.0 2.0"`` the false flags fall from 161 to
7 pixels (n = 4, FWHM 1.5 px) at the same recall, 0.995; AstroDrizzle's defaults there find
0.988 with 21.

Choosing ``scale``: the derivative term protects sharp sources, which the blot reproduces
smoothed. With undersampled PSFs (FWHM about 1 pixel) the defaults ``"1.2 0.7"`` flag the cores
of a sizeable fraction of stars, in AstroDrizzle as here; drizzlepac's own HAP parameters for
WFC3/IR use ``snr="5.0 4.0"``, ``scale="3.0 2.4"``, which leave them alone.

Differences from AstroDrizzle 3.11 (each a [QUIRK] of ``astrodrizzle-spec.md`` section 8, fixed
here; the science is otherwise identical and the tests compare masks pixel by pixel):

1. Derivative at the image edges. ``quickDeriv.qderiv`` takes a missing neighbour as the value
   0, so in the first row and column and in the last two rows and columns ``D >= |blot|`` (the
   full sky level) and cosmic rays there are rarely found. Here the edges use only the
   neighbours that exist, like stcal's ``_abs_deriv`` (stcal #311).
2. Sky counted twice. AstroDrizzle computes ``sqrt(gain * |blot + sky| + rn**2)`` although its
   blot already has the sky added back (``blot_addsky=True``), so in sky-dominated areas the
   noise is overestimated by up to sqrt(2) and faint cosmic rays are missed. Here the sky is
   counted once: the blot, which contains it, is the whole model of the signal.
3. No readout direction. With ``driz_cr_ctegrow > 0`` on a chip whose ``cte_dir`` is 0 (ACS/SBC,
   WFC3/IR) AstroDrizzle's all-zero kernel marks the whole chip as cosmic rays. Here no trail
   growth is done and a :class:`CTEGrowthSkippedWarning` is issued, which the step can catch and
   log.
4. CTE trails at the chip edge. AstroDrizzle's ``boundary='symm'`` convolution reflects the
   trail back at the first/last row, so up to ``ctegrow`` rows at that edge are flagged by cosmic
   rays on the wrong side of them. Here a trail stops at the chip edge.
5. NaN. AstroDrizzle flags every pixel whose data or blot is NaN, and the NaN spreads through
   ``qderiv`` to the derivative of the four neighbours, which are then flagged too. Here a NaN
   in ``data`` or ``blot`` is never flagged, it does not count as a first-pass failure for its
   neighbours, and the derivative ignores NaN neighbours (as stcal).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CRMaskSummary",
    "CTEGrowthSkippedWarning",
    "derivative_image",
    "detect_cosmic_rays",
    "parse_pair",
    "summarize_cr_mask",
]

_PAIR_SEPARATORS = re.compile(r"[,;\s]+")
_NOISE_MODELS = ("detector", "err")


class CTEGrowthSkippedWarning(UserWarning):
    """``ctegrow > 0`` was requested for a chip without a readout direction; no trail growth."""


class CRMaskSummary(NamedTuple):
    """Counts of a cosmic-ray mask (see :func:`summarize_cr_mask`)."""

    n_flagged: int
    """Number of pixels flagged as cosmic rays among the counted pixels."""
    n_pixels: int
    """Number of pixels counted (all pixels minus the excluded ones)."""
    fraction: float
    """``n_flagged / n_pixels``; 0.0 when no pixel is counted."""


def parse_pair(value, name: str) -> tuple[float, float]:
    """Read a pair of numbers such as AstroDrizzle's ``driz_cr_snr = "3.5 3.0"``.

    Parameters
    ----------
    value : str or sequence of two numbers
        A string with exactly two numbers separated by commas, semicolons and/or whitespace
        (``"3.5 3.0"``, ``"3.5,3.0"``, ``"3.5; 3.0"``), or a sequence of two numbers.
    name : str
        Name of the parameter, used in the error message (for example ``"snr"``).

    Returns
    -------
    tuple of float
        The two values, in the order given.

    Raises
    ------
    ValueError
        When there are not exactly two values or a value is not a finite number.
    """
    example = f"for example {name}='3.5 3.0'"
    if isinstance(value, str):
        items = [item for item in _PAIR_SEPARATORS.split(value.strip()) if item]
    elif isinstance(value, Sequence | np.ndarray):
        items = list(np.asarray(value, dtype=object).ravel())
    else:
        raise ValueError(
            f"{name} must be a string or a sequence of two numbers ({example}); got {value!r}"
        )
    if len(items) != 2:
        raise ValueError(
            f"{name} must hold exactly two values ({example}); got {len(items)} in {value!r}"
        )
    numbers = []
    for item in items:
        if isinstance(item, bool | np.bool_):
            raise ValueError(f"{name} must hold two numbers ({example}); got {value!r}")
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must hold two numbers ({example}); {item!r} in {value!r} is not a number"
            ) from None
        if not np.isfinite(number):
            raise ValueError(f"{name} values must be finite numbers; got {value!r}")
        numbers.append(number)
    return numbers[0], numbers[1]


def _working_dtype(*arrays: np.ndarray) -> np.dtype:
    """Float dtype for the arithmetic: float32 for float32 inputs (as AstroDrizzle), else wider."""
    return np.result_type(*(array.dtype for array in arrays), np.float32)


def derivative_image(blot) -> np.ndarray:
    """Largest absolute difference of every pixel to its four direct neighbours.

    ``D[y, x] = max(|b - b[y-1, x]|, |b - b[y+1, x]|, |b - b[y, x-1]|, |b - b[y, x+1]|)`` over
    the neighbours that exist and are not NaN. Unlike AstroDrizzle's ``quickDeriv.qderiv``,
    pixels on the image edges do not compare with an imaginary 0 beyond the edge.

    Parameters
    ----------
    blot : array_like, 2-D
        The blotted median image, in any units (the result has the same units).

    Returns
    -------
    numpy.ndarray
        The derivative image, float32 for float32 (or narrower) input, float64 otherwise. It is
        NaN where ``blot`` is NaN and 0 for a pixel without any finite neighbour.
    """
    blot = np.asarray(blot)
    if blot.ndim != 2:
        raise ValueError(f"blot must be a 2-D image; got an array of shape {blot.shape}")
    dtype = _working_dtype(blot)
    blot = blot.astype(dtype, copy=False)
    n_rows, n_columns = blot.shape
    derivative = np.zeros(blot.shape, dtype=dtype)

    # |b[y+1] - b[y]| serves both pixels of each vertical pair; fmax ignores the NaN differences
    # produced by NaN neighbours, so edges and NaN holes use only the neighbours that exist.
    vertical = np.subtract(blot[1:], blot[:-1], out=np.empty((n_rows - 1, n_columns), dtype))
    np.abs(vertical, out=vertical)
    np.fmax(derivative[1:], vertical, out=derivative[1:])
    np.fmax(derivative[:-1], vertical, out=derivative[:-1])
    del vertical

    horizontal = np.subtract(
        blot[:, 1:], blot[:, :-1], out=np.empty((n_rows, n_columns - 1), dtype)
    )
    np.abs(horizontal, out=horizontal)
    np.fmax(derivative[:, 1:], horizontal, out=derivative[:, 1:])
    np.fmax(derivative[:, :-1], horizontal, out=derivative[:, :-1])
    del horizontal

    missing = np.isnan(blot)
    if missing.any():
        derivative[missing] = np.nan
    return derivative


def _dilate_3x3(mask: np.ndarray) -> np.ndarray:
    """True where the pixel or one of its (existing) 8 neighbours is True."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    dilated = rows.copy()
    dilated[:, 1:] |= rows[:, :-1]
    dilated[:, :-1] |= rows[:, 1:]
    return dilated


def _along(axis: int, selection: slice) -> tuple[slice, slice]:
    """Index selecting ``selection`` along ``axis`` of a 2-D array."""
    return (selection, slice(None)) if axis == 0 else (slice(None), selection)


def _or_shifted(target: np.ndarray, source: np.ndarray, offset: int, axis: int) -> None:
    """``target[i] |= source[i + offset]`` along ``axis`` where ``i + offset`` exists."""
    n = source.shape[axis]
    if abs(offset) >= n:
        return
    if offset >= 0:
        target[_along(axis, slice(0, n - offset))] |= source[_along(axis, slice(offset, n))]
    else:
        target[_along(axis, slice(-offset, n))] |= source[_along(axis, slice(0, n + offset))]


def _any_in_window(mask: np.ndarray, first: int, last: int, axis: int) -> np.ndarray:
    """``out[i] = any(mask[i + first .. i + last])`` along ``axis``, over existing pixels only.

    Built by doubling (windows of length 1, 2, 4, ... OR-ed from shifted slices), so the cost
    grows with log2 of the window length; contiguous boolean slices are several times faster
    than a strided ``scipy.ndimage`` running maximum along the rows.
    """
    length = last - first + 1
    # Pad with False so that windows reaching beyond the edge see no extra pixel.
    margin = max(abs(first), abs(last))
    padded = np.pad(mask, _pad_width(axis, margin))
    # forward[p] = any(padded[p .. p + covered - 1]), assembled from the binary digits of length
    forward = np.zeros_like(padded)
    covered = 0
    block = padded
    block_length = 1
    while True:
        if length & block_length:
            _or_shifted(forward, block, covered, axis)
            covered += block_length
        if covered == length:
            break
        doubled = block.copy()
        _or_shifted(doubled, block, block_length, axis)
        block = doubled
        block_length *= 2
    start = margin + first
    return forward[_along(axis, slice(start, start + mask.shape[axis]))]


def _pad_width(axis: int, margin: int) -> list[tuple[int, int]]:
    """``numpy.pad`` width adding ``margin`` elements on both sides of ``axis`` only."""
    return [(margin, margin), (0, 0)] if axis == 0 else [(0, 0), (margin, margin)]


def _fails_test(residual, derivative, sigma, scale, snr, gain) -> np.ndarray:
    """``residual > scale * derivative + snr * sigma / gain`` (NaN never fails).

    Evaluated in AstroDrizzle's order of operations and precision so that the masks agree bit
    for bit at pixels that sit exactly on the threshold.
    """
    threshold = np.multiply(derivative, scale)
    noise_term = np.multiply(sigma, snr)
    if gain != 1.0:
        noise_term /= gain
    threshold += noise_term
    return np.greater(residual, threshold)


def detect_cosmic_rays(
    data,
    blot,
    *,
    noise: str = "detector",
    gain: float = 1.0,
    readnoise: float = 0.0,
    err=None,
    snr=(3.5, 3.0),
    scale=(1.2, 0.7),
    grow: int = 1,
    ctegrow: int = 0,
    readout_direction: int = 0,
    model_variance=None,
    no_seed=None,
) -> np.ndarray:
    """Flag cosmic rays in one chip by comparison with its blotted median.

    Parameters
    ----------
    data : array_like, 2-D
        The input chip, sky included (not sky-subtracted). Counts: electrons when ``gain`` is 1.
    blot : array_like, 2-D
        The median image blotted onto the chip, in the units of ``data`` and with the same sky
        level added back. NaN marks pixels without a model; they are never flagged.
    noise : {"detector", "err"}
        ``"detector"``: ``sigma = sqrt(gain * |blot| + readnoise**2) / gain`` (sky counted once,
        unlike AstroDrizzle's ``sqrt(gain * |blot + sky| + rn**2)`` which counts it twice).
        ``"err"``: ``sigma = err`` (JWST/stcal; NaN errors count as 0).
    gain : float
        Effective gain in electrons per unit of ``data`` (> 0); 1 for data in electrons.
        Used only by ``noise="detector"``.
    readnoise : float
        Read noise in electrons (>= 0). Used only by ``noise="detector"``.
    err : array_like, 2-D, optional
        One-sigma error of ``data`` in its units; required for ``noise="err"``.
    snr : str or pair of float
        Signal-to-noise thresholds of the first and second pass, such as ``"3.5 3.0"``.
    scale : str or pair of float
        Multipliers of the derivative image in the first and second pass, such as ``"1.2 0.7"``.
    grow : int
        Width in pixels of the box grown around every cosmic ray (>= 1); 1 = no growth.
    ctegrow : int
        Length in pixels of the charge-transfer trail flagged next to every cosmic ray along its
        column (>= 0); 0 = none.
    readout_direction : {-1, 0, 1}
        AstroDrizzle's ``cte_dir``: +1 grows trails towards lower row indices, -1 towards higher
        ones, 0 = unknown (then ``ctegrow > 0`` issues a :class:`CTEGrowthSkippedWarning` and
        grows nothing).
    model_variance : array_like or float, optional
        Variance of the blot itself (the median's own noise), in the units of ``data``
        squared; added to ``sigma**2``. None (AstroDrizzle and stcal) treats the blot as
        noiseless, although a median of a few exposures is not: see the module notes.
    no_seed : array_like of bool, optional
        Pixels whose first-pass failure does not open the second pass to their neighbours
        (True), e.g. pixels flagged bad in DQ (hot, warm, saturated): their excess is not a
        cosmic ray, so the lower second threshold should not search around them. They are
        still flagged themselves when they fail both passes. None (AstroDrizzle): every pixel
        seeds.

    Returns
    -------
    numpy.ndarray of bool
        Cosmic-ray mask of the chip's shape, True = cosmic ray.

    Raises
    ------
    ValueError
        For arrays of different shapes or not 2-D, an unknown noise model, ``noise="err"``
        without ``err``, ``snr``/``scale`` not holding two non-negative numbers, or invalid
        ``gain``, ``readnoise``, ``grow``, ``ctegrow`` or ``readout_direction``.

    Warns
    -----
    CTEGrowthSkippedWarning
        When ``ctegrow > 0`` and ``readout_direction == 0``.
    """
    snr1, snr2 = parse_pair(snr, "snr")
    scale1, scale2 = parse_pair(scale, "scale")
    for pair_name, pair in (("snr", (snr1, snr2)), ("scale", (scale1, scale2))):
        if min(pair) < 0:
            raise ValueError(f"{pair_name} values must be >= 0; got {pair}")
    if noise not in _NOISE_MODELS:
        raise ValueError(f"noise must be one of {_NOISE_MODELS}; got {noise!r}")
    grow = _as_int(grow, "grow", minimum=1)
    ctegrow = _as_int(ctegrow, "ctegrow", minimum=0)
    readout_direction = _as_int(readout_direction, "readout_direction", minimum=-1)
    if readout_direction not in (-1, 0, 1):
        raise ValueError(f"readout_direction must be -1, 0 or +1; got {readout_direction}")

    data = np.asarray(data)
    blot = np.asarray(blot)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-D image; got an array of shape {data.shape}")
    if blot.shape != data.shape:
        raise ValueError(f"blot shape {blot.shape} differs from data shape {data.shape}")

    if noise == "detector":
        gain = float(gain)
        readnoise = float(readnoise)
        if not (np.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a positive number (electrons per count); got {gain}")
        if not (np.isfinite(readnoise) and readnoise >= 0):
            raise ValueError(f"readnoise must be a number >= 0 (electrons); got {readnoise}")
        dtype = _working_dtype(data, blot)
        blot = blot.astype(dtype, copy=False)
        sigma = np.abs(blot)
        sigma *= gain
        sigma += readnoise**2
        np.sqrt(sigma, out=sigma)
        noise_divisor = gain
    else:
        if err is None:
            raise ValueError(
                'noise="err" needs the ERR array of the data (err=...); '
                'use noise="detector" with gain and readnoise when there is none'
            )
        err = np.asarray(err)
        if err.shape != data.shape:
            raise ValueError(f"err shape {err.shape} differs from data shape {data.shape}")
        dtype = _working_dtype(data, blot, err)
        blot = blot.astype(dtype, copy=False)
        sigma = np.nan_to_num(err.astype(dtype, copy=False), nan=0.0, copy=True)
        noise_divisor = 1.0

    if model_variance is not None:
        # sigma is in electrons (detector) or data units (err); the model's variance is in
        # data units squared, so scale it by the gain before adding.
        np.square(sigma, out=sigma)
        sigma += np.asarray(model_variance, dtype=dtype) * dtype.type(noise_divisor**2)
        np.sqrt(sigma, out=sigma)
    data = data.astype(dtype, copy=False)
    residual = np.subtract(data, blot)
    np.abs(residual, out=residual)
    derivative = derivative_image(blot)

    first_pass = _fails_test(residual, derivative, sigma, scale1, snr1, noise_divisor)
    second_pass = _fails_test(residual, derivative, sigma, scale2, snr2, noise_divisor)
    del residual, derivative, sigma
    seeds = first_pass
    if no_seed is not None:
        no_seed = np.asarray(no_seed, dtype=bool)
        if no_seed.shape != data.shape:
            raise ValueError(f"no_seed shape {no_seed.shape} differs from data shape {data.shape}")
        seeds = first_pass & ~no_seed
    cr_mask = second_pass & (_dilate_3x3(seeds) | first_pass)

    grown = cr_mask
    if grow > 1:
        grown = _any_in_window(cr_mask, -(grow // 2), (grow - 1) // 2, axis=0)
        grown = _any_in_window(grown, -(grow // 2), (grow - 1) // 2, axis=1)
    if ctegrow > 0:
        if readout_direction == 0:
            warnings.warn(
                f"ctegrow={ctegrow} was requested but the chip has no readout direction "
                "(readout_direction=0): CTE trails are not grown",
                CTEGrowthSkippedWarning,
                stacklevel=2,
            )
        else:
            first, last = (1, ctegrow) if readout_direction == 1 else (-ctegrow, -1)
            grown = grown | _any_in_window(cr_mask, first, last, axis=0)
    return np.ascontiguousarray(grown)


def _as_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming the parameter."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer; got {value!r}") from None
    if as_int != value:
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if as_int < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return as_int


def summarize_cr_mask(cr_mask, excluded=None) -> CRMaskSummary:
    """Number and fraction of pixels flagged as cosmic rays.

    Parameters
    ----------
    cr_mask : array_like of bool
        Cosmic-ray mask, True = cosmic ray.
    excluded : array_like of bool, optional
        Pixels left out of both counts (True = excluded), for example pixels without data.

    Returns
    -------
    CRMaskSummary
        ``(n_flagged, n_pixels, fraction)``.
    """
    cr_mask = np.asarray(cr_mask, dtype=bool)
    if excluded is None:
        n_pixels = cr_mask.size
        n_flagged = int(np.count_nonzero(cr_mask))
    else:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != cr_mask.shape:
            raise ValueError(
                f"excluded shape {excluded.shape} differs from cr_mask shape {cr_mask.shape}"
            )
        n_pixels = cr_mask.size - int(np.count_nonzero(excluded))
        n_flagged = int(np.count_nonzero(cr_mask & ~excluded))
    fraction = n_flagged / n_pixels if n_pixels else 0.0
    return CRMaskSummary(n_flagged=n_flagged, n_pixels=n_pixels, fraction=fraction)
