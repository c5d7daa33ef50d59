"""After ``make docs``: every parameter of every step (and of the pipeline) appears in the
table of its page in the built HTML. Exits 1 naming what is missing."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.steps.base import parameter_docs

PAGES = {"pipeline.html": DrizzlePipeline}
for name, step_class in DrizzlePipeline.step_defs.items():
    PAGES[f"steps/{name}.html"] = step_class


def main(built):
    missing = []
    for page, step_class in PAGES.items():
        text = html.unescape(re.sub(r"<[^>]+>", " ", (Path(built) / page).read_text()))
        cells = set(text.split())
        common = step_class is DrizzlePipeline
        for parameter in parameter_docs(step_class, common=common):
            if parameter.name not in cells:
                missing.append(f"{page}: {parameter.name}")
    if missing:
        print("parameters missing from their pages:\n  " + "\n  ".join(missing))
        return 1
    print(f"every parameter is on its page ({len(PAGES)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
