"""Convert AstroDrizzle parameter files into drizzlepipe (stpipe) ASDF parameter files.

``drizzlepipe convert-pars astrodrizzle.cfg -o pars.asdf`` reads the parameters of an
AstroDrizzle run and writes the parameter file that makes :class:`DrizzlePipeline` do the same
thing; it prints every AstroDrizzle parameter that could not be carried over, with the reason.
``docs/parameters.md`` has the complete name mapping.

Inputs understood by :func:`read_astrodrizzle_pars`
    * configobj (TEAL) files such as drizzlepac's ``pars/astrodrizzle.cfg``, with or without the
      ``[STEP n: ...]`` sections, and the per-step files (``staticMask.cfg``, ``sky.cfg``, ...);
    * HAP JSON files (``pars/hap_pars/*/*_astrodrizzle_*.json``), nested by step section or flat;
    * an MDRIZTAB reference table (FITS): one row, chosen with ``row``; its column names
      (``subsky``, ``crbitval``, ``readnoise``, ``bits``, ``refimage``, ``ra``, ``dec``) are
      translated as ``drizzlepac.mdzhandler`` does. Flat dictionaries with those names work too.

How the conversion works (:func:`convert`)
    * Names missing from the source take AstroDrizzle's defaults (``astrodrizzle.cfgspc``): the
      output reproduces what AstroDrizzle runs with that file, also where our defaults differ
      (``combine_maskpt`` 0.3 vs 0.7, ``in_memory`` False vs True, ...).
    * Every mapped parameter is written explicitly, including ``skip`` of every step, so the file
      documents the run. A value of None (or ``""`` for file names) is left out: stpipe then
      keeps our default, which for those parameters means the same thing as AstroDrizzle's None.
    * ``preset='none'``: what the file leaves out (an unsupported value, a parameter AstroDrizzle
      does not have) takes drizzlepipe's built-in default, never a preset's value chosen for the
      data (:mod:`drizzlepipe.presets`): AstroDrizzle runs what its parameters say.
    * Step switches follow AstroDrizzle's auto-logic (``astrodrizzle.py:1300-1312``): ``driz_cr``
      turns ``blot`` on, ``blot`` turns ``median`` on, ``median`` turns ``driz_separate`` on. A
      step switched off but needed by a later one is kept on and reported. AstroDrizzle also
      turns median/blot/driz_cr off for a single input; that depends on the data and is left
      to the pipeline.
    * ``driz_sep_wcs``/``final_wcs`` = False: the custom grid keywords are ignored, as in
      AstroDrizzle; non-empty ones are reported.
    * The unmapped list holds ``(name, value, reason)`` for every parameter whose value is not
      carried into the file as given: parameters without an equivalent, values we do not support
      (the default is kept) and switches overridden by the auto-logic.

Deviations from AstroDrizzle's handling of the same parameters (each documented in
``docs/parameters.md``):

1. ``final_fillval=None`` with ``final_maskval=None`` gives ``fillval='NaN'``; with a numeric
   ``final_maskval`` it gives that number. AstroDrizzle leaves the value of the last bad input
   in pixels covered only by bad pixels (its ``dow == 0`` [QUIRK], fixed in the drizzle package);
   drizzlepipe fills every zero-weight pixel.
2. ``blot_interp='sinc'`` becomes ``'lan5'``: drizzle 3.0 has no sinc interpolant and ``lan5``
   (a windowed sinc) is the closest. ``spline3``/``lsinc`` are not supported (default kept).
3. ``*_pixfrac <= 0.001`` becomes ``kernel='point'`` (AstroDrizzle switches kernels silently,
   drizzlepipe's steps reject such pixfrac values).
4. ``driz_sep_wt_scl``/``final_wt_scl`` are not mapped: AstroDrizzle turns both ``exptime`` and
   ``expsq`` into 1 [QUIRK], so the weights are the exposure time, which is what drizzlepipe's
   ``weight_type='exptime'`` does.
5. Sky sources: ``skysub=True`` with ``skyfile`` gives ``method='user'`` + ``skyfile``;
   ``skysub=False`` with ``skyuser=KEYWORD`` gives ``user_keyword`` (a sky already subtracted),
   with ``skyuser='@file'`` it gives ``method='user'`` + ``skyfile`` (AstroDrizzle subtracts
   those skies on the fly). The ``# applied = yes`` line of AstroDrizzle sky files is not read.
6. ``combine_bufsize=None`` is written as ``bufsize=1.0`` (AstroDrizzle's built-in 1 MiB), and
   DQ bits ``None``/``""``/``INDEF`` (ignore DQ) as the explicit string ``'None'``, since None
   values are never written and the steps' default is ``'0'``.

The written file is checked before it replaces anything at the destination: it is re-read with
``stpipe.config_parser.load_config_file``, compared with the tree and validated against the
parameter spec of :class:`drizzlepipe.pipelines.DrizzlePipeline` itself.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "AD_PARAMETERS",
    "PIPELINE_CLASS",
    "STEP_CLASSES",
    "UNMAPPED_REASONS",
    "add_arguments",
    "convert",
    "normalize_astrodrizzle_pars",
    "read_astrodrizzle_pars",
    "run",
    "validate_tree",
    "write_pars",
]

PIPELINE_CLASS = "drizzlepipe.pipelines.DrizzlePipeline"
PIPELINE_NAME = "DrizzlePipeline"

#: step_defs key -> step class, in pipeline order.
STEP_CLASSES = {
    "static_mask": "drizzlepipe.steps.StaticMaskStep",
    "sky_sub": "drizzlepipe.steps.SkySubStep",
    "driz_separate": "drizzlepipe.steps.DrizSeparateStep",
    "create_median": "drizzlepipe.steps.CreateMedianStep",
    "blot_cr": "drizzlepipe.steps.BlotCRStep",
    "driz_final": "drizzlepipe.steps.DrizFinalStep",
}

# AstroDrizzle's parameters (drizzlepac pars/astrodrizzle.cfgspc) as name -> (type, default).
# Types: bool, int, float, str; a trailing "?" allows None; "bits" is a DQ bit string (None =
# ignore DQ); "pair" is a string of two numbers ("3.5 3.0").
AD_PARAMETERS = {
    # global
    "input": ("str", "*flt.fits"),
    "output": ("str", ""),
    "runfile": ("str", "astrodrizzle.log"),
    "wcskey": ("str", ""),
    "proc_unit": ("str", "native"),
    "coeffs": ("bool", True),
    "context": ("bool", True),
    "group": ("str", ""),
    "build": ("bool", False),
    "crbit": ("int", 4096),
    "stepsize": ("int", 10),
    "resetbits": ("str", "4096"),
    "num_cores": ("int?", None),
    "in_memory": ("bool", False),
    "rules_file": ("str", ""),
    "mdriztab": ("bool", False),
    # STATE OF INPUT FILES
    "restore": ("bool", False),
    "preserve": ("bool", True),
    "overwrite": ("bool", False),
    "clean": ("bool", False),
    # STEP 1: STATIC MASK
    "static": ("bool", True),
    "static_sig": ("float", 4.0),
    # STEP 2: SKY SUBTRACTION
    "skysub": ("bool", True),
    "skymethod": ("str", "localmin"),
    "skystat": ("str", "median"),
    "skywidth": ("float?", 0.1),
    "skylower": ("float?", None),
    "skyupper": ("float?", None),
    "skyclip": ("int", 5),
    "skylsigma": ("float", 4.0),
    "skyusigma": ("float", 4.0),
    "skymask_cat": ("str", ""),
    "use_static": ("bool", True),
    "sky_bits": ("bits", "0"),
    "skyfile": ("str", ""),
    "skyuser": ("str", ""),
    # STEP 3: DRIZZLE SEPARATE IMAGES (+ 3a custom WCS)
    "driz_separate": ("bool", True),
    "driz_sep_kernel": ("str", "turbo"),
    "driz_sep_wt_scl": ("str", "exptime"),
    "driz_sep_pixfrac": ("float", 1.0),
    "driz_sep_fillval": ("float?", None),
    "driz_sep_bits": ("bits", "0"),
    "driz_sep_compress": ("bool", False),
    "driz_sep_wcs": ("bool", False),
    "driz_sep_refimage": ("str", ""),
    "driz_sep_rot": ("float?", None),
    "driz_sep_scale": ("float?", None),
    "driz_sep_outnx": ("int?", None),
    "driz_sep_outny": ("int?", None),
    "driz_sep_ra": ("float?", None),
    "driz_sep_dec": ("float?", None),
    "driz_sep_crpix1": ("float?", None),
    "driz_sep_crpix2": ("float?", None),
    # STEP 4: CREATE MEDIAN IMAGE
    "median": ("bool", True),
    "median_newmasks": ("bool", True),
    "combine_maskpt": ("float", 0.3),
    "combine_type": ("str", "minmed"),
    "combine_nsigma": ("pair", "4 3"),
    "combine_nlow": ("int", 0),
    "combine_nhigh": ("int", 0),
    "combine_lthresh": ("float?", None),
    "combine_hthresh": ("float?", None),
    "combine_grow": ("int", 1),
    "combine_bufsize": ("float?", None),
    # STEP 5: BLOT BACK THE MEDIAN IMAGE
    "blot": ("bool", True),
    "blot_interp": ("str", "poly5"),
    "blot_sinscl": ("float", 1.0),
    "blot_addsky": ("bool", True),
    "blot_skyval": ("float", 0.0),
    # STEP 6: REMOVE COSMIC RAYS WITH DERIV, DRIZ_CR
    "driz_cr": ("bool", True),
    "driz_cr_corr": ("bool", False),
    "driz_cr_snr": ("pair", "3.5 3.0"),
    "driz_cr_grow": ("int", 1),
    "driz_cr_ctegrow": ("int", 0),
    "driz_cr_scale": ("pair", "1.2 0.7"),
    # STEP 7: DRIZZLE FINAL COMBINED IMAGE (+ 7a custom WCS)
    "driz_combine": ("bool", True),
    "final_wht_type": ("str", "EXP"),
    "final_kernel": ("str", "square"),
    "final_wt_scl": ("str", "exptime"),
    "final_pixfrac": ("float", 1.0),
    "final_fillval": ("float?", None),
    "final_maskval": ("float?", None),
    "final_bits": ("bits", "0"),
    "final_units": ("str", "cps"),
    "final_wcs": ("bool", False),
    "final_refimage": ("str", ""),
    "final_rot": ("float?", None),
    "final_scale": ("float?", None),
    "final_outnx": ("int?", None),
    "final_outny": ("int?", None),
    "final_ra": ("float?", None),
    "final_dec": ("float?", None),
    "final_crpix1": ("float?", None),
    "final_crpix2": ("float?", None),
    # INSTRUMENT PARAMETERS
    "gain": ("str", ""),
    "gnkeyword": ("str", ""),
    "rdnoise": ("str", ""),
    "rnkeyword": ("str", ""),
    "exptime": ("str", ""),
    "expkeyword": ("str", ""),
}

# Names that tell an AstroDrizzle file apart from other drizzlepac tasks' files: the parameters
# of the seven processing steps (globals such as "input" are shared with other tasks).
_STEP_PARAMETER_NAMES = frozenset(list(AD_PARAMETERS)[list(AD_PARAMETERS).index("static") :]) - {
    "gain",
    "gnkeyword",
    "rdnoise",
    "rnkeyword",
    "exptime",
    "expkeyword",
}

#: AstroDrizzle parameters without a drizzlepipe equivalent -> why.
UNMAPPED_REASONS = {
    "input": "inputs are given when the pipeline runs (strun drizzle_pipeline <input>), "
    "not in the parameter file",
    "runfile": "logging is configured by stpipe (strun --log-file)",
    "wcskey": "drizzlepipe always uses each input's primary WCS",
    "proc_unit": "units are tracked explicitly; driz_final.units chooses cps or counts",
    "coeffs": "distortion (SIP, lookup tables) is always applied",
    "group": "choose chips by the files/extensions given as input",
    "build": "products are always written as one multi-extension file",
    "num_cores": "parallelism is configured through dask (scheduler / n_workers), "
    "not in the parameter file",
    "rules_file": "headers are not blended with fitsblender rules; provenance is in meta",
    "mdriztab": "MDRIZTAB is not read at run time: convert the table row with "
    "'drizzlepipe convert-pars MDRIZTAB.fits --row N'",
    "restore": "inputs are never modified, so there are no OrIg_files backups",
    "preserve": "inputs are never modified, so there are no OrIg_files backups",
    "overwrite": "inputs are never modified, so there are no OrIg_files backups",
    "clean": "intermediate products are only written with save_intermediates=True",
    "in_memory": "AstroDrizzle's switch is about its intermediate files; drizzlepipe chooses "
    "where its chips live from the memory model (set in_memory=False to keep them on disk)",
    "driz_sep_wt_scl": "AstroDrizzle turns 'exptime' and 'expsq' into 1 [QUIRK]; weights are "
    "the exposure time",
    "driz_sep_compress": "products are not tile-compressed",
    "final_wt_scl": "AstroDrizzle turns 'exptime' and 'expsq' into 1 [QUIRK]; "
    "driz_final.weight_type chooses the weights",
    "gnkeyword": "the gain comes from each instrument's keywords (docs/instruments.md); "
    "a value is given with gain=",
    "rnkeyword": "the read noise comes from each instrument's keywords (docs/instruments.md); "
    "a value is given with readnoise=",
    "expkeyword": "the exposure time comes from EXPTIME (each STIS imset's own); a value is "
    "given with exptime=",
}

# MDRIZTAB column names that differ from AstroDrizzle's (drizzlepac mdzhandler.py).
_MDRIZTAB_ALIASES = {
    "subsky": ("skysub",),
    "crbitval": ("crbit",),
    "readnoise": ("rdnoise",),
    "bits": ("driz_sep_bits", "final_bits"),
    "refimage": ("driz_sep_refimage", "final_refimage"),
    "ra": ("driz_sep_ra", "final_ra"),
    "dec": ("driz_sep_dec", "final_dec"),
}
# MDRIZTAB columns that select the row or that AstroDrizzle ignores.
_MDRIZTAB_IGNORED = frozenset({"filter", "numimages", "shiftfile", "staticfile"})

_KERNELS = ("square", "point", "turbo", "gaussian", "lanczos3")
_SKY_METHODS = ("localmin", "globalmin", "match", "globalmin+match")
_SKY_STATS = ("median", "mode", "mean", "midpt")
_COMBINE_TYPES = ("minmed", "iminmed", "median", "imedian", "mean", "imean", "sum")
_BLOT_INTERPS = ("nearest", "linear", "poly3", "poly5", "lan3", "lan5")
_WEIGHT_TYPES = {"EXP": "exptime", "ERR": "err", "IVM": "ivm"}
_UNITS = ("cps", "counts")
_NONE_STRINGS = ("", "NONE", "INDEF")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_astrodrizzle_pars(path, *, row=None):
    """Read an AstroDrizzle parameter file into a flat dictionary.

    Parameters
    ----------
    path : str or os.PathLike
        A configobj/TEAL ``.cfg`` file, a HAP JSON file (nested by step section or flat) or an
        MDRIZTAB FITS table. The format is recognised from the content, not the extension.
    row : int, optional
        MDRIZTAB only: the 1-based row to read (as drizzlepac prints it). Required when the
        table has more than one row.

    Returns
    -------
    dict
        AstroDrizzle parameter name -> value, typed as AstroDrizzle's ``astrodrizzle.cfgspc``
        types them (bool, int, float, str, None). Only the names present in the file are
        returned; names AstroDrizzle does not know are kept with their value as read, and
        MDRIZTAB column names are translated to parameter names.

    Raises
    ------
    ValueError
        If the file is another task's parameter file (``_task_name_`` other than astrodrizzle),
        holds no AstroDrizzle step parameter, defines one name twice with different values, or
        has a value of the wrong type.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        head = stream.read(80)
    conflicts = {}
    if head.startswith(b"SIMPLE  ="):
        flat = _read_mdriztab(path, row)
    else:
        if row is not None:
            raise ValueError(f"{path}: 'row' only applies to MDRIZTAB FITS tables")
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            tree = json.loads(text)
            if not isinstance(tree, dict):
                raise ValueError(f"{path}: a JSON parameter file must hold an object")
        else:
            tree = _read_configobj(path)
        task = tree.get("_task_name_")
        if task is not None and str(task).strip().lower() != "astrodrizzle":
            raise ValueError(
                f"{path} is a parameter file for the '{task}' task, not an AstroDrizzle file"
            )
        flat, conflicts = _flatten(tree)
    if not _STEP_PARAMETER_NAMES & set(_translate_aliases(flat)):
        raise ValueError(f"{path}: no AstroDrizzle step parameter found")
    for name, (first, other) in conflicts.items():
        if name in AD_PARAMETERS:
            raise ValueError(f"{path}: '{name}' is given twice ({first!r}, {other!r})")
    return normalize_astrodrizzle_pars(flat)


