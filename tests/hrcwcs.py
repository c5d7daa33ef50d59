"""A real distorted HST WCS for tests: the ACS/HRC SIP solution of j8bt06nyq (47 Tuc),
copied from its header so tests need nothing outside the repository."""

from __future__ import annotations

import math

from astropy.io import fits
from astropy.wcs import WCS

HRC_SHAPE = (1024, 1024)
HRC_IDCSCALE = 0.025
HRC_SIP_HEADER = {
    "CRPIX1": 512.0,
    "CRPIX2": 512.0,
    "CRVAL1": 6.027148333333,
    "CRVAL2": -72.08351111111,
    "CTYPE1": "RA---TAN-SIP",
    "CTYPE2": "DEC--TAN-SIP",
    "CD1_1": -7.3535609772738e-06,
    "CD1_2": 1.85500817048893e-06,
    "CD2_1": 2.88105626539018e-06,
    "CD2_2": 6.6471909391056e-06,
    "A_ORDER": 4,
    "B_ORDER": 4,
    "A_0_2": -7.0889395968097e-07,
    "A_0_3": -1.8815236170312e-11,
    "A_0_4": 3.52663128667526e-14,
    "A_1_1": 9.01865480733676e-06,
    "A_1_2": 4.10095454377589e-10,
    "A_1_3": -1.8416520384227e-13,
    "A_2_0": -3.3163602099644e-06,
    "A_2_1": -2.9240036454705e-11,
    "A_2_2": -1.3458234665785e-12,
    "A_3_0": 9.65774472432314e-11,
    "A_3_1": -2.2242752420711e-12,
    "A_4_0": 3.23745227404317e-13,
    "B_0_2": 1.1507696520549e-05,
    "B_0_3": 7.3589451602895e-10,
    "B_0_4": -1.2780970907036e-12,
    "B_1_1": -2.6697404172385e-06,
    "B_1_2": -6.3116444335245e-10,
    "B_1_3": -5.3932063162612e-13,
    "B_2_0": 2.00059877639217e-06,
    "B_2_1": 3.02073232258143e-10,
    "B_2_2": 9.93387657260949e-13,
    "B_3_0": 4.48761161830502e-10,
    "B_3_1": -1.306503280771e-12,
    "B_4_0": 2.66823917315528e-13,
}


def hrc_wcs(crval_shift_arcsec=(0.0, 0.0)):
    """The HRC chip's astropy WCS (TAN-SIP), optionally shifted on the sky by (dRA, dDec)."""
    header = fits.Header(HRC_SIP_HEADER)
    header["CRVAL1"] += crval_shift_arcsec[0] / 3600 / math.cos(math.radians(header["CRVAL2"]))
    header["CRVAL2"] += crval_shift_arcsec[1] / 3600
    wcs = WCS(header)
    wcs.pixel_shape = HRC_SHAPE[::-1]
    return wcs
