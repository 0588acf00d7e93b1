"""The CRD is structural, documents every spec field, and accepts every example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

CRD = REPO / "deploy" / "crds" / "trainingjobs.etha.io.yaml"


def schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_names_match_the_contract() -> None:
    doc = yaml.safe_load(CRD.read_text())
    assert doc["metadata"]["name"] == "trainingjobs.etha.io"
    assert doc["spec"]["group"] == "etha.io" and doc["spec"]["scope"] == "Namespaced"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("TrainingJob", "trainingjobs", ["tj"])
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Ready",
        "Joined",
        "Restarts",
        "Generation",
        "Reason",
        "Progress",
        "ETA",
        "Age",
    ]


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, child in (node.get("properties") or {}).items():
        out += walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}[]")
    return out


def test_structural_every_node_has_a_type() -> None:
    for path, node in walk(schema(), ""):
        # x-kubernetes-int-or-string is the one typeless node a structural schema allows.
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, (
            f"{path} has no type (a structural schema needs one everywhere)"
        )


def test_every_spec_field_is_described() -> None:
    for path, node in walk(schema()["properties"]["spec"], ".spec"):
        assert node.get("description"), f"{path} has no description (kubectl explain shows it)"


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_schema(example: Path) -> None:
    from openapi_schema_validator import OAS30Validator

    for doc in yaml.safe_load_all(example.read_text()):
        OAS30Validator(schema()).validate(doc)


@pytest.mark.parametrize(
    ("patch", "message"),
    [({"replicas": 0}, "minimum"), ({"rendezvous": {"port": 70000}}, "maximum"), ({"replicas": "x"}, "type")],
    ids=["zero-replicas", "port-too-big", "string-replicas"],
)
def test_schema_rejects(patch: dict[str, Any], message: str) -> None:
    from openapi_schema_validator import OAS30Validator

    doc = yaml.safe_load((REPO / "examples" / "allreduce.yaml").read_text())
    doc["spec"].update(patch)
    errors = list(OAS30Validator(schema()).iter_errors(doc))
    assert errors and any(message in str(e.validator) or message in e.message for e in errors)
