"""``etha explain [FIELD.PATH]``: a TrainingJob field as ``kubectl explain`` shows it, from the
CRD's schema (no cluster). Pure."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from etha.job.errors import InvalidSpec
from etha.job.schema import Schema, nearest, type_name

#: Words of a field description per line.
WIDTH = 80


def find(schema: Schema, path: str) -> Schema:
    """The node at ``path`` (``spec.rendezvous.port``; a list's fields are its items'), or
    :class:`InvalidSpec` naming the first unknown part and the nearest known field."""
    node: Schema = schema
    walked: list[str] = []
    for part in [p for p in path.strip(".").split(".") if p]:
        while isinstance(node.get("items"), dict):
            node = node["items"]
        props: dict[str, Schema] = node.get("properties") or {}
        if part not in props:
            here = ".".join([*walked, part])
            guess = nearest(part, list(props))
            if guess is not None:
                hint = f"did you mean {'.'.join([*walked, guess])}?"
            elif props:
                hint = f"known fields: {', '.join(sorted(props))}."
            else:
                hint = f"{'.'.join(walked) or 'the top'} has no sub-fields."
            raise InvalidSpec(here, f"{here}: unknown field; {hint}")
        node, walked = props[part], [*walked, part]
    return node


def explain(schema: Schema, path: str = "", kind: str = "TrainingJob", version: str = "") -> str:
    """The text ``etha explain PATH`` prints: description, type, default, allowed values, fields."""
    node = find(schema, path)
    name = path.strip(".").split(".")[-1] if path.strip(".") else kind
    lines = [f"KIND:     {kind}"]
    if version:
        lines.append(f"VERSION:  {version}")
    lines += ["", f"FIELD:    {name} <{type_name(node)}>" if path.strip(".") else f"RESOURCE: {kind}"]
    lines += ["", "DESCRIPTION:", *_wrap(node.get("description") or "(no description)", "    ")]
    lines += _facts(node)
    fields = _fields(node)
    if fields:
        lines += ["", "FIELDS:", *fields]
    return "\n".join(lines) + "\n"


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(" ".join(str(text).split()), WIDTH, initial_indent=indent, subsequent_indent=indent)


def _facts(node: Schema) -> list[str]:
    out: list[str] = []
    if "default" in node:
        out.append(f"DEFAULT:  {json.dumps(node['default'])}")
    if "enum" in node:
        out.append(f"ALLOWED:  {', '.join(str(x) for x in node['enum'])}")
    for key in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern"):
        if key in node:
            out.append(f"{key.upper() + ':':<10}{node[key]}")
    return ["", *out] if out else []


def _fields(node: Schema) -> list[str]:
    while isinstance(node.get("items"), dict):
        node = node["items"]
    props: dict[str, Any] = node.get("properties") or {}
    required = set(node.get("required") or [])
    out: list[str] = []
    for key, child in props.items():
        flag = " -required-" if key in required else ""
        out.append(f"  {key}\t<{type_name(child)}>{flag}")
        first = str(child.get("description") or "").split(". ")[0].strip()
        out += _wrap(first.rstrip(".") + "." if first else "", "    ")
    return out