def _read_configobj(path):
    from configobj import ConfigObj, ConfigObjError

    try:
        return ConfigObj(str(path), raise_errors=True, encoding="utf-8").dict()
    except ConfigObjError as error:
        raise ValueError(f"{path}: not a configobj parameter file ({error})") from None


def _flatten(tree, flat=None, conflicts=None):
    """Flatten nested sections, skipping TEAL's ``_name_`` entries (buttons, rules, task name).

    Returns the flat dict (the last value wins) and ``name -> (first, other)`` for names given
    twice with different values.
    """
    flat = {} if flat is None else flat
    conflicts = {} if conflicts is None else conflicts
    for key, value in tree.items():
        if key.startswith("_") and key.endswith("_"):
            continue
        if isinstance(value, dict):
            _flatten(value, flat, conflicts)
            continue
        if key in flat and flat[key] != value:
            conflicts.setdefault(key, (flat[key], value))
        flat[key] = value
    return flat, conflicts


def _read_mdriztab(path, row):
    """One MDRIZTAB row as a flat dict, with values cleaned as drizzlepac's mdzhandler does."""
    from astropy.io import fits

    with fits.open(path) as hdus:
        if len(hdus) < 2 or not isinstance(hdus[1], fits.BinTableHDU):
            raise ValueError(f"{path}: a FITS file must be an MDRIZTAB (a table in extension 1)")
        table = hdus[1]
        nrows = len(table.data)
        names = [name.lower() for name in table.columns.names]
        if row is None and nrows == 1:
            row = 1
        if row is None or not 1 <= row <= nrows:
            listing = "; ".join(
                f"row {i + 1}: "
                + ", ".join(
                    f"{col}={table.data[i][col]!s}".strip()
                    for col in table.columns.names
                    if col.lower() in ("filter", "numimages")
                )
                for i in range(nrows)
            )
            raise ValueError(f"{path}: choose an MDRIZTAB row (1..{nrows}) with row=: {listing}")
        record = table.data[row - 1]
        flat = {}
        for name, column in zip(names, table.columns):
            flat[name] = _clean_mdriztab_value(name, record[column.name], column.format)
    return flat


