"""Input files laid out as each HST instrument writes them, for identity and metadata tests.

Two kinds of helpers:

* ``as_*`` functions rewrite simulated WFC3/UVIS-like exposures (whose truth is known: sky,
  cosmic rays, fluxes in electrons) into another instrument's layout and units, modelled on the
  headers of real files: a STIS CR-split pair (one SCI per file, EXPTIME/EXPSTART/EXPNAME in the
  SCI header, the association's ROOTNAME in every member, DN with ATODGAIN/READNSE), WFPC2
  ``_c0m`` + ``_c1m`` (DN, ATODGAIN = 7, per-chip DETECTOR, DQ in the companion file, no ERR),
  files without ROOTNAME, ``_flt``/``_flc`` copies of one exposure;
* ``make_*`` functions write tiny files directly with astropy (reader tests).

Header values follow real files of each instrument (STIS: o4k19a010-like CR-split members;
WFPC2: u-rootnames with FILTNAM1, ATODGAIN, per-group DETECTOR 1-4; NICMOS: CAMERA, ADCGAIN,
COUNTS/S with a TIME extension; WFC3/IR: ELECTRONS/S with SAMP and TIME).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from fitsfactory import tan_sip_header

#: STIS CCD gain (ATODGAIN at CCDGAIN=1) and read noise of the real o4k19a010 members.
STIS_GAIN, STIS_READNOISE = 1.0, 5.4
#: A gain not 1, so that a reader ignoring it is caught by the flux tests.
STIS_GAIN_TEST = 4.0
WFPC2_ATODGAIN = 7.0


def _exposure_keys(header):
    return {key: header[key] for key in ("EXPTIME", "EXPSTART", "EXPEND") if key in header}


def as_stis_crsplit(flt_files, outdir, *, association="o4k19a010", gain=STIS_GAIN_TEST):
    """Rewrite one-chip simulated exposures as the members of a STIS CR-split association.

    Every file gets the association's ROOTNAME; EXPTIME/EXPSTART/EXPEND move from the primary to
    the SCI header with the member's EXPNAME, as calstis writes them; data and ERR become DN
    (electrons / ``gain``), BUNIT='COUNTS', with ATODGAIN/CCDGAIN/READNSE in the primary.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for number, source in enumerate(flt_files):
        with fits.open(source) as hdulist:
            primary = hdulist[0].header.copy()
            sci, err, dq = (hdulist[name, 1].copy() for name in ("SCI", "ERR", "DQ"))
        timing = _exposure_keys(primary)
        for key in (*timing, "ATODGNA", "ATODGNB", "ATODGNC", "ATODGND", "READNSEA",
                    "READNSEB", "READNSEC", "READNSED", "CCDAMP", "FILTER", "PHOTMODE",
                    "PHOTFLAM", "PHOTZPT", "PHOTPLAM", "PHOTBW"):  # fmt: skip
            primary.remove(key, ignore_missing=True)
        expname = f"{association[:6]}b{number}q"
        primary.update(
            INSTRUME="STIS", DETECTOR="CCD", ROOTNAME=association, OBSTYPE="IMAGING",
            OBSMODE="ACCUM", APERTURE="50CCD", OPT_ELEM="MIRVIS", CCDGAIN=1, ATODGAIN=gain,
            READNSE=STIS_READNOISE, CRSPLIT=len(flt_files), CCDAMP="D",
            FILENAME=f"{expname}_flt.fits",
        )  # fmt: skip
        sci.header.update(timing)
        sci.header.update(
            EXPNAME=expname, BUNIT="COUNTS", PHOTMODE="STIS CCD A2D1 MIRVIS 50CCD",
            PHOTFLAM=6.1e-19, PHOTZPT=-21.1, PHOTPLAM=5835.0, PHOTBW=1560.0,
        )  # fmt: skip
        sci.header.remove("ROOTNAME", ignore_missing=True)
        sci.data = (sci.data / gain).astype(np.float32)
        err.data = (err.data / gain).astype(np.float32)
        err.header["BUNIT"] = "COUNTS"
        path = outdir / f"{expname}_flt.fits"
        fits.HDUList([fits.PrimaryHDU(header=primary), sci, err, dq]).writeto(path)
        written.append(path)
    return written


