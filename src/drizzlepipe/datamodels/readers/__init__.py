"""Turn files on disk into drizzlepipe models without ever modifying them.

:func:`open_path` understands HST calibrated exposures (ACS, WFC3, STIS, WFPC2, NICMOS: one
:class:`ImageModel` per SCI extension), JWST ``_cal`` images, plain FITS images with a
celestial WCS and drizzlepipe's own FITS/ASDF products. A single chip can be selected with
``"file.fits[SCI,2]"``. :func:`inspect_file` reads only headers and says which exposures a
file holds, what makes them unique and what had to be assumed about them: the library builds
its association, refuses duplicates and mixed data, and warns, from it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import asdf
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ...exceptions import DrizzlepipeInputError
from ..models import ImageModel, ResampledModel
from ..naming import exposure_root, product_kind
from ..pixels import PIXEL_ARRAYS
from ..units import parse_bunit
from ._common import (
    as_number,
    chip_member_name,
    electrons_stated,
    file_kind,
    first_keyword,
    open_fits,
    reading,
    split_selector,
)
from .generic import read_plain_fits, science_hdu
from .hst import (
    companion_dq_file,
    hst_group_id,
    is_hst,
    read_hst_file,
    read_hst_pixels,
    sci_extvers,
)
from .instruments import generic_detector, hst_detector, is_stis_imset_file
from .jwst import convert_jwst_model, group_id_from_header, is_jwst, read_jwst_image

__all__ = [
    "ExposureRecord",
    "open_path",
    "inspect_file",
    "is_asn_table",
    "product_model_type",
    "source_chip",
    "read_pixel_arrays",
    "split_selector",
    "chip_member_name",
    "convert_jwst_model",
]

_OWN_MODELS = {"ImageModel": ImageModel, "ResampledModel": ResampledModel}


def _own_model_class(primary_header):
    if str(primary_header.get("DPSOFT", "")).strip().lower() != "drizzlepipe":
        return None
    return _OWN_MODELS.get(str(primary_header.get("DATAMODL", "")).strip())


def _foreign_product(primary_header):
    """Why a file with this primary header is a drizzled product rather than an exposure
    (AstroDrizzle's drz/single/median files carry NDRIZIM or D001DATA), else None."""
    for keyword in ("NDRIZIM", "D001DATA"):
        if keyword in primary_header:
            return f"a drizzled product ({keyword} in its primary header), not an exposure"
    return None


def _open_own(cls, path):
    try:
        return cls(str(path))
    except Exception as exc:  # stdatamodels/asdf raise many types for damaged files
        raise DrizzlepipeInputError(path, f"damaged drizzlepipe product ({exc})") from None


def _asdf_model_type(path):
    """``meta.model_type`` of an ASDF file (its tree only); a clear error when unreadable."""
    try:
        with asdf.open(path, lazy_load=True, memmap=False) as af:
            return af.tree.get("meta", {}).get("model_type")
    except Exception as exc:  # asdf raises many types for damaged files
        raise DrizzlepipeInputError(path, f"unreadable ASDF file ({exc})") from None


def _open_asdf(path):
    model_type = _asdf_model_type(path)
    cls = _OWN_MODELS.get(model_type)
    if cls is None:
        raise DrizzlepipeInputError(
            path, f"ASDF file is not a drizzlepipe model (meta.model_type={model_type!r})"
        )
    return _open_own(cls, path)


def open_path(name, *, units=None, exptime=None, gain=None, readnoise=None, resetbits=None,
              pixels=True):  # fmt: skip
    """Open one file (or one chip of it) as drizzlepipe model(s).

    Parameters
    ----------
    name : str or Path
        A file, optionally with a chip selector ``[SCI,n]``.
    units : str, optional
        ``counts``, ``countrate`` or ``surface_brightness``, overriding/replacing BUNIT.
    exptime : float, optional
        Exposure time [s] overriding/replacing the header's.
    gain : float, optional
        Gain [electrons/DN] overriding the instrument's or header's.
    readnoise : float, optional
        Read noise [electrons] overriding the instrument's or header's.
    resetbits : int or str, optional
        DQ bits cleared in memory (``"auto"``: see
        :func:`~drizzlepipe.datamodels.dqflags.resetbits_value`); the file is never touched.
    pixels : bool, optional
        False: HST chips come without their input arrays (SCI, ERR, TIME), which are read from
        the file when used (:mod:`drizzlepipe.datamodels.pixels`); shapes are checked now.
        Other files are read whole either way.

    Returns
    -------
    ImageModel, list of ImageModel or ResampledModel
        A list (in SCI extension order) for multi-chip HST exposures without a selector.

    Raises
    ------
    DrizzlepipeInputError
        For a missing, unreadable or truncated file, a drizzled product given as an exposure,
        or metadata the readers cannot interpret (the message names file and extension).
    """
    path, selector = split_selector(name)
    options = {"units": units, "exptime": exptime, "gain": gain, "readnoise": readnoise,
               "resetbits": resetbits}  # fmt: skip
    if file_kind(path) == "asdf":
        return _open_asdf(path)
    with open_fits(path) as hdulist:
        with reading(path):  # the headers only: a damaged one is named here
            len(hdulist)
            primary = hdulist[0].header
            own = _own_model_class(primary)
            foreign = _foreign_product(primary)
            asn_table = own is None and is_asn_table(hdulist)
            jwst = is_jwst(primary)
            hst = is_hst(primary) or bool(sci_extvers(hdulist))
        if own is not None:
            return _open_own(own, path)
        if foreign is not None:
            raise DrizzlepipeInputError(path, foreign)
        if asn_table:
            raise DrizzlepipeInputError(
                path, "an association table: give it as the input of a library or pipeline"
            )
        if not (jwst or hst):
            return read_plain_fits(hdulist, path, **options)
    if jwst:
        return read_jwst_image(path, **options)
    return read_hst_file(path, selector, pixels=pixels, **options)


def read_pixel_arrays(name, names, options, rows=None):
    """The input arrays ``names`` (``data``, ``err``, ``time``, ``var_*``) of one chip, read
    again from its file exactly as :func:`open_path` read them with reader ``options``.

    HST chips are read directly (only the extensions asked for, SCI always; with ``rows``, a
    slice, only those rows); other files are opened again as a whole (:func:`open_path`), and
    then all their input arrays are returned, those not asked for too (reading them cost
    nothing more), cut to ``rows``.
    """
    path, selector = split_selector(name)
    if selector is not None and selector[0] == "SCI" and file_kind(path) != "asdf":
        with open_fits(path) as hdulist:
            with reading(path):
                primary = hdulist[0].header
                hst = not is_jwst(primary) and (is_hst(primary) or bool(sci_extvers(hdulist)))
            if hst:
                pixels = read_hst_pixels(hdulist, path, selector[1], names, rows)
                return {key: pixels[key] for key in names}
    chip = open_path(name, **options)
    arrays = {key: chip._instance[key] for key in PIXEL_ARRAYS if key in chip._instance}
    return arrays if rows is None else {key: array[rows] for key, array in arrays.items()}


def product_model_type(name):
    """``"ImageModel"``/``"ResampledModel"`` for a drizzlepipe product file, else None.

    Reads only the primary header (FITS) or the tree (ASDF); never raises for missing or
    foreign files, so callers can use it to route inputs.
    """
    path, selector = split_selector(name)
    if selector is not None or not path.is_file():
        return None
    try:
        if file_kind(path) == "asdf":
            return _asdf_model_type(path)
        cls = _own_model_class(fits.getheader(path, 0))
    except Exception:  # a foreign or damaged file is not one of our products
        return None
    return cls.__name__ if cls is not None else None


def is_asn_table(hdulist):
    """True for an HST association table (``_asn.fits``: MEMNAME/MEMTYPE/MEMPRSNT rows)."""
    if str(hdulist[0].header.get("FILETYPE", "")).strip().upper() == "ASN_TABLE":
        return True
    if len(hdulist) < 2 or not isinstance(hdulist[1], fits.BinTableHDU):
        return False
    names = {name.upper() for name in hdulist[1].columns.names}
    return {"MEMNAME", "MEMTYPE"} <= names


@dataclass
class ExposureRecord:
    """One exposure of an input file, from its headers only (:func:`inspect_file`).

    Attributes
    ----------
    path : Path
        The file (absolute).
    members : list of str
        Library member names of its chips (``"/abs/file.fits[SCI,n]"`` or the plain path).
    group_id : str or None
        The exposure's name (file root; JWST's exposure group); None: the library decides.
    telescope, instrument, detector : str
        As the headers say ('' when absent).
    photometric_mode : str
        What must agree between inputs combined into one product (filters, or PHOTMODE).
    identity : tuple or None
        Equal for two files holding the same exposure (HST: instrument, detector, ROOTNAME,
        EXPSTART; JWST: exposure and detector); None when the headers cannot tell.
    timing : tuple or None
        HST: instrument, detector, EXPSTART and EXPTIME. One detector takes one exposure at a
        time, so two files with equal timings are one exposure even where a ROOTNAME is missing.
    similar : tuple or None
        Plain FITS: telescope, instrument, detector, start and exposure time. Equal for two
        files that are probably one exposure (warned: a mosaic camera's CCDs may share them).
    rootname : str or None
        HST ROOTNAME (STIS: each imset's EXPNAME).
    product : str or None
        What the file's *header* says it is: ``"copy"`` (a drizzlepipe ``_crf``-like copy of
        an exposure) or ``"resampled"`` (a drizzled product).
    named_like : str or None
        What its *name* says (:func:`~drizzlepipe.datamodels.naming.product_kind`): only used
        to leave files matched by a glob out.
    per_area : bool or None
        True for surface brightness (MJy/sr), False for data per pixel (counts, rates), None
        when the headers do not say: the two cannot be drizzled together.
    footprints : list of tuple
        Per chip ``(pixels, corners, scale)``: its number of pixels, the RA/Dec of its corners
        [deg] and its pixel scale [deg] from the header's celestial WCS without lookup tables
        (None when the header has none): enough to size the output grid before reading data.
    asn_table : bool
        True for an HST association table (its members are the exposures).
    notes : list of str
        What had to be assumed (missing gain, units from the instrument, DQ not found): the
        library reports each once as a warning.
    """

    path: Path
    members: list = field(default_factory=list)
    group_id: str | None = None
    telescope: str = ""
    instrument: str = ""
    detector: str = ""
    photometric_mode: str = ""
    identity: tuple | None = None
    timing: tuple | None = None
    similar: tuple | None = None
    rootname: str | None = None
    product: str | None = None
    named_like: str | None = None
    per_area: bool | None = None
    footprints: list = field(default_factory=list)
    asn_table: bool = False
    notes: list = field(default_factory=list)


def inspect_file(path, selector=None, *, options=None):
    """The exposures a file holds, from its headers only (no pixel is read).

    Parameters
    ----------
    path : str or Path
        The file.
    selector : tuple, optional
        ``("SCI", n)``: only that chip.
    options : dict, optional
        The reader options the library will open the file with (``units``, ``gain``,
        ``readnoise``...): a quantity the user states is not reported as assumed.

    Returns
    -------
    list of ExposureRecord
        One per exposure (STIS files: one per imset), in file order.
    """
    path = Path(path).resolve()
    options = options or {}
    if file_kind(path) == "asdf":
        resampled = _asdf_model_type(path) == "ResampledModel"
        return [ExposureRecord(path, [str(path)], product="resampled" if resampled else None)]
    with open_fits(path) as hdulist:
        with reading(path):
            len(hdulist)  # reads every header: a damaged one is named here
        primary = hdulist[0].header
        own = _own_model_class(primary)
        copy_of = str(primary.get("DPPRODTP", "")).strip().lower() or None
        if own is ResampledModel:
            return [ExposureRecord(path, [str(path)], product="resampled")]
        if own is ImageModel:
            return [ExposureRecord(path, [str(path)], product=copy_of)]
        if _foreign_product(primary) is not None:
            return [ExposureRecord(path, [str(path)], product="resampled")]
        if is_asn_table(hdulist):
            return [ExposureRecord(path, [], asn_table=True)]
        if is_jwst(primary):
            return [_jwst_record(path, hdulist, copy_of, options)]
        versions = sci_extvers(hdulist)
        if is_hst(primary) or versions:
            if not versions:
                raise DrizzlepipeInputError(path, "HST file without SCI extensions")
            if selector is not None:
                if selector[0] != "SCI" or selector[1] not in versions:
                    problem = f"no such extension (SCI extensions: {versions})"
                    raise DrizzlepipeInputError(path, problem, f"{selector[0]},{selector[1]}")
            return _hst_records(path, hdulist, versions, selector, copy_of, options)
        return [_plain_record(path, hdulist, copy_of, options)]


def _text(header, key):
    return str(header.get(key, "") or "").strip()


def _photometric_mode(headers, telescope, instrument, detector):
    filters = []
    for key in ("FILTER", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAM2", "PUPIL"):
        value = first_keyword(headers, (key,))
        value = str(value).strip().upper() if value is not None else ""
        if value and not value.startswith("CLEAR") and value != "N/A":
            filters.append(value)
    if not filters:
        photmode = first_keyword(headers, ("PHOTMODE",))
        if photmode is None:
            return ""
        # a chip's PHOTMODE names the chip and date ("WFC3 UVIS2 F555W MJD#55611.03"): keep the
        # elements that are filters
        words = [w for w in str(photmode).upper().split() if "#" not in w]
        filters = [w for w in words if w.startswith(("F", "G", "FR", "POL"))]
    parts = [telescope, instrument] + ([detector] if telescope != "JWST" else []) + filters
    return " ".join(part for part in parts if part)


def _hst_records(path, hdulist, versions, selector, copy_of, options):
    primary = hdulist[0].header
    instrument, detector = _text(primary, "INSTRUME"), _text(primary, "DETECTOR")
    if instrument.upper() == "STIS" and _text(primary, "OBSTYPE").upper() == "SPECTROSCOPIC":
        raise DrizzlepipeInputError(path, "a STIS spectroscopic exposure: only images drizzle")
    stis = is_stis_imset_file(primary)
    chosen = [selector[1]] if selector is not None else versions
    groups = {}
    for extver in chosen:
        group = hst_group_id(path, primary, extver, len(versions))
        groups.setdefault(group, []).append(extver)
    notes = _hst_notes(path, hdulist, versions[0], options)
    records = []
    for group, extvers in groups.items():
        sci = hdulist["SCI", extvers[0]].header
        headers = (sci, primary)
        rootname = first_keyword((sci,), ("EXPNAME",)) if stis else None
        rootname = str(rootname or primary.get("ROOTNAME") or "").strip().lower() or None
        expstart = as_number(first_keyword(headers, ("EXPSTART",)))
        exptime = as_number(first_keyword(headers, ("EXPTIME",)))
        identity = timing = None
        if rootname and expstart is not None:
            identity = ("HST", instrument.upper(), detector.upper(), rootname, expstart)
        if expstart is not None and exptime is not None:
            timing = ("HST", instrument.upper(), detector.upper(), expstart, exptime)
        records.append(
            ExposureRecord(
                path,
                [chip_member_name(path, extver) for extver in extvers],
                group_id=group,
                telescope="HST",
                instrument=instrument,
                detector=detector,
                photometric_mode=_photometric_mode(headers, "HST", instrument, detector),
                identity=identity,
                timing=timing,
                rootname=rootname,
                product=copy_of,
                named_like=product_kind(path.name),
                per_area=options.get("units") == "surface_brightness",  # HST: per pixel
                footprints=[_footprint(hdulist["SCI", extver].header) for extver in extvers],
                notes=notes,
            )
        )
    return records


def _footprint(header):
    """``(pixels, corners, scale)`` of a chip from its header alone (see ExposureRecord)."""
    nx, ny = int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0))
    header = header.copy()
    for keyword in list(header):  # lookup tables live in other extensions: not needed here
        if keyword.startswith(("CPDIS", "DP1", "DP2", "CPERR", "D2IM", "AXISCORR")):
            del header[keyword]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2, relax=True)
        if not wcs.has_celestial:
            return nx * ny, None, None
        x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
        y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        corners = np.column_stack(wcs.all_pix2world(x, y, 0))
        scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    except Exception:  # noqa: BLE001 - any header astropy cannot read: size unknown
        return nx * ny, None, None
    return nx * ny, corners, scale