def _clean_mdriztab_value(name, value, column_format):
    code = str(column_format).upper().lstrip("0123456789")[:1]
    if name == "coeffs":
        # mdzhandler: a string column; blank or INDEF means "no distortion coefficients".
        return str(value).strip().upper() not in ("", "INDEF", "NONE")
    if code == "A":
        return str(value).strip()
    if code == "L":
        return bool(value)
    if code in ("B", "I", "J", "K"):
        # -2147483647 is the table's INDEF for integers (mdzhandler.cleanInt).
        return None if int(value) == -2147483647 else int(value)
    if code in ("E", "D"):
        return None if math.isnan(float(value)) else float(value)
    raise ValueError(f"MDRIZTAB column {name!r} has an unsupported format {column_format!r}")


# --------------------------------------------------------------------------------------------
# Normalising values
# --------------------------------------------------------------------------------------------


def _translate_aliases(pars):
    """MDRIZTAB column names -> AstroDrizzle names (a name given directly wins)."""
    out = {}
    for name, value in pars.items():
        if name in _MDRIZTAB_IGNORED:
            continue
        if name in _MDRIZTAB_ALIASES:
            for target in _MDRIZTAB_ALIASES[name]:
                if target not in pars:
                    out[target] = value
            continue
        out[name] = value
    return out