def as_stis_imsets(flt_files, path, *, association="o4k19a010", gain=STIS_GAIN_TEST):
    """Write the CR-split members as one STIS file of several imsets (SCI/ERR/DQ,n), as the
    association's ``_flt`` holds them before AstroDrizzle splits it."""
    members = as_stis_crsplit(flt_files, Path(path).parent / "members", association=association,
                              gain=gain)  # fmt: skip
    hdus = []
    for number, member in enumerate(members, start=1):
        with fits.open(member) as hdulist:
            if not hdus:
                hdus.append(fits.PrimaryHDU(header=hdulist[0].header.copy()))
            for name in ("SCI", "ERR", "DQ"):
                hdu = hdulist[name, 1].copy()
                hdu.header["EXTVER"] = number
                hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return Path(path)


def as_wfpc2(flt_file, outdir, *, chip_detectors=(3, 4), atodgain=WFPC2_ATODGAIN, c1m=True):
    """Rewrite a simulated exposure as a WFPC2 ``_c0m`` (DN, FILTNAM1, ATODGAIN, DETECTOR per
    group, no ERR, no DQ) with its ``_c1m`` DQ file (extensions named SDQ).

    Data become DN with each chip's own gain from the WFPC2 table, so that the expected
    electrons are the simulated ones. Returns ``(c0m path, c1m path or None, gains)``.
    """
    from drizzlepipe.datamodels.readers.instruments import wfpc2_gain_readnoise

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with fits.open(flt_file) as hdulist:
        primary = hdulist[0].header.copy()
        chips = [(hdulist["SCI", n].copy(), hdulist["DQ", n].copy()) for n in (1, 2)]
    root = "u" + str(primary["ROOTNAME"])[1:]
    for key in ("ATODGNA", "ATODGNB", "ATODGNC", "ATODGND", "READNSEA", "READNSEB",
                "READNSEC", "READNSED", "CCDAMP", "DETECTOR", "FILTER", "CCDGAIN"):  # fmt: skip
        primary.remove(key, ignore_missing=True)
    primary.update(INSTRUME="WFPC2", ROOTNAME=root.upper(), FILTNAM1="F606W", FILTNAM2="",
                   ATODGAIN=atodgain, MODE="FULL", SERIALS="OFF")  # fmt: skip
    sci_hdus, dq_hdus, gains = [], [], []
    for number, ((sci, dq), detector) in enumerate(zip(chips, chip_detectors), start=1):
        gain, _ = wfpc2_gain_readnoise(atodgain, detector)
        gains.append(gain)
        sci.data = (sci.data / gain).astype(np.float32)
        sci.header.update(
            DETECTOR=detector,
            BUNIT="COUNTS",
            PHOTMODE="WFPC2,1,A2D7,F606W,CAL",
            PHOTFLAM=1.9e-18,
            PHOTZPT=-21.1,
            PHOTPLAM=5997.0,
            PHOTBW=638.0,
        )
        sci.header.remove("ROOTNAME", ignore_missing=True)
        sci_hdus.append(sci)
        dq_hdu = fits.ImageHDU(dq.data.astype(np.int16), name="SDQ", ver=number)
        dq_hdus.append(dq_hdu)
    c0m = outdir / f"{root}_c0m.fits"
    fits.HDUList([fits.PrimaryHDU(header=primary), *sci_hdus]).writeto(c0m)
    c1m_path = None
    if c1m:
        c1m_path = outdir / f"{root}_c1m.fits"
        fits.HDUList([fits.PrimaryHDU(header=primary.copy()), *dq_hdus]).writeto(c1m_path)
    return c0m, c1m_path, gains


