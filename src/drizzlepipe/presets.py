"""Parameter presets: AstroDrizzle's MDRIZTAB idea for :class:`DrizzlePipeline`.

AstroDrizzle can take its parameters from a reference table (MDRIZTAB) with rows per
instrument, detector and number of images. drizzlepipe's pipeline parameter ``preset`` does the
same with a few named sets of values (:data:`PRESETS`), each taken from a tested recipe: the
HAP single-visit settings of drizzlepac, the JWST pipeline's choices.

* ``preset='auto'`` (the default) chooses one from the inputs' headers before any work, by the
  first of :data:`AUTO_RULES` that holds (instrument, detector, number of exposures), and logs
  which and why;
* ``preset='none'`` runs the built-in defaults, which are AstroDrizzle's;
* a preset's name runs that preset, whatever the inputs.

Precedence: a value the user set (keyword, ``steps={...}``, command line, parameter file, an
attribute set on the step) > the preset's value > the built-in default. Every parameter a preset
may set has the spec default None, which tells a value left unset from one set by the user even
when it equals the built-in one (:attr:`DrizStep.builtin_defaults
<drizzlepipe.steps.base.DrizStep.builtin_defaults>`); the preset fills only the parameters
still None, for the run.

These tables are the one place the presets are defined: ``cfg/*.asdf`` are written from them
(``python -m drizzlepipe.presets cfg``; a test compares the files with the tables) and
``docs/presets.md`` renders them.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .steps.base import filled_parameters

__all__ = [
    "AUTO",
    "AUTO_RULES",
    "NONE",
    "PRESETS",
    "Inputs",
    "Preset",
    "Rule",
    "Setting",
    "applied",
    "choose",
    "parameter_file_text",
    "write_parameter_files",
]

log = logging.getLogger(__name__)

AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class Setting:
    """One value a preset sets, and why."""

    step: str | None  # a key of DrizzlePipeline.step_defs; None: the pipeline's own parameter
    name: str
    value: object
    reason: str

    @property
    def label(self):
        """``sky_sub.method``, or ``good_bits`` for a pipeline parameter."""
        return self.name if self.step is None else f"{self.step}.{self.name}"


@dataclass(frozen=True)
class Preset:
    """A named set of parameter values (:data:`PRESETS`)."""

    name: str
    summary: str  # what the preset is for and where its values come from
    settings: tuple[Setting, ...]

    def values(self, step=None):
        """``{name: value}`` the preset sets on ``step`` (None: on the pipeline)."""
        return {s.name: s.value for s in self.settings if s.step == step}


_MATCHED_SKY = (
    "the skies are matched where exposures overlap, so that sky differences between them are "
    "not taken for cosmic rays (whole-chip statistics can differ by 70 e- on a crowded field, "
    "docs/sky.md); globalmin sets the common level"
)
_CR_THRESHOLDS = (
    "a confident first pass, then a low second pass around its detections (which flagged pixels "
    "do not open): on the 18 simulated sets of bench/science.py (docs/science.md) this finds "
    "more cosmic rays than AstroDrizzle's '3.5 3.0' in every set (+0.45 to +1.6 points of "
    "recall) with no more false flags in any set (fewer in 17 of 18) and no more flags on "
    "stars; HAP's scale '1.5 1.2' did worse there (above AstroDrizzle in 10 of 12 sets)"
)

#: The presets, by name. Only values that differ from the built-in defaults are listed.
PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            "few_exposures",
            "2 to 5 exposures: AstroDrizzle's HAP single-visit settings for few inputs "
            "(drizzlepac svm *_astrodrizzle_any_n2.json), with the cosmic-ray thresholds "
            "chosen on bench/science.py's curves",
            (
                Setting("sky_sub", "method", "globalmin+match", _MATCHED_SKY),
                Setting("blot_cr", "snr", "5.0 2.0", _CR_THRESHOLDS),
            ),
        ),
        Preset(
            "many_exposures",
            "6 or more exposures: AstroDrizzle's HAP single-visit settings for many inputs "
            "(drizzlepac svm *_astrodrizzle_any_n6.json), with the cosmic-ray thresholds "
            "chosen on bench/science.py's curves",
            (
                Setting("sky_sub", "method", "globalmin+match", _MATCHED_SKY),
                Setting(
                    "create_median",
                    "combine_type",
                    "median",
                    "minmed is biased low with many inputs (drizzlepac issue #473; the step "
                    "warns above 5)",
                ),
                Setting(
                    "create_median",
                    "nhigh",
                    1,
                    "the highest value of each pixel, where a cosmic ray is likeliest, is left "
                    "out of the median (HAP n6)",
                ),
                Setting("blot_cr", "snr", "5.0 2.0", _CR_THRESHOLDS),
            ),
        ),
        Preset(
            "undersampled",
            "Undersampled PSFs (FWHM about 1 pixel: WFC3/IR, NICMOS): drizzlepac's own WFC3/IR "
            "settings (HAP svm parameters)",
            (
                Setting("sky_sub", "method", "globalmin+match", _MATCHED_SKY),
                Setting(
                    "blot_cr",
                    "snr",
                    "5.0 4.0",
                    "the median and its blot cannot reproduce a 1-pixel core: the default "
                    "thresholds flag the cores of about 30% of the stars, as in drizzlepac "
                    "(jwst issue #9989); HAP's WFC3/IR significances",
                ),
                Setting(
                    "blot_cr",
                    "scale",
                    "3.0 2.4",
                    "larger derivative multipliers absorb the blot's error at sharp cores "
                    "(HAP's WFC3/IR driz_cr_scale)",
                ),
            ),
        ),
        Preset(
            "jwst_imaging",
            "JWST level-2 _cal images (surface brightness, MJy/sr, which needs no pixel-area or "
            "exposure-time scaling): the JWST pipeline's choices (calwebb_image3)",
            (
                Setting(
                    None,
                    "good_bits",
                    "~DO_NOT_USE+NON_SCIENCE",
                    "JWST DQ: only DO_NOT_USE and NON_SCIENCE pixels are bad (resample's good "
                    "bits, skymatch's default); the steps inherit it",
                ),
                Setting(
                    "static_mask",
                    "skip",
                    True,
                    "the JWST pipeline has no static mask: bad pixels come flagged in DQ",
                ),
                Setting("sky_sub", "method", "match", "skymatch's default"),
                Setting("sky_sub", "stat", "mode", "skymatch's default"),
                Setting("driz_separate", "kernel", "square", "outlier_detection's default"),
                Setting(
                    "create_median",
                    "combine_type",
                    "median",
                    "outlier_detection's combination (the median of the good values)",
                ),
                Setting(
                    "blot_cr",
                    "noise",
                    "err",
                    "outlier_detection's noise: the ERR array (auto chooses it for surface "
                    "brightness too)",
                ),
                Setting("blot_cr", "snr", "5.0 4.0", "outlier_detection's default"),
                Setting("blot_cr", "interp", "linear", "JWST blots with linear interpolation"),
                Setting(
                    "driz_final",
                    "weight_type",
                    "ivm",
                    "resample's default: inverse read-noise variance (VAR_RNOISE)",
                ),
            ),
        ),
    )
}

#: Detectors whose PSF is about 1 pixel wide: (instrument, detector), None for any detector.
UNDERSAMPLED_DETECTORS = (("WFC3", "IR"), ("NICMOS", None))


@dataclass(frozen=True)
class Inputs:
    """What ``preset='auto'`` decides by: the inputs' detectors and their number of exposures.

    ``modes`` holds ``(telescope, instrument, detector)`` in capitals, the detector left out
    ('') for JWST, whose exposures span several detectors of one instrument.
    """

    modes: frozenset
    exposures: int

    @classmethod
    def of(cls, library):
        """The :class:`Inputs` of a :class:`~drizzlepipe.datamodels.ModelLibrary`, from its
        headers (no pixels read)."""
        modes = set()
        for telescope, instrument, detector in library.instruments:
            telescope, instrument = str(telescope or "").upper(), str(instrument or "").upper()
            detector = "" if telescope == "JWST" else str(detector or "").upper()
            modes.add((telescope, instrument, detector))
        return cls(frozenset(modes), len(library.group_indices))

    @property
    def mixed(self):
        """More than one instrument or detector (only with ``allow_mixed=True``)."""
        return len(self.modes) > 1

    @property
    def jwst(self):
        """Some input is a JWST exposure."""
        return any(telescope == "JWST" for telescope, _, _ in self.modes)

    @property
    def undersampled(self):
        """Some input comes from a detector of :data:`UNDERSAMPLED_DETECTORS`."""
        return any(
            instrument == known and wanted in (None, detector)
            for _, instrument, detector in self.modes
            for known, wanted in UNDERSAMPLED_DETECTORS
        )

    def __str__(self):
        """``4 HST WFC3/UVIS exposures``; ``3 exposures of HST ACS/WFC, HST WFC3/UVIS``."""
        noun = "exposure" if self.exposures == 1 else "exposures"
        names = sorted(filter(None, map(_mode_name, self.modes)))
        if self.mixed:
            return f"{self.exposures} {noun} of {', '.join(names)}"
        return " ".join([str(self.exposures), *names, noun])


def _mode_name(mode):
    telescope, instrument, detector = mode
    camera = "/".join(part for part in (instrument, detector) if part)
    return " ".join(part for part in (telescope, camera) if part)


@dataclass(frozen=True)
class Rule:
    """One rule of ``preset='auto'``: the preset it chooses, when (for people), and the test."""

    preset: str
    when: str
    holds: Callable[[Inputs], bool]
    warn: bool = False  # the choice deserves a warning: the user should choose


#: The rules of ``preset='auto'``, in order: the first that holds chooses the preset.
AUTO_RULES = (
    Rule(NONE, "mixed instruments or detectors: no preset suits all", lambda i: i.mixed, warn=True),
    Rule("jwst_imaging", "JWST images", lambda i: i.jwst),
    Rule("undersampled", "WFC3/IR or NICMOS: PSF about 1 pixel wide", lambda i: i.undersampled),
    Rule("many_exposures", "6 or more exposures", lambda i: i.exposures >= 6),
    Rule("few_exposures", "2 to 5 exposures", lambda i: i.exposures >= 2),
    Rule(NONE, "1 exposure: nothing to compare", lambda i: True),
)


def choose(inputs):
    """The first of :data:`AUTO_RULES` that holds for ``inputs``.

    Parameters
    ----------
    inputs : Inputs
        The inputs' detectors and number of exposures.

    Returns
    -------
    Rule
        Its ``preset`` is the name chosen (``"none"``: the built-in defaults).
    """
    return next(rule for rule in AUTO_RULES if rule.holds(inputs))


def _describe_choice(preset, inputs):
    """(level, the line saying which preset runs and why)."""
    rule = choose(inputs)
    if preset != AUTO:
        auto = "auto's choice too" if rule.preset == preset else f"auto would choose {rule.preset}"
        return logging.INFO, f"preset {preset} (set by the user; {auto}: {inputs})"
    line = f"preset auto -> {rule.preset}: {inputs} ({rule.when})"
    if rule.warn:
        return logging.WARNING, f"{line}; the built-in defaults run unless preset names one"
    return logging.INFO, line


@contextmanager
def applied(pipeline, library):
    """Run a block with ``pipeline``'s preset in force: the preset ``pipeline.preset`` names or
    ``auto`` chooses from ``library``'s headers gives its values to the parameters still None,
    the built-in defaults the rest; all of them are None again after the block.

    Logs one line (INFO; WARNING when mixed inputs leave ``auto`` no preset) with the preset and
    why, and at DEBUG the values it set and the user's values it kept.

    Parameters
    ----------
    pipeline : DrizzlePipeline
        With its steps as attributes (``pipeline.sky_sub``...).
    library : ModelLibrary
        The inputs.

    Yields
    ------
    str
        The name of the preset in force (``"none"``: the built-in defaults).
    """
    inputs = Inputs.of(library)
    name = choose(inputs).preset if pipeline.preset == AUTO else pipeline.preset
    level, line = _describe_choice(pipeline.preset, inputs)
    log.log(level, line)
    settings = PRESETS[name].settings if name != NONE else ()
    steps = {None: pipeline, **{step: getattr(pipeline, step) for step in pipeline.step_defs}}
    user = {s: getattr(steps[s.step], s.name) for s in settings}
    log.debug(
        "preset %s sets %s; the user's values kept: %s", name,
        ", ".join(f"{s.label}={s.value!r}" for s in settings if user[s] is None) or "nothing",
        ", ".join(f"{s.label}={user[s]!r}" for s in settings if user[s] is not None) or "none",
    )  # fmt: skip
    # the preset's values first, then the built-in defaults where the preset has none
    preset_values = [(steps[s.step], s.name, s.value) for s in settings]
    builtin = [(step, key, value) for step in steps.values()
               for key, value in step.builtin_defaults.items()]  # fmt: skip
    with filled_parameters(preset_values), filled_parameters(builtin):
        yield name


# --------------------------------------------------------------------------------------------
# The parameter files in cfg/
# --------------------------------------------------------------------------------------------

_ASDF_HEADER = """#ASDF 1.0.0
#ASDF_STANDARD 1.5.0
%YAML 1.1
%TAG ! tag:stsci.edu:asdf/
--- !core/asdf-1.1.0
"""


def _flow(mapping):
    """A YAML flow mapping, the values in JSON (quoted strings, true/false)."""
    return "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in mapping.items()) + "}"


def _comment(text):
    return textwrap.fill(text, 99, initial_indent="# ", subsequent_indent="#   ")


def parameter_file_text(name):
    """The ASDF parameter file of preset ``name`` for ``strun`` (``cfg/<name>.asdf``): the
    preset's values with their reasons as comments, and ``preset: <name>``, so that the
    parameters it leaves at None get the built-in defaults, not another preset's values."""
    from .convert_pars import PIPELINE_CLASS, PIPELINE_NAME, STEP_CLASSES

    preset = PRESETS[name]
    lines = [_comment(f"{preset.summary}."), _comment(
        "Written from the table in src/drizzlepipe/presets.py (python -m drizzlepipe.presets "
        "cfg): edit the table, not this file. The same values come with preset='auto' when it "
        "chooses this preset (docs/presets.md)."), "#"]  # fmt: skip
    lines += [_comment(f"{s.label} = {s.value!r}: {s.reason}.") for s in preset.settings]
    lines += [
        f"class: {PIPELINE_CLASS}",
        f"name: {PIPELINE_NAME}",
        f"parameters: {_flow({'preset': name, **preset.values(None)})}",
        "steps:",
    ]
    for step, step_class in STEP_CLASSES.items():
        if values := preset.values(step):
            lines += [f"- class: {step_class}", f"  name: {step}",
                      f"  parameters: {_flow(values)}"]  # fmt: skip
    return _ASDF_HEADER + "\n".join(lines) + "\n...\n"


def write_parameter_files(directory):
    """Write ``<directory>/<preset>.asdf`` for every preset; returns the paths written."""
    paths = []
    for name in PRESETS:
        path = Path(directory) / f"{name}.asdf"
        path.write_text(parameter_file_text(name))
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover - a developer's command
    for written in write_parameter_files(sys.argv[1] if len(sys.argv) > 1 else "cfg"):
        print(f"wrote {written}")