def normalize_astrodrizzle_pars(pars):
    """Type the values of AstroDrizzle parameters as ``astrodrizzle.cfgspc`` does.

    Parameters
    ----------
    pars : dict
        AstroDrizzle name -> value as read from a file: strings from configobj (``"True"``,
        ``"4.0"``, ``"None"``, lists for comma-separated values), typed values from JSON.

    Returns
    -------
    dict
        The same names (MDRIZTAB column names translated) with bool/int/float/str/None values.
        ``None``, ``"None"``, ``"INDEF"`` and ``""`` are None for parameters that accept None;
        a None given to a parameter that does not accept it takes AstroDrizzle's default. DQ
        bit strings stay strings, or None meaning "ignore DQ". Unknown names pass unchanged.

    Raises
    ------
    ValueError
        If a value cannot be read as its parameter's type.
    """
    out = {}
    for name, value in _translate_aliases(pars).items():
        if name not in AD_PARAMETERS:
            out[name] = value
            continue
        kind, default = AD_PARAMETERS[name]
        try:
            out[name] = _coerce(kind, default, value)
        except (TypeError, ValueError):
            raise ValueError(
                f"AstroDrizzle parameter {name!r}: {value!r} is not a valid {kind.rstrip('?')}"
            ) from None
    return out


def _coerce(kind, default, value):
    if isinstance(value, (list, tuple)):
        # configobj splits unquoted comma-separated values ("4,8", "3.5,3.0") into lists
        value = ",".join(str(item).strip() for item in value)
    if isinstance(value, str):
        value = value.strip()
    is_none = value is None or (isinstance(value, str) and value.upper() in _NONE_STRINGS)
    if kind == "bits":
        return None if is_none else str(value)
    if kind == "pair":
        if is_none:
            return default
        # AstroDrizzle splits on commas, semicolons and blanks; we write "a b"
        items = [item for item in re.split(r"[,;\s]+", str(value)) if item]
        if len(items) != 2:
            raise ValueError("needs exactly two numbers")
        for item in items:
            float(item)
        return " ".join(items)
    if kind == "str":
        # file names and keywords: AstroDrizzle treats None/INDEF like a blank entry
        return "" if is_none else str(value)
    if is_none:
        return None if kind.endswith("?") else default
    base = kind.rstrip("?")
    if base == "bool":
        return _to_bool(value)
    if base == "int":
        if isinstance(value, bool):
            raise TypeError("bool is not an int")
        number = float(value)
        if not number.is_integer():
            raise ValueError("not an integer")
        return int(number)
    if base == "float":
        if isinstance(value, bool):
            raise TypeError("bool is not a float")
        return float(value)
    raise AssertionError(f"unknown parameter type {kind!r}")


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1", "t", "y"):
        return True
    if text in ("false", "no", "off", "0", "f", "n"):
        return False
    raise ValueError("not a boolean")


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


