"""The TrainingJob CRD's OpenAPI schema, walked: what the API server checks of a manifest
(unknown fields, types, enums, bounds, required fields) offline, and the schema's field paths.

One source of truth: the CRD (deploy/crds/, packaged as ``etha/data/``). Pure: no kubernetes
client; ``packaged_schema()`` reads the packaged file. The CEL rules' meaning is in
:func:`etha.job.spec.parse`, run after this walk.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import yaml

#: The CRD's file name, in deploy/crds/ and in the package (etha/data/).
CRD_FILE = "trainingjobs.etha.io.yaml"
#: A node whose undeclared fields are kept (and so never refused), as the API server does.
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
#: A node that takes an integer or a string (e.g. spec.procsPerWorker).
INT_OR_STRING = "x-kubernetes-int-or-string"

Schema = dict[str, Any]


def packaged_crd() -> dict[str, Any]:
    """The CRD shipped in the package (a copy of deploy/crds/, written by hack/render_manifests.py)."""
    text = resources.files("etha.data").joinpath(CRD_FILE).read_text(encoding="utf-8")
    crd: dict[str, Any] = yaml.safe_load(text)
    return crd


def openapi_schema(crd: dict[str, Any]) -> Schema:
    """The storage version's ``openAPIV3Schema`` of ``crd``."""
    versions = crd["spec"]["versions"]
    version = next((v for v in versions if v.get("storage")), versions[0])
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def packaged_schema() -> Schema:
    return openapi_schema(packaged_crd())


def nearest(name: str, known: list[str]) -> str | None:
    """The known name closest to ``name`` (a misspelling's intended field), if any is close."""
    by_case = {k.lower(): k for k in known}
    if name.lower() in by_case:
        return by_case[name.lower()]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def check(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema``, one sentence each naming the field; [] when none."""
    problems = _type_problem(value, schema, path)
    if problems:
        return [problems]
    out = _bounds(value, schema, path)
    if isinstance(value, dict):
        out += _check_object(value, schema, path)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += check(item, schema["items"], f"{path}[{i}]")
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_object(value: dict[str, Any], schema: Schema, path: str) -> list[str]:
    props: dict[str, Schema] = schema.get("properties") or {}
    out = [
        f"{_join(path, key)}: required field missing."
        for key in schema.get("required") or []
        if key not in value
    ]
    for key, child in value.items():
        if key in props:
            out += check(child, props[key], _join(path, str(key)))
        elif props and not schema.get(PRESERVE_UNKNOWN):
            out.append(_unknown(str(key), list(props), path))
    return out


def _unknown(key: str, known: list[str], path: str) -> str:
    guess = nearest(key, known)
    if guess is not None:
        return f"{_join(path, key)}: unknown field; did you mean {_join(path, guess)}?"
    return f"{_join(path, key)}: unknown field; known fields: {', '.join(sorted(known))}."


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_NAMES = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer"}


def type_name(schema: Schema) -> str:
    """The node's type as ``kubectl explain`` says it (``int-or-string`` for that extension)."""
    if schema.get(INT_OR_STRING):
        return "int-or-string"
    kind = str(schema.get("type") or "Object")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"[]{type_name(schema['items'])}"
    return kind


def _type_problem(value: Any, schema: Schema, path: str) -> str | None:
    if value is None and schema.get("nullable"):
        return None
    if schema.get(INT_OR_STRING):
        ok = isinstance(value, str | int) and not isinstance(value, bool)
        return None if ok else f"{path} ({value!r}) must be an integer or a string."
    kind = schema.get("type")
    if kind not in _TYPES:
        return None
    ok = isinstance(value, _TYPES[kind]) and (kind == "boolean" or not isinstance(value, bool))
    if ok:
        return None
    return f"{path} ({value!r}) must be {_NAMES.get(kind, f'a {kind}')}."


def _bounds(value: Any, schema: Schema, path: str) -> list[str]:
    out: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(x) for x in schema["enum"])
        out.append(f"{path} ({value!r}) must be one of: {allowed}.")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path} ({value}) must be at least {schema['minimum']}.")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path} ({value}) must be at most {schema['maximum']}.")
    sized = {str: "characters", list: "items"}
    for kind, unit in sized.items():
        if isinstance(value, kind):
            low, high = ("minLength", "maxLength") if kind is str else ("minItems", "maxItems")
            if low in schema and len(value) < schema[low]:
                out.append(f"{path} ({len(value)} {unit}) must have at least {schema[low]}.")
            if high in schema and len(value) > schema[high]:
                out.append(f"{path} ({len(value)} {unit}) must have at most {schema[high]}.")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{path} ({value!r}) must match {schema['pattern']}.")
    return out


def field_paths(schema: Schema, path: str = "") -> Iterator[str]:
    """Every declared field's path (``spec.rendezvous.port``; a list's items add ``[]``)."""
    for key, child in (schema.get("properties") or {}).items():
        here = _join(path, key)
        yield here
        yield from field_paths(child, here)
    if isinstance(schema.get("items"), dict):
        yield from field_paths(schema["items"], f"{path}[]")


def missing_fields(
    wanted: Schema, installed: Schema, roots: tuple[str, ...] = ("spec", "status")
) -> list[str]:
    """The field paths under ``roots`` that ``wanted`` declares and ``installed`` lacks, sorted;
    a missing section is named once (``spec.scheduling``, not each of its fields)."""
    have = set(field_paths(installed))
    missing: list[str] = []
    for path in sorted(field_paths(wanted)):
        if path.split(".")[0] not in roots or path in have:
            continue
        if not any(path.startswith((f"{m}.", f"{m}[]")) for m in missing):
            missing.append(path)
    return missing
