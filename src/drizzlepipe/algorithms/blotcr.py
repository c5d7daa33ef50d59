"""Blot the median onto a chip and find the chip's cosmic rays: AstroDrizzle's ``blot`` and
``driz_cr`` for one chip, a band of rows at a time.

The median (a rate per output pixel, e.g. electrons/s) is interpolated at the chip's pixel
centres (:func:`~drizzlepipe.algorithms.blot.blot`), converted to the chip's units with
``blot_iscale`` and given the chip's sky back, and compared with the chip's data, sky included,
by the two-pass test of :func:`~drizzlepipe.algorithms.crdetect.detect_cosmic_rays` in
electrons (counts). Pixels whose nearest median pixel had no good value (a hole of the median,
or outside it) are never flagged.

The median's own noise (``median_noise``): a median of ``n`` exposures is itself noisy, with
variance ``(pi / 2) sigma**2 / n`` (``sigma**2 / n`` for the mean of two), where ``n`` is the
median's total weight over the chip's exposure time; that variance is added to the test's noise
when the median's weight map is given (AstroDrizzle counts none).

Each band of :data:`BAND_ROWS` rows is processed with ``2 + grow + ctegrow`` extra rows on
either side, so the mask equals that of the whole chip at once (the derivative and the 3 x 3
neighbourhood of the first pass reach 2 rows, the grown box ``grow // 2`` and the CTE trail
``ctegrow`` more), while the temporaries stay those of a band.

Masks are boolean, True = cosmic ray.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .blot import blot, fill_hole_rows, sample_nearest
from .crdetect import CTEGrowthSkippedWarning, detect_cosmic_rays
from .pixmap import PixmapRows

__all__ = [
    "BAND_ROWS",
    "BlotMedian",
    "MedianPreparation",
    "ChipScaling",
    "CosmicRayTest",
    "CosmicRayResult",
    "blot_and_detect",
    "median_variance",
    "unpack_mask",
]

log = logging.getLogger(__name__)

#: Chip rows blotted and checked at a time: a band's temporaries (pixel map, blot, noise,
#: residual, derivative, masks: ~70 bytes a pixel) stay ~70 MB for a 4096-pixel-wide chip
#: instead of ~600 MB for the whole chip (the pixel map's buffer is reused from band to band).
BAND_ROWS = 256


@dataclass(frozen=True)
class CosmicRayTest:
    """How cosmic rays are found (the parameters of BlotCR).

    Attributes
    ----------
    snr, scale : tuple of float
        Signal-to-noise thresholds and blot-derivative multipliers of the two passes.
    grow, ctegrow : int
        Box grown around each cosmic ray (1 = none); pixels flagged along the readout.
    noise : {"detector", "err"}
        Noise model: gain and read noise, or the chip's ERR array.
    interp : str
        Blot interpolant (``nearest``, ``linear``, ``poly3``, ``poly5``, ``lan3``, ``lan5``).
    sinscl : float
        Sinc scale of the Lanczos interpolants.
    stepsize : int
        WCS evaluation step of the pixel map [pixels].
    """

    snr: tuple
    scale: tuple
    grow: int = 1
    ctegrow: int = 0
    noise: str = "detector"
    interp: str = "poly5"
    sinscl: float = 1.0
    stepsize: int = 10


@dataclass(frozen=True)
class ChipScaling:
    """The median in one chip's units, and the chip's units in electrons.

    Attributes
    ----------
    blot_iscale : float
        Median (rate per output pixel) -> the chip's data units per chip pixel.
    sky : float
        The chip's sky in its data units, added to the blot.
    to_counts : float
        The chip's data units -> electrons (counts).
    exptime : float
        Exposure time [s]: the median's weight (seconds) over it is the number of exposures.
    readnoise : float
        Read noise [electrons].
    readout_direction : int
        Readout axis for ``ctegrow`` (0: none).
    """

    blot_iscale: float
    sky: float
    to_counts: float
    exptime: float = 1.0
    readnoise: float = 0.0
    readout_direction: int = 0


@dataclass
class BlotMedian:
    """The median prepared for blotting every chip.

    Attributes
    ----------
    filled : numpy.ndarray
        The median (rate per output pixel) with its holes filled from their neighbours (the
        interpolants need values around every position).
    holes : numpy.ndarray or None
        float32, 1 where the median had no good value (None: no holes, or carried by
        ``weight``).
    weight : numpy.ndarray or None
        The singles' total weight [s] for the median's noise, -1 at the holes when
        ``holes_in_weight``; None: the median's noise is not counted.
    holes_in_weight : bool
        Whether ``weight`` carries the holes (one array looked up per chip pixel instead of
        two: the lookups are cache misses).
    wcs : object
        The median's WCS.
    """

    filled: np.ndarray
    holes: np.ndarray | None
    weight: np.ndarray | None
    holes_in_weight: bool
    wcs: Any

    @classmethod
    def prepare(cls, median, wcs, weight=None):
        """Fill the holes (NaN) of ``median``; ``weight``: the singles' total weight [s]
        behind every median pixel, to count the median's own noise (None: not counted).
        (:class:`MedianPreparation` does the same a band of rows at a time.)"""
        preparation = MedianPreparation(median, weight)
        arrays = {
            name: np.empty(median.shape, dtype) for name, dtype in preparation.outputs.items()
        }
        n_holes = preparation(0, median.shape[0], arrays)
        return preparation.result(arrays, n_holes, wcs)


@dataclass
class MedianPreparation:
    """The arrays of :meth:`BlotMedian.prepare`, filled a band of rows at a time (the same
    values whichever bands): ``filled`` (the median with its holes filled, see
    :func:`~drizzlepipe.algorithms.blot.fill_hole_rows`) and ``weight`` (-1 at the holes)
    or, without a weight, ``holes`` (1.0 at the holes)."""

    median: np.ndarray  # float32, NaN at the holes
    weight: np.ndarray | None

    @property
    def outputs(self):
        """``{name: dtype}`` of the arrays to fill."""
        return {"filled": np.float32, "weight" if self.weight is not None else "holes": np.float32}

    def __call__(self, start, stop, arrays):
        """Fill rows ``[start, stop)`` of ``arrays``; returns how many holes they hold."""
        holes = fill_hole_rows(self.median, start, stop, arrays["filled"])
        if self.weight is not None:
            np.copyto(arrays["weight"][start:stop], self.weight[start:stop], casting="unsafe")
            arrays["weight"][start:stop][holes] = -1.0
        else:
            np.copyto(arrays["holes"][start:stop], holes)
        return int(np.count_nonzero(holes))

    def result(self, arrays, n_holes, wcs):
        """The :class:`BlotMedian` of the filled ``arrays`` (``n_holes`` in all)."""
        if self.weight is not None:
            return BlotMedian(arrays["filled"], None, arrays["weight"], n_holes > 0, wcs)
        return BlotMedian(arrays["filled"], arrays["holes"] if n_holes else None, None, False, wcs)


@dataclass
class CosmicRayResult:
    """Cosmic-ray mask of a chip (bit-packed), the blot when asked for, and warnings to log."""

    packed_mask: np.ndarray | None  # None: no chip pixel had median data (nothing checked)
    shape: tuple
    n_flagged: int
    blotted: np.ndarray | None = None
    warnings: list = field(default_factory=list)

    def mask(self):
        """The boolean cosmic-ray mask (True = cosmic ray)."""
        if self.packed_mask is None:
            return np.zeros(self.shape, dtype=bool)
        return unpack_mask(self.packed_mask, self.shape)


def unpack_mask(packed, shape):
    """The boolean mask of ``shape`` that ``numpy.packbits(mask, axis=None)`` packed."""
    size = int(np.prod(shape))
    return np.unpackbits(packed, count=size).reshape(shape).view(bool)


def median_variance(pixel_variance, n_exposures):
    """Variance of a median of ``n`` exposures whose pixels have ``pixel_variance`` each.

    ``(pi / 2) sigma**2 / n`` for a median of n >= 3 values (asymptotic efficiency of the
    median), ``sigma**2 / n`` for the mean of two (n is the exposures' total weight over one
    exposure's, so it need not be an integer).
    """
    n = np.maximum(n_exposures, 1.0)
    factor = (np.where(n >= 3, np.pi / 2, 1.0) / n).astype(np.float32)
    return pixel_variance * factor


def _band_rows(test):
    """Rows per band and the margin each band is given."""
    halo = 2 + test.grow + test.ctegrow
    return max(BAND_ROWS, 4 * halo), halo


def blot_and_detect(
    data, wcs, median, scaling, test, *, err=None, no_seed=None, keep_blot=False, label=None
):
    """Blot the median onto one chip and find its cosmic rays.

    Parameters
    ----------
    data : numpy.ndarray
        The chip's data in its own units, sky included (2-D).
    wcs : object
        The chip's WCS.
    median : BlotMedian
        The median, prepared.
    scaling : ChipScaling
        The chip's units.
    test : CosmicRayTest
        The detection's parameters.
    err : numpy.ndarray, optional
        The chip's ERR in its data units (``noise='err'``).
    no_seed : numpy.ndarray of bool, optional
        Pixels that cannot seed a cosmic ray (flagged bad in DQ), see
        :func:`~drizzlepipe.algorithms.crdetect.detect_cosmic_rays`.
    keep_blot : bool
        Also return the blotted median (chip units, sky included; NaN where not checked).
    label : str, optional
        The chip's name for the log.

    Returns
    -------
    CosmicRayResult
    """
    ny, nx = data.shape
    band, halo = _band_rows(test)
    positions = PixmapRows(wcs, data.shape, median.wcs, stepsize=test.stepsize)
    pixmap_buffer = np.empty((min(ny, band + 2 * halo), nx, 2), dtype=np.float64)
    # the Lanczos interpolants normalise by a blot of ones: one array for all bands
    ones = np.ones_like(median.filled) if test.interp.startswith("lan") else None
    cr_mask = np.zeros(data.shape, dtype=bool)
    blotted_chip = np.full(data.shape, np.nan, np.float32) if keep_blot else None
    checked = False
    messages = []
    for first in range(0, ny, band):
        last = min(ny, first + band)
        low, high = max(0, first - halo), min(ny, last + halo)
        pixmap = positions.rows(low, high, out=pixmap_buffer)
        blotted, n_exposures = _blot_band(median, scaling, test, pixmap, ones)
        inner = slice(first - low, last - low)
        if blotted_chip is not None:
            blotted_chip[first:last] = blotted[inner]
        if not np.isfinite(blotted).any():
            continue  # no median data near these rows: nothing to check (NaN is never flagged)
        checked = True
        band_err = err[low:high] if err is not None else None
        band_no_seed = no_seed[low:high] if no_seed is not None else None
        mask, caught = _detect_band(
            data[low:high], blotted, band_err, band_no_seed, n_exposures, scaling, test
        )
        cr_mask[first:last] = mask[inner]
        messages.extend(message for message in caught if message not in messages)
    if not checked:
        return CosmicRayResult(None, data.shape, -1, blotted_chip)
    log.debug("Checked %s for cosmic rays", label or "a chip")
    return CosmicRayResult(
        packed_mask=np.packbits(cr_mask, axis=None),
        shape=data.shape,
        n_flagged=int(np.count_nonzero(cr_mask)),
        blotted=blotted_chip,
        warnings=messages,
    )


def _blot_band(median, scaling, test, pixmap, ones):
    """The median blotted onto a band of chip rows (chip units, sky added, NaN where the
    nearest median pixel had no data), and the exposures behind every pixel (or None)."""
    blotted = blot(
        median.filled,
        pixmap,
        interp=test.interp,
        sinscl=test.sinscl,
        iscale=scaling.blot_iscale,
        fill_value=np.nan,
        ones=ones,
    )
    # Chip pixels whose nearest median pixel had no data are not checked; the exposures
    # behind each blotted pixel are the median's total weight over this chip's exposure time.
    # Outside the median a position is a hole: 1 in the holes' map, -1 in a weight carrying them.
    lookups = [(median.holes, 1.0), (median.weight, -1.0 if median.holes_in_weight else 0.0)]
    lookups = [(image, fill) for image, fill in lookups if image is not None]
    values = []
    if lookups:
        images, fills = zip(*lookups)
        values = sample_nearest(list(images), pixmap, list(fills))
    if median.holes is not None:
        blotted[values.pop(0) > 0.5] = np.nan
    n_exposures = None
    if median.weight is not None:
        weight = values.pop(0)
        if median.holes_in_weight:
            blotted[weight < 0] = np.nan
            np.maximum(weight, 0, out=weight)
        n_exposures = weight / np.float32(scaling.exptime)
    blotted += np.float32(scaling.sky)
    return blotted, n_exposures


def _detect_band(data, blotted, err, no_seed, n_exposures, scaling, test):
    """Cosmic-ray mask of a band (in electrons) and the warnings raised."""
    counts = np.float32(scaling.to_counts)
    err = err * counts if err is not None else None
    model_variance = None
    if n_exposures is not None:
        # one exposure's pixel variance: ERR**2, or the detector model of the blot
        if err is not None:
            pixel_variance = np.square(np.nan_to_num(err))
        else:
            pixel_variance = np.abs(blotted * counts) + np.float32(scaling.readnoise**2)
        model_variance = median_variance(pixel_variance, n_exposures)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CTEGrowthSkippedWarning)
        mask = detect_cosmic_rays(
            data * counts,
            blotted * counts,
            noise=test.noise,
            gain=1.0,
            readnoise=scaling.readnoise,
            err=err,
            snr=test.snr,
            scale=test.scale,
            grow=test.grow,
            ctegrow=test.ctegrow,
            readout_direction=scaling.readout_direction,
            model_variance=model_variance,
            no_seed=no_seed,
        )
    return mask, [str(warning.message) for warning in caught]