class _Converter:
    """Builds the parameter tree and the list of unmapped parameters from typed AD values."""

    def __init__(self, ad_pars):
        self.given = normalize_astrodrizzle_pars(ad_pars)
        defaults = {name: default for name, (_kind, default) in AD_PARAMETERS.items()}
        self.pars = {**defaults, **self.given}
        self.pipeline = {}
        self.steps = {name: {} for name in STEP_CLASSES}
        self.unmapped = []

    def put(self, step, key, value):
        """Write ``value`` unless it is None (a missing key keeps our default)."""
        if value is None:
            return
        target = self.pipeline if step is None else self.steps[step]
        target[key] = value

    def report(self, name, reason, value=None, only_if_given=False):
        if only_if_given and name not in self.given:
            return
        self.unmapped.append((name, self.pars.get(name) if value is None else value, reason))

    def option(self, name, allowed, step, key):
        """Write an option value (lower case) if drizzlepipe supports it, else report it."""
        text = str(self.pars[name]).lower()
        if text in allowed:
            self.put(step, key, text)
        else:
            self.report(
                name,
                f"value not supported (choose from {', '.join(allowed)}); "
                "drizzlepipe's default kept",
            )

    def run(self):
        self._switches()
        self._globals()
        self._static_mask()
        self._sky()
        self._drizzle("driz_sep", "driz_separate", "driz_sep_wcs")
        self._median()
        self._blot_cr()
        self._drizzle("final", "driz_final", "final_wcs")
        self._final_weights_and_units()
        for name, reason in UNMAPPED_REASONS.items():
            self.report(name, reason, only_if_given=True)
        for name in self.given:
            if name not in AD_PARAMETERS:
                self.report(name, "not an AstroDrizzle parameter", value=self.given[name])
        order = {name: i for i, name in enumerate(AD_PARAMETERS)}
        self.unmapped.sort(key=lambda item: order.get(item[0], len(order)))
        return self.tree(), self.unmapped

    def tree(self):
        return {
            "class": PIPELINE_CLASS,
            "name": PIPELINE_NAME,
            "parameters": dict(self.pipeline),
            "steps": [
                {"class": STEP_CLASSES[name], "name": name, "parameters": dict(pars)}
                for name, pars in self.steps.items()
            ],
        }

    # -- step switches ------------------------------------------------------------------------
    def _switches(self):
        p = self.pars
        # AstroDrizzle's auto-logic, later steps first (astrodrizzle.py:1300-1312).
        run_cr = p["driz_cr"]
        run_blot = p["blot"] or run_cr
        run_median = p["median"] or run_blot
        run_single = p["driz_separate"] or run_median
        for name, forced, by in (
            ("blot", run_blot, "driz_cr"),
            ("median", run_median, "blot"),
            ("driz_separate", run_single, "median"),
        ):
            if forced and not p[name]:
                self.report(name, f"forced on: '{by}' needs it (AstroDrizzle does the same)")
        if p["blot"] and not run_cr:
            self.report(
                "blot",
                "blot without driz_cr only writes _blt files; drizzlepipe blots inside "
                "blot_cr, which is skipped (median still runs, as in AstroDrizzle)",
            )
        self.put("static_mask", "skip", not p["static"])
        self.put("driz_separate", "skip", not run_single)
        self.put("create_median", "skip", not run_median)
        self.put("blot_cr", "skip", not run_cr)
        self.put("driz_final", "skip", not p["driz_combine"])

    # -- global parameters --------------------------------------------------------------------
    def _globals(self):
        p = self.pars
        self.put(None, "preset", "none")
        if p["output"]:
            self.put(None, "output_file", p["output"])
        if p["crbit"] is not None:
            for step in (None, "blot_cr", "driz_final"):
                self.put(step, "crbit", p["crbit"])
        if p["stepsize"] >= 1:
            self.put("driz_separate", "stepsize", p["stepsize"])
            self.put("driz_final", "stepsize", p["stepsize"])
        else:
            self.report("stepsize", "must be at least 1; drizzlepipe's default (10) kept")
        self.put("driz_final", "context", p["context"])
        # in memory only: drizzlepipe never edits its inputs as AstroDrizzle's resetbits does
        self.put(None, "resetbits", _bits(p["resetbits"]) if p["resetbits"] != "" else "0")
        for name, key in (("gain", "gain"), ("rdnoise", "readnoise"), ("exptime", "exptime")):
            if str(p[name]).strip() != "":
                try:
                    self.put(None, key, float(p[name]))
                except ValueError:
                    self.report(name, "not a number; drizzlepipe reads it from the headers")

    def _static_mask(self):
        self.put("static_mask", "sigma", self.pars["static_sig"])

    # -- sky ----------------------------------------------------------------------------------
    def _sky(self):
        p = self.pars
        step = "sky_sub"
        skyfile, skyuser = p["skyfile"], p["skyuser"]
        if p["skysub"] and skyfile:
            # AstroDrizzle takes the skies from the file and does not compute any.
            self.put(step, "skip", False)
            self.put(step, "method", "user")
            self.put(step, "skyfile", skyfile)
            self.report("skymethod", "not used: the skies come from skyfile", only_if_given=True)
        elif p["skysub"]:
            self.put(step, "skip", False)
            self.option("skymethod", _SKY_METHODS, step, "method")
        elif skyuser.startswith("@"):
            # skysub=False, skyuser='@file': AstroDrizzle reads the skies from the file and
            # subtracts them on the fly (sky.py:_skyUserFromFile with apply_sky=False).
            self.put(step, "skip", False)
            self.put(step, "method", "user")
            self.put(step, "skyfile", skyuser[1:].strip())
        elif skyuser:
            # skysub=False, skyuser=KEYWORD: a sky the user already subtracted, read back.
            self.put(step, "skip", False)
            self.option("skymethod", _SKY_METHODS, step, "method")
            self.put(step, "user_keyword", skyuser)
        else:
            self.put(step, "skip", True)
            self.option("skymethod", _SKY_METHODS, step, "method")
        if p["skysub"] and skyuser:
            self.report("skyuser", "ignored by AstroDrizzle when skysub=True")
        if not p["skysub"] and skyfile:
            self.report("skyfile", "ignored by AstroDrizzle when skysub=False")
        self.option("skystat", _SKY_STATS, step, "stat")
        self.put(step, "nclip", p["skyclip"])
        self.put(step, "lsigma", p["skylsigma"])
        self.put(step, "usigma", p["skyusigma"])
        self.put(step, "lower", p["skylower"])
        self.put(step, "upper", p["skyupper"])
        self.put(step, "binwidth", p["skywidth"])
        self.put(step, "good_bits", _bits(p["sky_bits"]))
        self.put(step, "use_static", p["use_static"])
        if p["skymask_cat"]:
            self.put(step, "mask_files", p["skymask_cat"])

    # -- drizzle steps ------------------------------------------------------------------------
    def _drizzle(self, prefix, step, wcs_switch):
        p = self.pars
        kernel_name, pixfrac_name = f"{prefix}_kernel", f"{prefix}_pixfrac"
        pixfrac = p[pixfrac_name]
        if pixfrac is not None and pixfrac <= 0.001:
            # AstroDrizzle switches to the point kernel for such drops (arrdrizmodule.c:434).
            self.put(step, "kernel", "point")
            self.report(
                pixfrac_name,
                "pixfrac <= 0.001: AstroDrizzle uses the point kernel; "
                "written as kernel='point' with the default pixfrac",
            )
        else:
            self.option(kernel_name, _KERNELS, step, "kernel")
            self.put(step, "pixfrac", pixfrac)
        self.put(step, "good_bits", _bits(p[f"{prefix}_bits"]))
        fillval = p[f"{prefix}_fillval"]
        if prefix == "final" and fillval is None:
            # Without final_fillval AstroDrizzle leaves its initial value final_maskval in
            # zero-weight pixels (None -> NaN); drizzlepipe fills them with that value.
            fillval = p["final_maskval"]
            self.put(step, "fillval", "NaN" if fillval is None else _number_string(fillval))
        elif fillval is not None:
            # driz_sep_fillval=None is drizzlepipe's None (0 where no input contributes)
            self.put(step, "fillval", _number_string(fillval))
        self._custom_grid(prefix, step, wcs_switch)

    def _custom_grid(self, prefix, step, wcs_switch):
        p = self.pars
        keys = "refimage rot scale outnx outny ra dec crpix1 crpix2".split()
        names = {key: f"{prefix}_{key}" for key in keys}
        if not p[wcs_switch]:
            for name in names.values():
                if p[name] not in (None, ""):
                    self.report(name, f"ignored because {wcs_switch}=False (as in AstroDrizzle)")
            return
        if p[names["refimage"]]:
            self.put(step, "refimage", p[names["refimage"]])
        self.put(step, "rotation", p[names["rot"]])
        self.put(step, "pixel_scale", p[names["scale"]])
        for key, (first, second) in (
            ("output_shape", ("outnx", "outny")),
            ("crval", ("ra", "dec")),
            ("crpix", ("crpix1", "crpix2")),
        ):
            a, b = p[names[first]], p[names[second]]
            if a is not None and b is not None:
                self.put(step, key, [a, b])
            elif a is not None or b is not None:
                for name in (names[first], names[second]):
                    self.report(
                        name, f"AstroDrizzle needs both {names[first]} and {names[second]}; ignored"
                    )

    # -- median -------------------------------------------------------------------------------
    def _median(self):
        p = self.pars
        step = "create_median"
        self.option("combine_type", _COMBINE_TYPES, step, "combine_type")
        self.put(step, "maskpt", p["combine_maskpt"])
        self.put(step, "nsigma", p["combine_nsigma"])
        self.put(step, "nlow", p["combine_nlow"])
        self.put(step, "nhigh", p["combine_nhigh"])
        self.put(step, "lthresh", p["combine_lthresh"])
        self.put(step, "hthresh", p["combine_hthresh"])
        self.put(step, "grow", p["combine_grow"])
        # AstroDrizzle's None means its built-in 1 MiB per image.
        bufsize = p["combine_bufsize"]
        self.put(step, "bufsize", 1.0 if bufsize is None else bufsize)
        self.put(step, "newmasks", p["median_newmasks"])

    # -- blot + cosmic rays -------------------------------------------------------------------
    def _blot_cr(self):
        p = self.pars
        step = "blot_cr"
        interp = p["blot_interp"].lower()
        if interp == "sinc":
            self.put(step, "interp", "lan5")
            self.report(
                "blot_interp",
                "drizzle 3.0 has no sinc interpolant; written as "
                "interp='lan5' (a windowed sinc, the closest)",
            )
        else:
            self.option("blot_interp", _BLOT_INTERPS, step, "interp")
        self.put(step, "sinscl", p["blot_sinscl"])
        if not p["blot_addsky"]:
            self.report(
                "blot_addsky", "the sky is always added back from each chip's meta.background"
            )
            self.report(
                "blot_skyval",
                "only used with blot_addsky=False, which is not supported",
                only_if_given=True,
            )
        self.put(step, "snr", p["driz_cr_snr"])
        self.put(step, "scale", p["driz_cr_scale"])
        self.put(step, "grow", p["driz_cr_grow"])
        self.put(step, "ctegrow", p["driz_cr_ctegrow"])
        self.put(step, "corr", p["driz_cr_corr"])

    # -- final drizzle ------------------------------------------------------------------------
    def _final_weights_and_units(self):
        p = self.pars
        step = "driz_final"
        weight_type = _WEIGHT_TYPES.get(str(p["final_wht_type"] or "").upper())
        if weight_type is None:
            self.report(
                "final_wht_type",
                "value not supported (choose from EXP, ERR, IVM); "
                "drizzlepipe's default (exptime) kept",
            )
        self.put(step, "weight_type", weight_type)
        self.option("final_units", _UNITS, step, "units")


