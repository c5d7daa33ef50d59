"""Sphinx directives that write documentation tables from the code, so that they cannot drift.

``.. step-parameters:: drizzlepipe.steps.SkySubStep`` renders the step's parameters (name, type,
default, limits, description) from its stpipe spec; ``:common:`` adds stpipe's common ones.
``.. schema-keywords:: image`` renders a data model schema's metadata (path, FITS keyword,
extension, title). ``.. preset-rules::``, ``.. preset-values:: few_exposures`` and
``.. preset-parameters::`` render the tables of :mod:`drizzlepipe.presets`: the rules of
``preset='auto'``, what a preset sets and why, and every parameter a preset may set.
"""

from __future__ import annotations

import importlib
from importlib import resources

import yaml
from docutils import nodes
from docutils.parsers.rst import Directive, directives


def _table(headers, rows, widths):
    table = nodes.table()
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head += _row(headers)
    body = nodes.tbody()
    group += body
    for row in rows:
        body += _row(row)
    return table


def _row(cells):
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=str(cell))
        row += entry
    return row


class StepParameters(Directive):
    """The argument table of a step or pipeline class."""

    required_arguments = 1
    option_spec = {"common": directives.flag}

    def run(self):
        from drizzlepipe.steps.base import parameter_docs

        module_name, _, class_name = self.arguments[0].rpartition(".")
        step_class = getattr(importlib.import_module(module_name), class_name)
        rows = [
            (f"{p.name}", p.kind, p.default, p.limits, p.description)
            for p in parameter_docs(step_class, common="common" in self.options)
        ]
        headers = ("parameter", "type", "default", "limits", "description")
        return [_table(headers, rows, (14, 16, 10, 8, 52))]


def _schema_rows(schema, prefix=""):
    rows = []
    for name, node in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        keyword = node.get("fits_keyword") or ""
        extension = node.get("fits_hdu") or ("PRIMARY" if keyword else "")
        if keyword or node.get("fits_hdu") or node.get("datatype"):
            rows.append((path, keyword, extension, node.get("title", "")))
        elif node.get("type") != "object" or not node.get("properties"):
            rows.append((path, "", "", node.get("title", "")))
        rows.extend(_schema_rows(node, path))
    for part in schema.get("allOf") or ():
        rows.extend(_schema_rows(part, prefix))
    return rows


class SchemaKeywords(Directive):
    """The metadata and arrays of a drizzlepipe schema (``core``, ``image``, ``resampled``)."""

    required_arguments = 1

    def run(self):
        package = resources.files("drizzlepipe.datamodels") / "schemas"
        schema = yaml.safe_load((package / f"{self.arguments[0]}.schema.yaml").read_text())
        rows = _schema_rows(schema)
        headers = ("attribute", "FITS keyword", "extension", "meaning")
        return [_table(headers, rows, (26, 12, 10, 52))]


def _preset_owner(setting):
    from drizzlepipe.pipelines import DrizzlePipeline

    return DrizzlePipeline if setting.step is None else DrizzlePipeline.step_defs[setting.step]


def _parameter_path(setting):
    return setting.name if setting.step is None else f"steps.{setting.step}.{setting.name}"


def _builtin_text(setting):
    # a pipeline-level parameter's None means each step's own value
    builtin = _preset_owner(setting).builtin_defaults.get(setting.name)
    return "None (the steps' own)" if setting.step is None else repr(builtin)


class PresetRules(Directive):
    """The rules of ``preset='auto'``, in the order they are tried."""

    def run(self):
        from drizzlepipe.presets import AUTO_RULES

        rows = [(str(n), rule.when, rule.preset + (" (warned)" if rule.warn else ""))
                for n, rule in enumerate(AUTO_RULES, start=1)]  # fmt: skip
        return [_table(("rule", "the inputs are", "preset"), rows, (6, 60, 20))]


class PresetValues(Directive):
    """What one preset sets: parameter, value, built-in default, why."""

    required_arguments = 1

    def run(self):
        from drizzlepipe.presets import PRESETS

        rows = [
            (_parameter_path(s), repr(s.value), _builtin_text(s), s.reason)
            for s in PRESETS[self.arguments[0]].settings
        ]
        headers = ("parameter", "value", "built-in", "why")
        return [_table(headers, rows, (24, 16, 12, 48))]


class PresetParameters(Directive):
    """Every parameter a preset may set, its built-in default and the presets that set it."""

    def run(self):
        from drizzlepipe.presets import PRESETS

        users = {}
        for preset in PRESETS.values():
            for setting in preset.settings:
                users.setdefault((setting.step, setting.name), (setting, []))[1].append(
                    f"{preset.name} {setting.value!r}"
                )
        from drizzlepipe.pipelines import DrizzlePipeline

        order = [None, *DrizzlePipeline.step_defs]  # the pipeline's, then the steps' in order
        listed = sorted(users.values(), key=lambda used: order.index(used[0].step))
        rows = [(_parameter_path(s), _builtin_text(s), ", ".join(names)) for s, names in listed]
        return [_table(("parameter", "built-in", "set by"), rows, (28, 16, 56))]


def setup(app):
    """Register the directives."""
    app.add_directive("step-parameters", StepParameters)
    app.add_directive("schema-keywords", SchemaKeywords)
    app.add_directive("preset-rules", PresetRules)
    app.add_directive("preset-values", PresetValues)
    app.add_directive("preset-parameters", PresetParameters)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
