"""stpipe entry point: the steps and pipelines drizzlepipe provides.

The list is static so that ``stpipe list`` and ``strun`` do not import the step modules;
``tests/test_integration.py`` checks it against the classes' ``class_alias``.
"""

# (fully qualified class name, class_alias, is_pipeline); entries are added as the steps land.
STEPS = [
    ("drizzlepipe.steps.StaticMaskStep", "static_mask", False),
    ("drizzlepipe.steps.SkySubStep", "sky_sub", False),
    ("drizzlepipe.steps.DrizSeparateStep", "driz_separate", False),
    ("drizzlepipe.steps.CreateMedianStep", "create_median", False),
    ("drizzlepipe.steps.BlotCRStep", "blot_cr", False),
    ("drizzlepipe.steps.DrizFinalStep", "driz_final", False),
    ("drizzlepipe.pipelines.DrizzlePipeline", "drizzle_pipeline", True),
]


def get_steps():
    """Return ``[(class path, alias, is_pipeline), ...]`` for stpipe's ``stpipe.steps`` group."""
    return list(STEPS)