def _bits(value):
    """AstroDrizzle's bits string; None ("ignore DQ") becomes the explicit string "None"."""
    return "None" if value is None else str(value)


def _number_string(value):
    """A fill value as the string our ``fillval`` parameters take ("0.0", "NaN")."""
    return "NaN" if math.isnan(value) else repr(float(value))


def convert(ad_pars):
    """Convert AstroDrizzle parameters into a drizzlepipe stpipe parameter tree.

    Parameters
    ----------
    ad_pars : dict
        AstroDrizzle name -> value (as returned by :func:`read_astrodrizzle_pars`, or any dict
        of AstroDrizzle names with string or typed values). Missing names take AstroDrizzle's
        defaults.

    Returns
    -------
    tree : dict
        The stpipe ASDF parameter tree: ``class``, ``name``, ``parameters`` (pipeline level) and
        ``steps``, a list of ``{class, name, parameters}`` in pipeline order.
    unmapped : list of tuple
        ``(name, value, reason)`` for every AstroDrizzle parameter whose value is not carried
        into the tree as given, in AstroDrizzle's order.

    Raises
    ------
    ValueError
        If a value cannot be read as its parameter's type.
    """
    return _Converter(ad_pars).run()


# --------------------------------------------------------------------------------------------
# Writing and validation
# --------------------------------------------------------------------------------------------


