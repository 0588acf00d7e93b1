"""The CRD's schema walked offline: what the API server (and kubectl --validate=strict) refuses,
and the field paths the operator's start-up check compares."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from etha.job.schema import check, field_paths, missing_fields, nearest, packaged_schema
from tests.factories import make_trainingjob
from tests.helpers import REPO


def job(**spec: Any) -> dict[str, Any]:
    return make_trainingjob(**spec)


def with_container(**fields: Any) -> dict[str, Any]:
    doc = job()
    doc["spec"]["template"]["spec"]["containers"][0].update(fields)
    return doc


def test_the_packaged_crd_is_deploy_crds() -> None:
    packaged = REPO / "etha" / "data" / "trainingjobs.etha.io.yaml"
    assert packaged.read_bytes() == (REPO / "deploy" / "crds" / "trainingjobs.etha.io.yaml").read_bytes()


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (job(replica=4), r"^spec\.replica: unknown field; did you mean spec\.replicas\?$"),
        (
            job(rendezvouz={"timeoutSeconds": 5}),
            r"^spec\.rendezvouz: unknown field; did you mean spec\.rendezvous\?$",
        ),
        (job(rendezvous={"timeout": 5}), r"did you mean spec\.rendezvous\.timeoutSeconds\?$"),
        (
            job(zzz=1),
            r"^spec\.zzz: unknown field; known fields: activeDeadlineSeconds, .*template, ttlSecondsAfterFinished\.$",
        ),
        (job(replicas=0), r"^spec\.replicas \(0\) must be at least 1\.$"),
        (job(replicas=10001), r"^spec\.replicas \(10001\) must be at most 10000\.$"),
        (job(replicas="4"), r"^spec\.replicas \('4'\) must be an integer\.$"),
        (job(suspend="yes"), r"^spec\.suspend \('yes'\) must be a boolean\.$"),
        (
            job(rendezvous={"backend": "tcpx"}),
            r"^spec\.rendezvous\.backend \('tcpx'\) must be one of: tcp, etcd\.$",
        ),
        (job(procsPerWorker=1.5), r"^spec\.procsPerWorker \(1\.5\) must be an integer or a string\.$"),
        (
            job(
                podFailurePolicy={
                    "rules": [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [1]}}]
                }
            ),
            r"^spec\.podFailurePolicy\.rules\[0\]\.action \('Fail'\) must be one of: FailJob, Ignore, Count\.$",
        ),
        (job(successPolicy={}), r"^spec\.successPolicy\.rules: required field missing\.$"),
        (job(scheduling={"queue": "Bad_Queue"}), r"^spec\.scheduling\.queue \('Bad_Queue'\) must match "),
    ],
    ids=[
        "misspelled-top",
        "misspelled-section",
        "misspelled-nested",
        "unknown-no-guess",
        "below-minimum",
        "above-maximum",
        "wrong-type",
        "not-a-boolean",
        "not-in-enum",
        "int-or-string",
        "list-item-path",
        "required",
        "pattern",
    ],
)
def test_a_bad_field_is_named(doc: dict[str, Any], problem: str) -> None:
    problems = check(doc, packaged_schema())
    assert len(problems) == 1, problems
    assert re.search(problem, problems[0]), problems[0]


@pytest.mark.parametrize(
    "doc",
    [
        with_container(fooBar=1, resources={"limits": {"nvidia.com/gpu": 1}}),
        job(procsPerWorker="auto"),
        job(rendezvous={"resources": {"requests": {"cpu": "1"}}}),
        {**job(), "status": {"phase": "Running", "anythingElse": 1}},
    ],
    ids=["pod-template-preserves-unknown", "int-or-string-as-string", "master-resources", "status"],
)
def test_what_the_crd_preserves_is_never_refused(doc: dict[str, Any]) -> None:
    assert check(doc, packaged_schema()) == []


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes(example: Any) -> None:
    for doc in yaml.safe_load_all(example.read_text()):
        if doc and doc.get("kind") == "TrainingJob":
            assert check(doc, packaged_schema()) == []


@pytest.mark.parametrize(
    ("name", "known", "want"),
    [
        ("replica", ["replicas", "template"], "replicas"),
        ("REPLICAS", ["replicas"], "replicas"),
        ("x", ["replicas"], None),
    ],
    ids=["plural", "case", "nothing-close"],
)
def test_nearest(name: str, known: list[str], want: str | None) -> None:
    assert nearest(name, known) == want


def test_field_paths_walk_objects_and_lists() -> None:
    paths = set(field_paths(packaged_schema()))
    assert {"spec.rendezvous.port", "spec.podFailurePolicy.rules[].action", "status.phase"} <= paths


def without(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    node = out
    for part in path[:-1]:
        node = node["properties"][part]
    del node["properties"][path[-1]]
    return out


@pytest.mark.parametrize(
    ("installed", "missing"),
    [
        (packaged_schema(), []),
        (
            without(packaged_schema(), "spec", "rendezvous", "torchrunBackend"),
            ["spec.rendezvous.torchrunBackend"],
        ),
        (without(packaged_schema(), "status", "restarts"), ["status.restarts"]),
        (
            without(packaged_schema(), "spec", "successPolicy"),
            ["spec.successPolicy"],
        ),
    ],
    ids=["same", "nested-field", "status-field", "whole-section"],
)
def test_missing_fields(installed: dict[str, Any], missing: list[str]) -> None:
    assert missing_fields(packaged_schema(), installed) == missing


def test_missing_fields_only_look_under_spec_and_status() -> None:
    installed = without(packaged_schema(), "apiVersion")
    assert missing_fields(packaged_schema(), installed) == []
