"""Static mask: pixels far below the sky in any exposure, one mask per detector chip position.

AstroDrizzle's StaticMask step (``drizzlepac/staticMask.py``) flags pixels that are anomalously low
(dead or strongly negative pixels, bad columns) so that they do not drag down the sky estimate or
the drizzled images. For every exposure and chip, with ``x`` the raw science array (sky not
subtracted):

1. ``mode`` and ``sigma`` come from ``ImageStats(x, nclip=3, lsig=3, usig=3, binwidth=0.1)``
   (:func:`~drizzlepipe.algorithms.stats.imagestats`; sigma is the clipped standard deviation);
2. a pixel is bad when ``x < mode - static_sig * sigma`` (``static_sig`` = 4 by default);
3. the masks of all exposures taken at the same chip position (same detector chip and shape,
   AstroDrizzle's "signature") are OR-ed: a pixel low in *any* exposure is bad in all of them.

The threshold is compared in float32, like AstroDrizzle, and nothing is flagged when the histogram
behind the mode has a single bin (AstroDrizzle's ``nbins >= 2`` condition, e.g. a constant image).

Differences from AstroDrizzle (fixes):

* NaN/inf pixels are ignored by the statistics (AstroDrizzle's ``lower=nanmin(x)`` trick aside,
  ``ImageStats`` handles NaN badly) and are *not* flagged here: their bad-pixel status belongs to
  the DQ array, and a NaN compares false with the threshold in AstroDrizzle as well.
* A chip without any finite pixel gets an all-good mask and an undefined threshold (None)
  instead of an exception.
* Optional ``mask`` (True = bad) excludes known-bad pixels from the statistics; AstroDrizzle uses
  every pixel (pass ``mask=None`` for identical results).

Masks here are boolean with True = bad (AstroDrizzle's file stores 1 = good).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from drizzlepipe.algorithms.stats import imagestats

__all__ = [
    "DEFAULT_STATIC_SIG",
    "StaticMasks",
    "build_static_masks",
    "chip_static_mask",
    "combine_static_masks",
    "low_pixel_threshold",
]

#: AstroDrizzle's ``static_sig``: clip level in sigma below the mode.
DEFAULT_STATIC_SIG = 4.0
# AstroDrizzle's fixed ImageStats settings for the static mask (staticMask.py:277-283).
_NCLIP = 3
_LSIGMA = 3.0
_USIGMA = 3.0
_BINWIDTH = 0.1


def low_pixel_threshold(
    data, mask=None, *, static_sig: float = DEFAULT_STATIC_SIG, binwidth: float = _BINWIDTH
) -> float | None:
    """Value below which a pixel of this chip is flagged: ``mode - static_sig * sigma``.

    Parameters
    ----------
    data : array_like
        Raw science array of one chip (any units; sky not subtracted).
    mask : array_like of bool, optional
        True = exclude from the statistics (AstroDrizzle: None).
    static_sig : float
        Clip level in sigma below the mode (must be positive).
    binwidth : float
        Histogram bin width in sigma for the mode.

    Returns
    -------
    float or None
        The threshold in data units, or None when it is undefined (no finite pixel, or a
        one-bin histogram such as a constant image).
    """
    if not static_sig > 0:
        raise ValueError(f"static_sig must be positive, got {static_sig!r}")
    stats = imagestats(
        data,
        mask,
        nclip=_NCLIP,
        lsigma=_LSIGMA,
        usigma=_USIGMA,
        binwidth=binwidth,
        fields=("mode",),
    )
    if stats.npix == 0 or stats.nbins < 2:
        return None
    return stats.mode - static_sig * stats.stddev


def chip_static_mask(
    data, mask=None, *, static_sig: float = DEFAULT_STATIC_SIG, binwidth: float = _BINWIDTH
) -> np.ndarray:
    """Bad-pixel mask (True = bad) of one chip of one exposure.

    Parameters
    ----------
    data : array_like
        Raw science array of the chip (2-D).
    mask : array_like of bool, optional
        True = exclude from the statistics; such pixels can still be flagged if low.
    static_sig : float
        Clip level in sigma below the mode.
    binwidth : float
        Histogram bin width in sigma for the mode.

    Returns
    -------
    numpy.ndarray of bool
        Same shape as ``data``; True where ``data < mode - static_sig * sigma``.
    """
    values = np.asarray(data, dtype=np.float32)
    threshold = low_pixel_threshold(values, mask, static_sig=static_sig, binwidth=binwidth)
    if threshold is None:
        return np.zeros(values.shape, dtype=bool)
    # AstroDrizzle compares the float32 array with a Python float, i.e. in float32 (NumPy >= 2)
    return values < np.float32(threshold)


def combine_static_masks(masks: Iterable[np.ndarray]) -> np.ndarray:
    """OR of the static masks of several exposures of one chip position.

    Parameters
    ----------
    masks : iterable of numpy.ndarray of bool
        Masks (True = bad) of equal shape.

    Returns
    -------
    numpy.ndarray of bool
        True where any input is True.
    """
    combined = None
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if combined is None:
            combined = mask.copy()
        elif mask.shape != combined.shape:
            raise ValueError(f"static masks differ in shape: {mask.shape} vs {combined.shape}")
        else:
            combined |= mask
    if combined is None:
        raise ValueError("no static mask to combine")
    return combined


@dataclass(frozen=True)
class StaticMasks:
    """Result of :func:`build_static_masks`.

    Attributes
    ----------
    masks : dict
        Chip position key -> combined mask (numpy bool array, True = bad).
    thresholds : tuple of (float or None)
        Per input chip, in input order, the threshold used (None: undefined, nothing flagged).
    """

    masks: dict
    thresholds: tuple


def build_static_masks(
    chips: Iterable[tuple[Hashable, np.ndarray, np.ndarray | None]],
    *,
    static_sig: float = DEFAULT_STATIC_SIG,
    binwidth: float = _BINWIDTH,
    map_=map,
) -> StaticMasks:
    """One static mask per chip position, OR-ed over all exposures.

    With the built-in ``map``, chips are consumed one at a time, so at most one chip and one
    mask per position are held in memory; a chip's data is let go once its threshold is
    measured (its low pixels, a boolean mask, wait for the combination).

    Parameters
    ----------
    chips : iterable of (key, data, mask)
        ``key`` identifies the chip position (e.g. detector and chip number, or AstroDrizzle's
        ``(shape, extver)`` signature); ``data`` is the raw 2-D science array; ``mask``
        (True = bad, or None) excludes pixels from the statistics.
    static_sig : float
        Clip level in sigma below the mode.
    binwidth : float
        Histogram bin width in sigma for the mode.
    map_ : callable, optional
        ``map``-like function that measures the chips' thresholds, e.g. a thread pool's (the
        sort behind the statistics releases the GIL); it may consume all ``chips`` at once.

    Returns
    -------
    StaticMasks
        Combined masks by key and the threshold of every input chip.
    """

    def measure(chip):
        # the chip's pixels below its threshold: 1 byte a pixel waits for the combination,
        # not the chip's data
        key, data, mask = chip
        values = np.asarray(data, dtype=np.float32)
        threshold = low_pixel_threshold(values, mask, static_sig=static_sig, binwidth=binwidth)
        low = values < np.float32(threshold) if threshold is not None else None
        return key, values.shape, low, threshold

    masks: dict = {}
    thresholds = []
    for key, shape, low, threshold in map_(measure, chips):
        thresholds.append(threshold)
        if key in masks and masks[key].shape != shape:
            raise ValueError(
                f"chip position {key!r} has data of shape {shape} and "
                f"{masks[key].shape}; one position must have one shape"
            )
        combined = masks.setdefault(key, np.zeros(shape, dtype=bool))
        if low is not None:
            combined |= low
    return StaticMasks(masks=masks, thresholds=tuple(thresholds))
