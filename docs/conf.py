"""Sphinx configuration of drizzlepipe's documentation (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from drizzlepipe import __version__  # noqa: E402

project = "drizzlepipe"
author = "drizzlepipe developers"
release = version = __version__
extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "drizzlepipe_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
html_theme = "alabaster"
html_title = f"drizzlepipe {version}"
html_static_path = []
# Markdown pages link to source files of the repository by their path; those are not documents.
suppress_warnings = ["myst.xref_missing"]