def _per_area(bunit, units):
    """Whether data are surface brightness: the user's ``units``, else BUNIT; None unknown."""
    if units is not None:
        return units == "surface_brightness"
    try:
        return parse_bunit(bunit)[0] == "surface_brightness" if bunit else None
    except ValueError:
        return None


def _units_notes(bunit, options):
    """What the reader assumes about stated units: counts or rates without a readable BUNIT
    and without a gain are taken as electrons."""
    units = options.get("units")
    if units in (None, "surface_brightness") or options.get("gain") is not None:
        return []
    try:
        readable = bool(bunit) and parse_bunit(bunit) is not None
    except ValueError:
        readable = False
    if readable:
        return []
    return [f"units={units} stated without a readable BUNIT: taken as electrons; pass gain= "
            "if the data are DN"]  # fmt: skip


def _in_dn(bunit, units):
    """True when data with this BUNIT (and the units the user states, without a gain) are in
    DN, so that a gain is needed (with a gain stated nothing is assumed)."""
    if units is not None:
        return electrons_stated(bunit, units, None) is False
    try:
        return bunit is not None and parse_bunit(bunit)[1] is False
    except ValueError:
        return False


def _hst_notes(path, hdulist, extver, options):
    """What the reader will assume for this HST file (once per file, first chip's header)."""
    primary = hdulist[0].header
    sci = hdulist["SCI", extver].header
    detector = hst_detector(
        primary, sci, extver, gain=options.get("gain"), readnoise=options.get("readnoise")
    )
    notes = []
    bunit = first_keyword((sci, primary), ("BUNIT",))
    if bunit is None and options.get("units") is None:
        native = detector.native_bunit
        if native is None:
            notes.append("no BUNIT and no known units for this instrument; pass units=")
        else:
            notes.append(f"no BUNIT: {native}, the instrument's calibrated units, assumed")
            bunit = native
    notes.extend(_units_notes(bunit, options))
    if "gain" in detector.assumed and _in_dn(bunit, options.get("units")):
        notes.append("gain not found in the headers: 1 e-/DN assumed; pass gain=")
    if "readnoise" in detector.assumed:
        notes.append("read noise not found in the headers: 0 e- assumed; pass readnoise=")
    dq_file = companion_dq_file(path, primary)
    if dq_file is not None and not dq_file.is_file():
        notes.append(f"DQ file {dq_file.name} not found: every pixel is taken as good")
    return notes


