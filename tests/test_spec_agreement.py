"""The values a step's spec offers, the values its algorithms accept and the values convert-pars
writes are the same sets: an option the spec lists must run, an algorithm's choice must be
reachable from strun, and every AstroDrizzle value convert-pars maps must pass the spec."""

from __future__ import annotations

import pytest
from configobj.validate import Validator

from drizzlepipe import convert_pars
from drizzlepipe.algorithms.blot import BLOT_INTERPOLANTS
from drizzlepipe.algorithms.combine import COMBINE_TYPES
from drizzlepipe.algorithms.resample import SUPPORTED_KERNELS, WEIGHT_TYPES
from drizzlepipe.algorithms.sky import SKY_METHODS, SKY_STATISTICS
from drizzlepipe.steps import (
    BlotCRStep,
    CreateMedianStep,
    DrizFinalStep,
    DrizSeparateStep,
    SkySubStep,
)


def _options(step_class, name):
    kind, args, _, _ = Validator()._parse_with_caching(step_class.load_spec_file()[name])
    assert kind == "option", f"{step_class.__name__}.{name} is not an option"
    return set(args)


# (step, parameter, what the algorithms accept, what convert-pars writes)
CHOICES = [
    (DrizSeparateStep, "kernel", set(SUPPORTED_KERNELS), convert_pars._KERNELS),
    (DrizFinalStep, "kernel", set(SUPPORTED_KERNELS), convert_pars._KERNELS),
    (DrizFinalStep, "weight_type", set(WEIGHT_TYPES), ()),
    (DrizFinalStep, "units", {"cps", "counts"}, convert_pars._UNITS),
    (CreateMedianStep, "combine_type", set(COMBINE_TYPES), convert_pars._COMBINE_TYPES),
    # the algorithm also takes drizzle's spellings (lanczos3 for lan3): same interpolants
    (
        BlotCRStep,
        "interp",
        set(BLOT_INTERPOLANTS) - {"lanczos3", "lanczos5"},
        convert_pars._BLOT_INTERPS,
    ),  # fmt: skip
    (SkySubStep, "method", set(SKY_METHODS), convert_pars._SKY_METHODS),
    (SkySubStep, "stat", set(SKY_STATISTICS), convert_pars._SKY_STATS),
]


@pytest.mark.parametrize(
    ("step_class", "name", "accepted", "converted"),
    CHOICES,
    ids=[f"{c[0].__name__}.{c[1]}" for c in CHOICES],
)
def test_spec_options_are_what_the_algorithms_accept(step_class, name, accepted, converted):
    offered = _options(step_class, name)
    assert offered == accepted
    if name == "interp":
        assert {BLOT_INTERPOLANTS[o] for o in offered} == set(BLOT_INTERPOLANTS.values())
    assert set(converted) <= offered, "convert-pars writes a value the spec refuses"


def test_lanczos2_is_offered_and_the_drizzle_steps_share_their_grid_parameters():
    # lanczos2 was accepted by the algorithms but missing from the specs (issue 17)
    assert "lanczos2" in _options(DrizFinalStep, "kernel")
    separate = DrizSeparateStep.load_spec_file()
    final = DrizFinalStep.load_spec_file()
    grid = ["rotation", "pixel_scale", "pixel_scale_ratio", "output_shape", "crval", "crpix",
            "refimage", "stepsize", "max_pixels"]  # fmt: skip
    for name in grid:
        assert separate[name] == final[name], name
        assert separate.inline_comments[name] == final.inline_comments[name], name


def test_the_parameter_template_holds_every_default():
    # cfg/drizzle_pipeline.asdf is documented as every parameter at its default: it must not
    # drift from the specs (a step's good_bits '0' left there would override the pipeline's)
    from pathlib import Path

    import asdf

    from drizzlepipe.pipelines import DrizzlePipeline

    template = Path(__file__).resolve().parents[1] / "cfg" / "drizzle_pipeline.asdf"
    with asdf.open(template) as handle:
        parameters = dict(handle.tree["parameters"])
        steps = {name: dict(handle.tree["steps"][i]["parameters"])
                 for i, name in enumerate(s["name"] for s in handle.tree["steps"])}  # fmt: skip
    defaults = DrizzlePipeline().get_pars(full_spec=True)
    expected_steps = defaults.pop("steps")
    assert parameters == defaults
    assert steps == expected_steps
