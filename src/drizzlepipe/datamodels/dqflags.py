"""Data-quality flag definitions and ``good_bits`` handling for HST and JWST data.

``good_bits`` follows AstroDrizzle and the JWST pipeline: an integer or a string such as
``"4+8"``, ``"4,8"``, ``"~DO_NOT_USE+NON_SCIENCE"`` (``~`` = the listed bits are the *bad*
ones) or flag names; ``None`` ignores DQ altogether. A pixel is good when
``(dq & ~good_bits) == 0``. Masks returned here follow the package convention: True = bad.
"""

from __future__ import annotations

import numpy as np
from astropy.nddata.bitmask import interpret_bit_flags

__all__ = [
    "HST_FLAGS",
    "JWST_FLAGS",
    "flag_map",
    "interpret_good_bits",
    "bad_pixel_mask",
    "any_bits_set",
    "default_crbit",
    "resetbits_value",
]

#: HST (ACS/WFC3/STIS) DQ bits, from the instrument handbooks' DQ tables.
HST_FLAGS = {
    "GOOD": 0,
    "SOFTERR": 1,  # Reed-Solomon decoding error
    "DATALOST": 2,  # data replaced by fill value
    "DETECTORPROB": 4,  # bad detector pixel
    "DATAMASKED": 8,  # masked by occulting finger / unstable
    "HOTPIX": 16,
    "CTETAIL": 32,  # CTE tail / warm pixel
    "WARMPIX": 64,
    "BADBIAS": 128,
    "SATPIXEL": 256,
    "BADFLAT": 512,
    "TRAP": 1024,  # charge trap / spike
    "ATODSAT": 2048,
    "CR": 4096,  # cosmic ray found by (astro)drizzle
    "CRREJECT": 8192,  # cosmic ray found by the calibration pipeline
    "CROSSTALK": 16384,
}

#: JWST DQ bits (stdatamodels.jwst.datamodels.dqflags).
JWST_FLAGS = {
    "GOOD": 0,
    "DO_NOT_USE": 1,
    "SATURATED": 2,
    "JUMP_DET": 4,
    "DROPOUT": 8,
    "OUTLIER": 16,
    "PERSISTENCE": 32,
    "AD_FLOOR": 64,
    "CHARGELOSS": 128,
    "UNRELIABLE_ERROR": 256,
    "NON_SCIENCE": 512,
    "DEAD": 1024,
    "HOT": 2048,
    "WARM": 4096,
    "LOW_QE": 8192,
    "RC": 16384,
    "TELEGRAPH": 32768,
    "NONLINEAR": 65536,
    "BAD_REF_PIXEL": 131072,
    "NO_FLAT_FIELD": 262144,
    "NO_GAIN_VALUE": 524288,
    "NO_LIN_CORR": 1048576,
    "NO_SAT_CHECK": 2097152,
    "UNRELIABLE_BIAS": 4194304,
    "UNRELIABLE_DARK": 8388608,
    "UNRELIABLE_SLOPE": 16777216,
    "UNRELIABLE_FLAT": 33554432,
    "OPEN": 67108864,
    "ADJ_OPEN": 134217728,
    "FLUX_ESTIMATED": 268435456,
    "MSA_FAILED_OPEN": 536870912,
    "OTHER_BAD_PIXEL": 1073741824,
    "REFERENCE_PIXEL": 2147483648,
}


def flag_map(convention):
    """Return the name -> bit mapping for ``convention`` (``"hst"``, ``"jwst"`` or ``"none"``)."""
    return {"hst": HST_FLAGS, "jwst": JWST_FLAGS}.get(convention, HST_FLAGS)


def default_crbit(convention):
    """DQ value written for cosmic rays: 4096 for HST data, OUTLIER|DO_NOT_USE for JWST."""
    if convention == "jwst":
        return JWST_FLAGS["OUTLIER"] | JWST_FLAGS["DO_NOT_USE"]
    return HST_FLAGS["CR"]