def _pipeline_spec():
    """The pipeline's spec (nested ``steps``) and its step class names, from the classes."""
    from drizzlepipe.pipelines import DrizzlePipeline

    class_names = {key: cls.__name__ for key, cls in DrizzlePipeline.step_defs.items()}
    return DrizzlePipeline.load_spec_file(), class_names


def validate_tree(tree):
    """Check a parameter tree the way stpipe will read it.

    Parameters
    ----------
    tree : dict
        A tree as returned by :func:`convert`.

    Returns
    -------
    str
        The name of the class whose spec was used (``"DrizzlePipeline"``).

    Raises
    ------
    ValueError
        If the layout is not stpipe's (``class``, ``name``, ``parameters``, ``steps`` with the
        pipeline's step names) or a value does not validate against the spec.
    """
    from configobj import ConfigObj
    from configobj.validate import Validator
    from stpipe.config_parser import merge_config, validate
    from stpipe.exceptions import ValidationError

    for key in ("class", "name", "parameters"):
        if key not in tree:
            raise ValueError(f"parameter tree has no {key!r}")
    step_names = [step.get("name") for step in tree.get("steps", [])]
    for step in tree.get("steps", []):
        for key in ("class", "name", "parameters"):
            if key not in step:
                raise ValueError(f"step entry {step.get('name')!r} has no {key!r}")
    spec, class_names = _pipeline_spec()
    used = PIPELINE_NAME
    unknown = [name for name in step_names if name not in class_names]
    if unknown or len(set(step_names)) != len(step_names):
        raise ValueError(f"step names {step_names} do not match the pipeline's {list(class_names)}")
    for step in tree.get("steps", []):
        expected = class_names[step["name"]]
        if step["class"].rsplit(".", 1)[-1] != expected:
            raise ValueError(
                f"step {step['name']!r} has class {step['class']!r}, expected {expected}"
            )
    parameters = {**tree["parameters"]}
    parameters["steps"] = {step["name"]: dict(step["parameters"]) for step in tree.get("steps", [])}
    config = ConfigObj()
    merge_config(config, parameters)
    # stpipe's own file checks make paths absolute and create folders; only types matter here.
    validator = Validator()
    for check in ("input_file", "output_file"):
        validator.functions[check] = validator.functions["string"]
    try:
        validate(config, spec, validator=validator)
    except ValidationError as error:
        raise ValueError(
            f"the parameters do not validate against the {used} spec: {error}"
        ) from None
    return used