def without_rootname(flt_file, path):
    """A copy of an exposure without ROOTNAME (primary or SCI), as many reprocessed or
    hand-made files are: ``hrc_a.fits``, ``hrc_b.fits``."""
    with fits.open(flt_file) as hdulist:
        copy = fits.HDUList([hdu.copy() for hdu in hdulist])
    for hdu in copy:
        hdu.header.remove("ROOTNAME", ignore_missing=True)
        hdu.header.remove("EXPNAME", ignore_missing=True)
    copy.writeto(path)
    return Path(path)


def copy_as(source, path, **primary_updates):
    """A copy of ``source`` (e.g. its ``_flc`` twin) with primary keywords changed."""
    with fits.open(source) as hdulist:
        copy = fits.HDUList([hdu.copy() for hdu in hdulist])
    copy[0].header.update(primary_updates)
    copy.writeto(path)
    return Path(path)


def with_filter(source, path, filter_name):
    """A copy of ``source`` in another filter (FILTER and PHOTMODE changed)."""
    with fits.open(source) as hdulist:
        copy = fits.HDUList([hdu.copy() for hdu in hdulist])
    copy[0].header["FILTER"] = filter_name
    for hdu in copy:
        if "PHOTMODE" in hdu.header:
            hdu.header["PHOTMODE"] = str(hdu.header["PHOTMODE"]).replace("F606W", filter_name)
    copy.writeto(path)
    return Path(path)


def make_ir_flt(path, *, shape=(20, 24), exptime=602.9, rootname="ib4606cpq", seed=0):
    """A WFC3/IR-like FLT: SCI/ERR/DQ/SAMP/TIME, ELECTRONS/S, gain and read noise per amp,
    a TIME extension with a few saturated pixels of shorter integration."""
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    primary.header.update(
        TELESCOP="HST", INSTRUME="WFC3", DETECTOR="IR", ROOTNAME=rootname, FILTER="F110W",
        EXPTIME=exptime, EXPSTART=55611.11275703, EXPEND=55611.1197, SAMP_SEQ="STEP100",
        NSAMP=14, PHOTMODE="WFC3 IR F110W", PHOTFLAM=1.52e-20, PHOTZPT=-21.1,
        PHOTPLAM=11534.46, PHOTBW=1428.5,
        **{f"ATODGN{a}": 2.34 for a in "ABCD"},
        **{f"READNSE{a}": v for a, v in zip("ABCD", (20.2, 19.8, 19.9, 20.1))},
    )  # fmt: skip
    sci = fits.ImageHDU(rng.normal(1.5, 0.1, shape).astype(np.float32), name="SCI", ver=1)
    sci.header.update(tan_sip_header(shape, scale_arcsec=0.128, sip=False))
    sci.header.update(BUNIT="ELECTRONS/S", IDCSCALE=0.1282500028610229)
    err = fits.ImageHDU(np.full(shape, 0.05, np.float32), name="ERR", ver=1)
    dq = fits.ImageHDU(np.zeros(shape, np.int16), name="DQ", ver=1)
    samp = fits.ImageHDU(np.full(shape, 14, np.int16), name="SAMP", ver=1)
    time_map = np.full(shape, exptime, np.float32)
    time_map[2, 3] = 102.9  # a pixel saturated after two reads
    time = fits.ImageHDU(time_map, name="TIME", ver=1)
    fits.HDUList([primary, sci, err, dq, samp, time]).writeto(path)
    return time_map


