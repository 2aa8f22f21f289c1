"""Every stream-spec setting with its type and default, generated from the spec's models.

Written for a newcomer writing a spec of their own: the README shows examples, and a misspelt key is
answered with the keys allowed there, but nothing listed every setting. Generated, so it cannot
drift from what the loader accepts (docs/spec-reference.md is this text; a test keeps them equal).
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from dagster_project.spec import StreamSpec, limit_text, section_model

TITLE = "# Stream spec reference"


def spec_reference() -> str:
    """The reference as Markdown: the top level, then each section, in the order a spec reads."""
    out = [
        TITLE,
        "",
        "Generated from `dagster_project/spec.py` (`streamfit check --reference` prints it). A spec is one",
        "YAML file in `STREAMFIT_STREAMS`; unknown keys are refused. Each section lists its settings, their",
        "types and defaults; the text above each table is the section's own documentation.",
    ]
    sections = _sections(StreamSpec, "the spec (top level)")
    names = {model: path.strip("`").removesuffix("[]") for path, model in sections}
    for path, model in sections:
        out += ["", f"## {path}", ""]
        doc = inspect.cleandoc(model.__doc__ or "")
        if doc:
            out += [doc, ""]
        out += ["| setting | type | default |", "| --- | --- | --- |"]
        for name, field in model.model_fields.items():
            out.append(f"| `{name}` | {_type_text(field.annotation, names)} | {_default_text(field)} |")
        out += _limits_text(model)
    return "\n".join(out) + "\n"


def _sections(model: type[BaseModel], path: str, seen: set | None = None) -> list[tuple[str, type[BaseModel]]]:
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    found = [(path, model)]
    for name, field in model.model_fields.items():
        inner = section_model(field.annotation)
        if inner is not None:
            many = typing.get_origin(field.annotation) in (list, tuple) or "list[" in str(field.annotation)
            prefix = "" if model is StreamSpec else f"{path.strip('`')}."
            found += _sections(inner, f"`{prefix}{name}{'[]' if many else ''}`", seen)
    return found


def _type_text(annotation: Any, names: dict[type[BaseModel], str]) -> str:
    inner = section_model(annotation)
    if inner is not None and inner is annotation:
        return f"the `{names[inner]}` section"
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "annotated_types.", "pydantic.types.", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    if inner is not None:
        text = text.replace(f"dagster_project.spec.{inner.__name__}", f"{names[inner]} section")
    text = text.replace("dagster_project.spec.", "")
    text = re.sub(r"Annotated\[(\w+), [^\]]*\]", r"\1", text)  # StrictStr and friends: the type itself
    while (match := re.search(r"Union\[([^\[\]]*)\]", text)) is not None:
        text = text[: match.start()] + " | ".join(p.strip() for p in match.group(1).split(",")) + text[match.end() :]
    return f"`{text}`".replace("|", "\\|")


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{value!r}`".replace("|", "\\|")


def _limits_text(model: type[BaseModel]) -> list[str]:
    """The section's upper bounds (`spec.at_most`), each with its reason and fix, as a list under the table."""
    lines = []
    for name, field in model.model_fields.items():
        cap = field.json_schema_extra.get("at_most") if isinstance(field.json_schema_extra, dict) else None
        if cap:
            limit = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
            lines.append(f"- `{name}` at most {limit_text(limit)}: {cap['why']}; {cap['fix']}.")
    return ["", "Upper bounds:", "", *lines] if lines else []