def _check_written(path, tree):
    """Re-read ``path`` with stpipe and compare with ``tree``."""
    from stpipe.config_parser import load_config_file

    loaded = load_config_file(str(path))
    if loaded.get("class") != tree["class"] or loaded.get("name") != tree["name"]:
        raise ValueError(f"{path}: class/name did not survive the round trip")
    top = {key: value for key, value in loaded.items() if key not in ("class", "name", "steps")}
    if top != tree["parameters"]:
        raise ValueError(f"{path}: pipeline parameters changed on reading: {top}")
    loaded_steps = loaded.get("steps", {})
    if list(loaded_steps) != [step["name"] for step in tree.get("steps", [])]:
        raise ValueError(f"{path}: steps changed on reading: {list(loaded_steps)}")
    for step in tree.get("steps", []):
        section = dict(loaded_steps[step["name"]])
        if section.pop("class", None) != step["class"] or section.pop("name", None) != step["name"]:
            raise ValueError(f"{path}: class/name of step {step['name']!r} changed on reading")
        if section != step["parameters"]:
            raise ValueError(f"{path}: parameters of {step['name']!r} changed on reading")


def write_pars(tree, path, *, overwrite=False):
    """Write a parameter tree as an stpipe ASDF parameter file, atomically.

    The tree is validated (:func:`validate_tree`), written to a temporary file next to
    ``path``, read back with ``stpipe.config_parser.load_config_file`` and compared with the
    tree; only then is the temporary file renamed to ``path``. On any failure nothing at
    ``path`` changes.

    Parameters
    ----------
    tree : dict
        A tree as returned by :func:`convert`.
    path : str or os.PathLike
        Destination file (``.asdf``).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        If the tree does not validate or does not survive the round trip.
    """
    import asdf

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite to replace it)")
    validate_tree(tree)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        asdf.AsdfFile(tree).write_to(temporary)
        _check_written(temporary, tree)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser):
    """Declare the options of ``drizzlepipe convert-pars``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The sub-command's parser.
    """
    parser.add_argument(
        "source",
        help="AstroDrizzle parameter file: configobj .cfg, HAP .json or MDRIZTAB .fits",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="ASDF parameter file to write (default: <source name>.asdf in the current folder)",
    )
    parser.add_argument(
        "--row", type=int, default=None, help="MDRIZTAB only: 1-based row to convert"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args):
    """Run ``drizzlepipe convert-pars``: convert, write, print the unmapped parameters.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of :func:`add_arguments`.

    Returns
    -------
    int
        0 on success (errors raise ValueError or FileExistsError, which the CLI reports).
    """
    source = Path(args.source)
    if not source.is_file():
        raise ValueError(f"{source}: no such file")
    output = Path(args.output) if args.output else Path(source.stem + ".asdf")
    ad_pars = read_astrodrizzle_pars(source, row=args.row)
    tree, unmapped = convert(ad_pars)
    write_pars(tree, output, overwrite=args.overwrite)
    if unmapped:
        print(f"AstroDrizzle parameters not carried over as given ({len(unmapped)}):")
        width = max(len(name) for name, _value, _reason in unmapped)
        for name, value, reason in unmapped:
            print(f"  {name:<{width}}  = {value!r}: {reason}")
    count = len(tree["parameters"]) + sum(len(step["parameters"]) for step in tree["steps"])
    print(f"wrote {count} parameters of {tree['class']} to {output}")
    return 0