def make_nicmos(path, *, camera=2, shape=(16, 16), exptime=255.9, rootname="n8u301abq"):
    """A NICMOS-like calibrated file: CAMERA, COUNTS/S (DN/s), TIME, no ATODGN keywords."""
    primary = fits.PrimaryHDU()
    primary.header.update(
        TELESCOP="HST", INSTRUME="NICMOS", CAMERA=camera, ROOTNAME=rootname, FILTER="F160W",
        EXPTIME=exptime, EXPSTART=53000.1, ADCGAIN=5.4, UNITCORR="COMPLETE",
    )  # fmt: skip
    sci = fits.ImageHDU(np.ones(shape, np.float32), name="SCI", ver=1)
    sci.header.update(tan_sip_header(shape, scale_arcsec=0.075, sip=False))
    sci.header["BUNIT"] = "COUNTS/S"
    time = fits.ImageHDU(np.full(shape, exptime, np.float32), name="TIME", ver=1)
    fits.HDUList([primary, sci, time]).writeto(path)


def make_hst_asn(path, members, *, product="j8bt06040", memtype="EXP-DTH", present=None):
    """An HST association table (``_asn.fits``): MEMNAME, MEMTYPE, MEMPRSNT rows for the
    members and the PROD-DTH product, as the archive writes it."""
    present = present if present is not None else [True] * len(members)
    names = [m.upper() for m in members] + [product.upper()]
    types = [memtype] * len(members) + ["PROD-DTH"]
    flags = list(present) + [True]
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="MEMNAME", format="14A", array=np.array(names)),
            fits.Column(name="MEMTYPE", format="14A", array=np.array(types)),
            fits.Column(name="MEMPRSNT", format="L", array=np.array(flags)),
        ],
        name="ASN",
    )
    primary = fits.PrimaryHDU()
    primary.header.update(TELESCOP="HST", FILETYPE="ASN_TABLE", ASN_ID=product.upper())
    fits.HDUList([primary, table]).writeto(path)
    return Path(path)


def make_wfpc2_c0m(outdir, *, rootname="u2ab0101t", atodgain=15.0, shape=(16, 18)):
    """A tiny 4-group WFPC2 ``_c0m`` (PC1, WF2, WF3, WF4: DETECTOR 1-4 in each SCI header, the
    PC at 0.0455 arcsec, the WFs at 0.0996) with its ``_c1m`` DQ file (EXTNAME SDQ), as the
    archive's converted GEIS files are. Returns ``(c0m, c1m, dq arrays)``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    primary = fits.Header()
    primary.update(TELESCOP="HST", INSTRUME="WFPC2", ROOTNAME=rootname.upper(), FILTNAM1="F555W",
                   FILTNAM2="", ATODGAIN=atodgain, EXPTIME=400.0, EXPSTART=49500.25,
                   EXPEND=49500.2547, MODE="FULL")  # fmt: skip
    sci_hdus, dq_hdus, dqs = [], [], []
    for chip in (1, 2, 3, 4):
        scale = 0.0455 if chip == 1 else 0.0996
        sci = fits.ImageHDU(np.full(shape, 10.0 * chip, np.float32), name="SCI", ver=chip)
        sci.header.update(tan_sip_header(shape, crval=(150.1, 2.2 + chip * 0.001),
                                         scale_arcsec=scale, sip=False))  # fmt: skip
        sci.header.update(DETECTOR=chip, BUNIT="COUNTS", PHOTFLAM=3.5e-18 * chip,
                          PHOTMODE=f"WFPC2,{chip},A2D15,F555W,CAL")  # fmt: skip
        dq = np.zeros(shape, np.int16)
        dq[chip, :] = 2  # a row of calibration-file defects, different per chip
        dq_hdus.append(fits.ImageHDU(dq, name="SDQ", ver=chip))
        sci_hdus.append(sci)
        dqs.append(dq)
    c0m, c1m = outdir / f"{rootname}_c0m.fits", outdir / f"{rootname}_c1m.fits"
    fits.HDUList([fits.PrimaryHDU(header=primary), *sci_hdus]).writeto(c0m)
    fits.HDUList([fits.PrimaryHDU(header=primary.copy()), *dq_hdus]).writeto(c1m)
    return c0m, c1m, dqs
