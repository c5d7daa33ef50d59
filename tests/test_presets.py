"""Parameter presets (issue 19, item 4): ``preset='auto'`` chooses by instrument, detector and
number of exposures from the inputs' headers; a value the user set in any way wins; the
built-in defaults (``preset='none'``, standalone steps) are AstroDrizzle's; ``cfg/*.asdf`` are
the package's table.

Rule expectations are written out here from the issue (JWST -> jwst_imaging, WFC3/IR and NICMOS
-> undersampled, 6+ exposures -> many, 2-5 -> few, 1 -> none, mixed -> none); the built-in
values are checked against AstroDrizzle's own defaults as convert-pars knows them
(``astrodrizzle.cfgspc``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import asdf
import numpy as np
import pytest
from configobj.validate import Validator
from stpipe import Step

from drizzlepipe import convert_pars, presets
from drizzlepipe.datamodels import ModelLibrary, build_association, open_path
from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.steps import CreateMedianStep, DrizSeparateStep, SkySubStep
from drizzlepipe.steps.base import parameter_docs
from fitsfactory import make_hst_flt, make_plain_fits
from instrument_files import as_stis_imsets, make_ir_flt, make_nicmos, make_wfpc2_c0m

REPO = Path(__file__).resolve().parents[1]
STEPS = DrizzlePipeline.step_defs

# ---------------------------------------------------------------------------------------------
# The rules of preset='auto', on headers as each instrument writes them
# ---------------------------------------------------------------------------------------------


def _hst(directory, count, instrument="WFC3", detector="UVIS", chips=2, start=0):
    paths = []
    for n in range(start, start + count):
        path = Path(directory) / f"{instrument.lower()}{n}_flt.fits"
        make_hst_flt(path, rootname=f"jx{n:03d}aaq", instrument=instrument, detector=detector,
                     chips=chips, shape=(20, 24), seed=n)  # fmt: skip
        paths.append(path)
    return paths


def _ir(directory, count):
    paths = [directory / f"ib46{n:02d}cpq_flt.fits" for n in range(count)]
    for n, path in enumerate(paths):
        make_ir_flt(path, rootname=path.name[:9], seed=n)
    return paths


def _nicmos(directory, count):
    paths = [directory / f"n8u3{n:02d}abq_cal.fits" for n in range(count)]
    for path in paths:
        make_nicmos(path, rootname=path.name[:9])
    return paths


def _jwst(directory):
    from test_jwst_end_to_end import _write_exposures

    paths, _, _ = _write_exposures(directory, np.random.default_rng(5))
    return paths


def _stis_imsets(directory):
    # one file holding three CR-split imsets: three exposures
    (directory / "sources").mkdir()
    sources = _hst(directory / "sources", 3, chips=1)
    return [as_stis_imsets(sources, directory / "o4k19a010_flt.fits")]


def _wfpc2(directory):
    # DETECTOR 1-4 in each SCI header: four chips of one camera, not mixed detectors
    return [make_wfpc2_c0m(directory, rootname=root)[0] for root in ("u2ab0101t", "u2ab0102t")]


def _plain(directory):
    paths = [directory / f"frame{n}.fits" for n in range(3)]
    for n, path in enumerate(paths):
        make_plain_fits(path, exptime=50.0 + n)
    return paths


def _mixed(directory):
    return _hst(directory, 2) + _hst(directory, 2, instrument="ACS", detector="WFC", start=2)


RULE_CASES = [
    # (inputs, allow_mixed, preset chosen, what the log line says about them)
    (lambda d: _hst(d, 1), False, "none", "1 HST WFC3/UVIS exposure"),
    (lambda d: _hst(d, 3), False, "few_exposures", "3 HST WFC3/UVIS exposures"),  # 6 chips
    (lambda d: _hst(d, 5, "ACS", "WFC"), False, "few_exposures", "5 HST ACS/WFC exposures"),
    (lambda d: _hst(d, 6, "ACS", "WFC"), False, "many_exposures", "6 HST ACS/WFC exposures"),
    (lambda d: _ir(d, 2), False, "undersampled", "2 HST WFC3/IR exposures"),
    (lambda d: _ir(d, 7), False, "undersampled", "7 HST WFC3/IR exposures"),
    (lambda d: _nicmos(d, 2), False, "undersampled", "2 HST NICMOS exposures"),
    (_jwst, False, "jwst_imaging", "4 JWST NIRCAM exposures"),
    (_stis_imsets, False, "few_exposures", "3 HST STIS/CCD exposures"),
    (_wfpc2, False, "few_exposures", "2 HST WFPC2 exposures"),
    (_plain, False, "few_exposures", "3 exposures"),
    (_mixed, True, "none", "4 exposures of HST ACS/WFC, HST WFC3/UVIS"),
]


@pytest.mark.parametrize(
    ("make", "allow_mixed", "expected", "described"),
    RULE_CASES,
    ids=[case[3] for case in RULE_CASES],
)
def test_auto_rules_on_each_instruments_headers(make, allow_mixed, expected, described, tmp_path):
    library = ModelLibrary([str(p) for p in make(tmp_path)], allow_mixed=allow_mixed)
    inputs = presets.Inputs.of(library)
    assert presets.choose(inputs).preset == expected
    assert str(inputs) == described


def test_exposures_are_counted_not_chips(tmp_path):
    # three 2-chip exposures: six chips, still "few"; a seventh chip-less count would say many
    library = ModelLibrary([str(p) for p in _hst(tmp_path, 3)])
    assert len(library) == 6
    assert presets.Inputs.of(library).exposures == 3


def test_instruments_come_from_headers_for_every_kind_of_library(tmp_path):
    files = [str(p) for p in _hst(tmp_path, 2) + _ir(tmp_path, 1)]
    from_files = ModelLibrary(files, allow_mixed=True).instruments
    assert sorted(from_files) == [("HST", "WFC3", "IR"), ("HST", "WFC3", "UVIS"),
                                  ("HST", "WFC3", "UVIS")]  # fmt: skip
    # a library of models, and one of an association made by hand (read from the chips)
    models = [open_path(f) for f in files]
    assert sorted(ModelLibrary(models, allow_mixed=True).instruments) == sorted(from_files)
    asn = build_association(files, allow_mixed=True)
    del asn["instruments"]
    assert sorted(ModelLibrary(asn, allow_mixed=True).instruments) == sorted(from_files)


def test_mixed_inputs_get_no_preset_and_a_warning(tmp_path, caplog):
    library = ModelLibrary([str(p) for p in _mixed(tmp_path)], allow_mixed=True)
    pipeline = DrizzlePipeline()
    with caplog.at_level(logging.INFO, logger="drizzlepipe.presets"):
        with presets.applied(pipeline, library) as name:
            assert name == "none"
            assert pipeline.sky_sub.method == "localmin"  # the built-in default
    (record,) = [r for r in caplog.records if r.name == "drizzlepipe.presets"]
    assert record.levelno == logging.WARNING
    assert "preset auto -> none" in record.getMessage() and "mixed" in record.getMessage()


# ---------------------------------------------------------------------------------------------
# The table: None-default parameters, built-in values, cfg files
# ---------------------------------------------------------------------------------------------


def _spec_default(step_class, name):
    return Validator().get_default_value(step_class.load_spec_file()[name])


def test_every_parameter_a_preset_sets_has_the_spec_default_none():
    for preset in presets.PRESETS.values():
        for setting in preset.settings:
            owner = DrizzlePipeline if setting.step is None else STEPS[setting.step]
            assert _spec_default(owner, setting.name) is None, setting.label
            if setting.step is not None:
                # the step knows its built-in value, and the preset changes it
                builtin = owner.builtin_defaults[setting.name]
                assert setting.value != builtin, f"{preset.name}: {setting.label} is built in"
    for step_class in STEPS.values():
        for name, value in step_class.builtin_defaults.items():
            assert _spec_default(step_class, name) is None, name
            comment = step_class.load_spec_file().inline_comments[name]
            assert "None: the preset's, else" in comment and str(value) in comment, comment


def test_the_built_in_defaults_are_astrodrizzles():
    # convert-pars writes AstroDrizzle's defaults (its cfgspc) when given nothing
    tree, _ = convert_pars.convert({})
    astrodrizzle = {step["name"]: step["parameters"] for step in tree["steps"]}
    compared = 0
    for name, step_class in STEPS.items():
        for parameter, value in step_class.builtin_defaults.items():
            if parameter in astrodrizzle[name]:
                assert astrodrizzle[name][parameter] == value, f"{name}.{parameter}"
                compared += 1
    assert compared == 10  # every one but blot_cr.noise, which AstroDrizzle does not have


def test_preset_option_lists_every_preset():
    kind, args, _, default = Validator()._parse_with_caching(
        DrizzlePipeline.load_spec_file()["preset"]
    )
    assert (kind, default) == ("option", "auto")
    assert set(args) == {"auto", "none", *presets.PRESETS}


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_cfg_files_are_the_package_table(name):
    path = REPO / "cfg" / f"{name}.asdf"
    preset = presets.PRESETS[name]
    with asdf.open(path) as handle:
        parameters = dict(handle.tree["parameters"])
        steps = {s["name"]: dict(s["parameters"]) for s in handle.tree["steps"]}
    assert parameters == {"preset": name, **preset.values(None)}
    assert steps == {step: preset.values(step) for step in STEPS if preset.values(step)}
    # stpipe reads it as the pipeline with those values; and its comments are current
    pipeline = Step.from_config_file(str(path))
    assert pipeline.preset == name
    for setting in preset.settings:
        owner = pipeline if setting.step is None else getattr(pipeline, setting.step)
        assert getattr(owner, setting.name) == setting.value
    assert path.read_text() == presets.parameter_file_text(name), "python -m drizzlepipe.presets"


def test_docs_tables_show_the_built_in_default_and_what_none_means():
    rows = {row.name: row for row in parameter_docs(SkySubStep)}
    assert "'localmin'" in rows["method"].default and "preset" in rows["method"].default
    assert rows["nclip"].default == "5"  # a parameter no preset sets is shown as before
    static = {row.name: row for row in parameter_docs(STEPS["static_mask"])}
    assert "False" in static["skip"].default  # a common parameter a preset sets is listed


# ---------------------------------------------------------------------------------------------
# Runs: the user's values win, whatever the route; built-in defaults; the log
# ---------------------------------------------------------------------------------------------


def _kernels_and_median(out):
    """What the run did: the singles' kernel and the median's combination, from its products."""
    kernels = {open_path(str(p)).meta.resample.kernel for p in out.glob("*_single.fits")}
    median = open_path(str(next(out.glob("*_med.fits")))).meta.resample.combine_type
    return kernels, median


def _sky_methods(library):
    """The sky methods the chips of ``library`` record (SkySub's ``meta.background.method``)."""
    methods = set()
    with library:
        for index, model in enumerate(library):
            methods.add(model.meta.background.method)
            library.shelve(model, index, modify=False)
    return methods


SAVE_SINGLES_AND_MEDIAN = {"driz_separate": {"save_results": True},
                           "create_median": {"save_results": True}}  # fmt: skip


@pytest.fixture
def files(small_simulation):
    return [str(p) for p in small_simulation.flt_files]


@pytest.fixture
def many_with_square_singles(monkeypatch):
    """many_exposures plus a square kernel for the singles (HAP's value; the package's preset
    keeps turbo): a value the products show, to see which of the preset's values and the
    user's a run used."""
    many = presets.PRESETS["many_exposures"]
    square = presets.Setting("driz_separate", "kernel", "square", "a witness for the tests")
    witnessed = presets.Preset(many.name, many.summary, (*many.settings, square))
    monkeypatch.setitem(presets.PRESETS, "many_exposures", witnessed)


def test_python_steps_values_win_even_when_equal_to_the_built_in(
    files, tmp_path, many_with_square_singles
):
    # many_exposures sets the sky method, the singles' kernel and the median's combination;
    # the user gives the last two their built-in values
    steps = {"driz_separate": {"kernel": "turbo", "save_results": True},
             "create_median": {"combine_type": "minmed", "save_results": True}}  # fmt: skip
    library = ModelLibrary(files)
    DrizzlePipeline.call(library, preset="many_exposures", steps=steps, output_dir=str(tmp_path),
                         scheduler="serial", configure_log=False)  # fmt: skip
    assert _kernels_and_median(tmp_path) == ({"turbo"}, "minmed")
    assert _sky_methods(library) == {"globalmin+match"}  # what the user left unset: the preset's


def test_command_line_values_win(files, tmp_path, many_with_square_singles):
    pipeline = Step.from_cmdline(
        ["drizzle_pipeline", *files, "--preset=many_exposures",
         "--steps.driz_separate.kernel=turbo", "--steps.driz_separate.save_results=true",
         "--steps.create_median.save_results=true", f"--output_dir={tmp_path}",
         "--scheduler=serial", "--log-stream=null"]
    )  # fmt: skip
    assert _kernels_and_median(tmp_path) == ({"turbo"}, "median")
    # after the run the pipeline holds the user's values only: a second run decides afresh
    assert pipeline.driz_separate.kernel == "turbo"
    assert pipeline.create_median.combine_type is None and pipeline.sky_sub.method is None


def test_parameter_file_values_win(files, tmp_path, many_with_square_singles):
    pars = tmp_path / "pars.asdf"
    pars.write_text(
        "#ASDF 1.0.0\n#ASDF_STANDARD 1.5.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
        "--- !core/asdf-1.1.0\nclass: drizzlepipe.pipelines.DrizzlePipeline\n"
        "name: DrizzlePipeline\nparameters: {preset: many_exposures}\nsteps:\n"
        "- class: drizzlepipe.steps.CreateMedianStep\n  name: create_median\n"
        "  parameters: {combine_type: minmed}\n...\n"
    )
    out = tmp_path / "out"
    DrizzlePipeline.call(files, config_file=str(pars), steps=SAVE_SINGLES_AND_MEDIAN,
                         output_dir=str(out), scheduler="serial", configure_log=False)  # fmt: skip
    assert _kernels_and_median(out) == ({"square"}, "minmed")


def test_attribute_set_on_a_step_wins(files, tmp_path, many_with_square_singles):
    pipeline = DrizzlePipeline(preset="many_exposures", steps=SAVE_SINGLES_AND_MEDIAN,
                               output_dir=str(tmp_path), scheduler="serial")  # fmt: skip
    pipeline.create_median.combine_type = "minmed"
    pipeline.run(files)
    assert _kernels_and_median(tmp_path) == ({"square"}, "minmed")
    assert pipeline.create_median.combine_type == "minmed"


ASTRODRIZZLE_DEFAULTS = {
    "static_mask": {"skip": False},
    "sky_sub": {"method": "localmin", "stat": "median"},
    "driz_separate": {"kernel": "turbo"},
    "create_median": {"combine_type": "minmed", "nhigh": 0},
    "blot_cr": {"interp": "poly5", "snr": "3.5 3.0", "scale": "1.2 0.7", "noise": "auto"},
    "driz_final": {"weight_type": "exptime"},
}


def _final_arrays(inputs, **kwargs):
    final = DrizzlePipeline.call(inputs, scheduler="serial", configure_log=False, **kwargs)
    return final.data, final.wht, final.err


def test_preset_none_is_the_astrodrizzle_defaults_and_auto_differs(files):
    none = _final_arrays(files, preset="none")
    explicit = _final_arrays(files, preset="few_exposures", steps=ASTRODRIZZLE_DEFAULTS)
    for ours, theirs in zip(none, explicit):
        np.testing.assert_array_equal(ours, theirs)
    auto = _final_arrays(files)  # few_exposures: another sky and CR test
    assert not np.array_equal(auto[0], none[0], equal_nan=True)


def test_auto_is_the_cfg_file_on_jwst_data(tmp_path):
    inputs = [str(p) for p in _jwst(tmp_path)]
    auto = _final_arrays(inputs)
    cfg = _final_arrays(inputs, config_file=str(REPO / "cfg" / "jwst_imaging.asdf"))
    for ours, theirs in zip(auto, cfg):
        np.testing.assert_array_equal(ours, theirs)
    none = _final_arrays(inputs, preset="none")
    assert not np.array_equal(auto[1], none[1], equal_nan=True)  # ivm weights, not exptime


def test_standalone_steps_keep_their_built_in_defaults(tmp_path):
    files = [str(p) for p in _hst(tmp_path, 2)]
    library = SkySubStep.call(files)
    assert _sky_methods(library) == {"localmin"}
    step = DrizSeparateStep(output_dir=str(tmp_path / "singles"), save_results=True)
    singles = step.run(library)
    assert {open_path(s).meta.resample.kernel for s in singles} == {"turbo"}
    assert step.kernel is None  # left as the user left it
    median = CreateMedianStep.call(singles)
    assert median.meta.resample.combine_type == "minmed"
    # a value given to the step alone is its own
    assert _sky_methods(SkySubStep.call(files, method="globalmin")) == {"globalmin"}


def test_one_info_line_names_the_preset_and_why_and_debug_lists_the_values(files, caplog):
    pipeline = DrizzlePipeline(steps={"blot_cr": {"snr": "3.5 3.0"}}, scheduler="serial")
    with caplog.at_level(logging.DEBUG, logger="drizzlepipe.presets"):
        pipeline.run(files)
        pipeline.run(files[:1])  # the same instance decides again for other inputs
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "drizzlepipe.presets"]  # fmt: skip
    info = [text for level, text in lines if level == logging.INFO]
    assert info == [
        "preset auto -> few_exposures: 4 HST WFC3/UVIS exposures (2 to 5 exposures)",
        "preset auto -> none: 1 HST WFC3/UVIS exposure (1 exposure: nothing to compare)",
    ]
    debug = [text for level, text in lines if level == logging.DEBUG][0]
    assert "sky_sub.method='globalmin+match'" in debug
    assert "blot_cr.snr" not in debug.split("the user's values kept")[0]  # the user's, kept
    assert "the user's values kept: blot_cr.snr='3.5 3.0'" in debug


def test_a_preset_chosen_by_the_user_is_logged_with_what_auto_would_choose(files, caplog):
    with caplog.at_level(logging.INFO, logger="drizzlepipe.presets"):
        DrizzlePipeline.call(files[:2], preset="undersampled", scheduler="serial",
                             configure_log=False)  # fmt: skip
    assert [r.getMessage() for r in caplog.records if r.name == "drizzlepipe.presets"] == [
        "preset undersampled (set by the user; auto would choose few_exposures: 2 HST "
        "WFC3/UVIS exposures)"
    ]