def _jwst_record(path, hdulist, copy_of, options):
    primary = hdulist[0].header
    sci = hdulist["SCI"].header if "SCI" in hdulist else primary
    instrument, detector = _text(primary, "INSTRUME"), _text(primary, "DETECTOR")
    group = group_id_from_header(primary, None)
    identity = ("JWST", group, detector.upper()) if group else None
    return ExposureRecord(
        path,
        [str(path)],
        group_id=group,
        telescope="JWST",
        instrument=instrument,
        detector=detector,
        photometric_mode=_photometric_mode((primary,), "JWST", instrument, detector),
        identity=identity,
        rootname=exposure_root(path.name),
        product=copy_of,  # JWST's own _crf files are exposures: only a header says otherwise
        per_area=_per_area(sci.get("BUNIT"), options.get("units")),
        footprints=[_footprint(sci)],
    )


def _plain_record(path, hdulist, copy_of, options):
    index, hdu = science_hdu(hdulist, path)
    headers = (hdu.header, hdulist[0].header)
    telescope = str(first_keyword(headers, ("TELESCOP",)) or "").strip()
    instrument = str(first_keyword(headers, ("INSTRUME",)) or "").strip()
    detector = str(first_keyword(headers, ("DETECTOR",)) or "").strip()
    # the start of the exposure to the second at least: a date alone does not identify one
    when = first_keyword(headers, ("MJD-OBS", "EXPSTART"))
    date, time = first_keyword(headers, ("DATE-OBS",)), first_keyword(headers, ("TIME-OBS",))
    if when is None and date is not None and ("T" in str(date) or time is not None):
        when = f"{date}T{time}" if time is not None else str(date)
    similar = None
    if when is not None:
        exptime = first_keyword(headers, ("EXPTIME", "EXPOSURE"))
        similar = ("FITS", telescope, instrument, detector, str(when), str(exptime))
    notes = []
    detector_model = generic_detector(
        headers, gain=options.get("gain"), readnoise=options.get("readnoise")
    )
    bunit = first_keyword(headers, ("BUNIT",))
    notes.extend(_units_notes(bunit, options))
    if "gain" in detector_model.assumed and _in_dn(bunit, options.get("units")):
        notes.append("no GAIN keyword: 1 e-/DN assumed for data in DN; pass gain=")
    if "readnoise" in detector_model.assumed:
        notes.append("no RDNOISE keyword: read noise 0 e- assumed; pass readnoise=")
    return ExposureRecord(
        path,
        [str(path)],
        group_id=None,
        telescope=telescope,
        instrument=instrument,
        detector=detector,
        photometric_mode=_photometric_mode(headers, telescope, instrument, detector),
        similar=similar,
        rootname=exposure_root(path.name),
        product=copy_of,
        named_like=product_kind(path.name),
        per_area=_per_area(bunit, options.get("units")),
        footprints=[_footprint(hdu.header)],
        notes=notes,
    )


def source_chip(model):
    """The chip as its input file holds it (read again: data, and the background the file
    records), or None when the model has no readable source file (models built in memory,
    drizzlepipe's own products)."""
    meta = model.meta
    source = meta.source.path if meta.hasattr("source") else None
    if not source or meta.source.format not in ("hst", "fits", "jwst"):
        return None
    path = Path(split_selector(source)[0])
    if not path.is_file():
        return None
    name = path
    if meta.source.format == "hst" and meta.source.extension:
        name = f"{path}[{meta.source.extension}]"
    chip = open_path(name, units=meta.units, exptime=meta.exposure.exptime)
    return chip if isinstance(chip, ImageModel) else None
