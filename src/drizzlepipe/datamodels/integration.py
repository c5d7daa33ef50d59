"""asdf entry point: register drizzlepipe's data-model schemas with asdf."""

import importlib.resources

from asdf.resource import DirectoryResourceMapping

SCHEMA_URI_PREFIX = "http://drizzlepipe.org/schemas/"


def get_resource_mappings():
    """Return the resource mapping that serves ``schemas/*.yaml`` under our URI prefix.

    Registered through the ``asdf.resource_mappings`` entry point in ``pyproject.toml``.
    """
    root = importlib.resources.files("drizzlepipe.datamodels") / "schemas"
    return [DirectoryResourceMapping(root, SCHEMA_URI_PREFIX)]