def resetbits_value(resetbits, convention="hst"):
    """The DQ bits to clear before processing (AstroDrizzle's ``resetbits``), as an int.

    Parameters
    ----------
    resetbits : int, str or None
        ``"auto"``: the cosmic-ray bit an earlier drizzle run left (4096) for HST-convention
        data, nothing for JWST data (whose 4096 is WARM and whose OUTLIER flags are not
        ours to drop); None, ``"0"`` or ``"none"``: nothing; else bits as ``"4096+8192"`` or
        flag names of ``convention``.
    convention : str
        ``"hst"`` or ``"jwst"``.

    Returns
    -------
    int
    """
    if resetbits is None:
        return 0
    if isinstance(resetbits, str) and resetbits.strip().lower() == "auto":
        return 0 if convention == "jwst" else HST_FLAGS["CR"]
    bits = interpret_good_bits(resetbits, convention)
    return int(bits or 0)


def interpret_good_bits(good_bits, convention="hst"):
    """Turn a ``good_bits`` specification into an integer of good bits, or None (ignore DQ).

    Parameters
    ----------
    good_bits : int, str or None
        ``"4+8"``, ``"4,8"``, ``"~4"``, ``"~DO_NOT_USE"``, names of ``convention``'s flags,
        an int, or None / ``"None"`` / ``"INDEF"`` to ignore DQ.
    convention : str
        ``"hst"`` or ``"jwst"``: which flag names are understood.

    Returns
    -------
    int or None
        The bits that do not make a pixel bad; None means every pixel is good.
    """
    if isinstance(good_bits, str) and good_bits.strip().upper() in ("", "NONE", "INDEF"):
        return None
    if good_bits is None:
        return None
    try:
        value = interpret_bit_flags(good_bits, flag_name_map=flag_map(convention))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cannot interpret good_bits={good_bits!r}: {exc}") from None
    return None if value is None else int(value) & 0xFFFFFFFF


def bad_pixel_mask(dq, good_bits, convention="hst"):
    """Boolean mask, True where a DQ bit outside ``good_bits`` is set.

    Parameters
    ----------
    dq : ndarray of int
        Data-quality array (any integer type).
    good_bits : int, str or None
        See :func:`interpret_good_bits`; None marks nothing bad.
    convention : str
        ``"hst"`` or ``"jwst"`` flag names.

    Returns
    -------
    ndarray of bool
        True = bad pixel.
    """
    bits = interpret_good_bits(good_bits, convention)
    dq = np.asarray(dq)
    if bits is None:
        return np.zeros(dq.shape, dtype=bool)
    return any_bits_set(dq, ~bits & 0xFFFFFFFF)


#: Pixels per block of :func:`any_bits_set`: its temporary stays in the CPU's cache.
_BLOCK_PIXELS = 1 << 16


def any_bits_set(dq, bits):
    """Boolean mask, True where ``dq`` has any of ``bits`` set.

    Evaluated a block of rows at a time: ``dq & bits`` of a whole chip would be a temporary
    as large as the DQ (33 MB for a UVIS chip), new memory every time, for a bool result a
    quarter of that size.

    Parameters
    ----------
    dq : ndarray of int
        Data-quality array (any unsigned or non-negative integer type).
    bits : int
        The bits to look for (0-0xFFFFFFFF).

    Returns
    -------
    ndarray of bool
        Of the shape of ``dq``.
    """
    dq = np.asarray(dq)
    bits = int(bits) & 0xFFFFFFFF
    if dq.dtype.kind == "u" and bits & int(np.iinfo(dq.dtype).max) == np.iinfo(dq.dtype).max:
        return dq != 0  # every bit the type can hold counts
    mask = np.empty(dq.shape, dtype=bool)
    if dq.ndim == 0 or dq.size == 0:
        mask[...] = (dq.astype(np.uint32) & np.uint32(bits)) != 0
        return mask
    rows = dq.reshape(-1, dq.shape[-1]) if dq.ndim > 1 else dq.reshape(1, -1)
    out = mask.reshape(rows.shape)
    step = max(1, _BLOCK_PIXELS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step].astype(np.uint32, copy=False)
        np.not_equal(np.bitwise_and(block, np.uint32(bits)), 0, out=out[start : start + step])
    return mask
