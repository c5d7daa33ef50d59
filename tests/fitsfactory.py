"""Small synthetic input files for reader and library tests (HST FLT-like, JWST, plain FITS).

These are deliberately tiny and built directly with astropy, independently of drizzlepipe's
own simulator, so reader tests do not depend on the code they check.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, DistortionLookupTable


def tan_sip_header(shape, crval=(150.1, 2.2), scale_arcsec=0.04, rotation_deg=20.0, sip=True):
    """A TAN(-SIP) header dict for a chip of ``shape`` (ny, nx) with a CD matrix."""
    ny, nx = shape
    theta = np.deg2rad(rotation_deg)
    s = scale_arcsec / 3600.0
    header = {
        "CTYPE1": "RA---TAN-SIP" if sip else "RA---TAN",
        "CTYPE2": "DEC--TAN-SIP" if sip else "DEC--TAN",
        "CRPIX1": (nx + 1) / 2.0,
        "CRPIX2": (ny + 1) / 2.0,
        "CRVAL1": crval[0],
        "CRVAL2": crval[1],
        "CD1_1": -s * np.cos(theta),
        "CD1_2": s * np.sin(theta),
        "CD2_1": s * np.sin(theta),
        "CD2_2": s * np.cos(theta),
    }
    if sip:
        header.update(
            A_ORDER=2, B_ORDER=2, A_2_0=2.0e-6, A_1_1=-1.5e-6, A_0_2=1.0e-6,
            B_2_0=-1.0e-6, B_1_1=2.5e-6, B_0_2=1.5e-6,
        )  # fmt: skip
    return header


def lookup_distortion(shape, amplitude=0.3):
    """NPOL-like (cpdis) and D2IM-like (det2im) lookup tables of a few tenths of a pixel."""
    ny, nx = shape
    yy, xx = np.mgrid[0:5, 0:6].astype(np.float32)
    table_x = (amplitude * np.sin(xx / 2.0) * np.cos(yy / 3.0)).astype(np.float32)
    table_y = (amplitude * np.cos(xx / 3.0) * np.sin(yy / 2.0)).astype(np.float32)
    step = ((nx - 1) / 5.0, (ny - 1) / 4.0)
    cpdis1 = DistortionLookupTable(table_x, (1.0, 1.0), (1.0, 1.0), step)
    cpdis2 = DistortionLookupTable(table_y, (1.0, 1.0), (1.0, 1.0), step)
    d2im_table = (0.1 * np.sin(np.arange(nx, dtype=np.float32) / 4.0)).reshape(1, nx)
    det2im1 = DistortionLookupTable(d2im_table.astype(np.float32), (1.0, 1.0), (1.0, 1.0), (1, 1))
    return cpdis1, cpdis2, det2im1


def make_hst_flt(
    path,
    *,
    shape=(40, 50),
    chips=2,
    rootname="jtest01aq",
    exptime=100.0,
    bunit="ELECTRONS",
    instrument="WFC3",
    detector="UVIS",
    lookup=False,
    seed=0,
    constant_dq=False,
    crval=(150.1, 2.2),
):
    """Write an HST FLT-like file (PRIMARY + SCI/ERR/DQ per chip) and return its arrays."""
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    h = primary.header
    h["TELESCOP"] = "HST"
    h["INSTRUME"] = instrument
    h["DETECTOR"] = detector
    h["ROOTNAME"] = rootname
    h["FILTER"] = "F606W"
    h["PA_V3"] = 20.0
    if exptime is not None:
        h["EXPTIME"] = exptime
    h["EXPSTART"] = 60000.0
    h["EXPEND"] = 60000.0 + (exptime or 0.0) / 86400.0
    for amp, gain, noise in zip("ABCD", (1.5, 1.6, 0.0, 1.7), (3.0, 3.2, 0.0, 3.4)):
        h[f"ATODGN{amp}"] = gain
        h[f"READNSE{amp}"] = noise
    hdus = [primary]
    arrays = []
    for chip in range(1, chips + 1):
        sci = (rng.normal(100.0, 5.0, shape)).astype(np.float32)
        err = np.full(shape, 5.0, np.float32) + rng.random(shape).astype(np.float32)
        dq = np.zeros(shape, np.int16)
        dq[3, 4] = 16
        dq[5, :] = 4
        dq[7, 7] = np.int16(-32768)  # bit 15 set: must not sign-extend
        offset_dec = (chip - 1) * shape[0] * 0.04 / 3600.0
        wcs_header = tan_sip_header(shape, crval=(crval[0], crval[1] + offset_dec))
        sci_hdu = fits.ImageHDU(sci, name="SCI", ver=chip)
        sci_hdu.header.update(wcs_header)
        sci_hdu.header["BUNIT"] = bunit
        sci_hdu.header["IDCSCALE"] = 0.04
        sci_hdu.header["CCDCHIP"] = 3 - chip
        err_hdu = fits.ImageHDU(err, name="ERR", ver=chip)
        if constant_dq:
            dq_hdu = fits.ImageHDU(None, name="DQ", ver=chip)
            dq_hdu.header.update(NPIX1=shape[1], NPIX2=shape[0], PIXVALUE=0)
            dq = np.zeros(shape, np.int16)
        else:
            dq_hdu = fits.ImageHDU(dq, name="DQ", ver=chip)
        hdus += [sci_hdu, err_hdu, dq_hdu]
        arrays.append({"sci": sci, "err": err, "dq": dq, "wcs_header": wcs_header})
    hdulist = fits.HDUList(hdus)
    if lookup:
        # Attach NPOL and D2IM tables the way HST files carry them (WCSDVARR/D2IMARR).
        wcs = WCS(hdus[1].header)
        wcs.cpdis1, wcs.cpdis2, wcs.det2im1 = lookup_distortion(shape)
        lookup_hdul = wcs.to_fits(relax=True)
        hdus[1].header.update(
            {k: v for k, v in lookup_hdul[0].header.items() if k.startswith(("CPDIS", "DP", "D2I"))}
        )
        for extra in lookup_hdul[1:]:
            hdulist.append(extra)
        arrays[0]["lookup_wcs"] = wcs
    hdulist.writeto(path, overwrite=True)
    return arrays


def make_plain_fits(path, *, shape=(30, 40), exptime=50.0, bunit="ELECTRONS/S", wcs=True):
    """Write a one-HDU FITS image with a TAN WCS (optional keywords left out when None)."""
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    hdu = fits.PrimaryHDU(data)
    if wcs:
        hdu.header.update(tan_sip_header(shape, sip=False))
    if exptime is not None:
        hdu.header["EXPTIME"] = exptime
    if bunit is not None:
        hdu.header["BUNIT"] = bunit
    hdu.writeto(path, overwrite=True)
    return data


def simple_gwcs(shape, crval=(53.1, -27.8), scale_arcsec=0.031, offset=(0.0, 0.0), rotation=0.0):
    """A gwcs imaging WCS (shift by the centre and ``offset`` px, rotation in deg, scale, TAN,
    sky rotation) with a bounding box."""
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs

    ny, nx = shape
    scale = scale_arcsec / 3600.0
    shift = models.Shift(-(nx - 1) / 2.0 - offset[0]) & models.Shift(-(ny - 1) / 2.0 - offset[1])
    if rotation:
        shift = shift | models.Rotation2D(rotation)
    transform = (
        shift
        | (models.Scale(-scale) & models.Scale(scale))
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(crval[0], crval[1], 180.0)
    )
    detector = cf.Frame2D(name="detector", axes_names=("x", "y"), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    wcs = gwcs_wcs.WCS([(detector, transform), (sky, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def make_jwst_cal(path, *, shape=(32, 36), exptime=300.0, seed=1):
    """Write a JWST ``_cal``-like ImageModel (MJy/sr, gwcs, ERR, VAR_*) with stdatamodels."""
    from stdatamodels.jwst import datamodels as jdm

    rng = np.random.default_rng(seed)
    model = jdm.ImageModel(shape)
    model.data = rng.normal(0.5, 0.01, shape).astype(np.float32)
    model.err = np.full(shape, 0.01, np.float32)
    model.dq = np.zeros(shape, np.uint32)
    model.dq[2, 3] = 1
    model.var_rnoise = np.full(shape, 6e-5, np.float32)
    model.var_poisson = np.full(shape, 4e-5, np.float32)
    model.meta.bunit_data = "MJy/sr"
    model.meta.bunit_err = "MJy/sr"
    model.meta.telescope = "JWST"
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = "NRCB1"
    model.meta.instrument.filter = "F200W"
    model.meta.exposure.exposure_time = exptime
    model.meta.exposure.start_time = 60100.0
    model.meta.exposure.end_time = 60100.01
    model.meta.observation.program_number = "01234"
    model.meta.observation.observation_number = "001"
    model.meta.observation.visit_number = "001"
    model.meta.observation.visit_group = "01"
    model.meta.observation.sequence_id = "1"
    model.meta.observation.activity_id = "01"
    model.meta.observation.exposure_number = "1"
    model.meta.background.level = 0.2
    model.meta.background.subtracted = False
    model.meta.photometry.pixelarea_arcsecsq = 0.031**2
    model.meta.wcs = simple_gwcs(shape)
    model.save(path)
    return model
