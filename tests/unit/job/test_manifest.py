"""Manifests read as run-local and validate read them: documents, empty files, YAML errors, the
one TrainingJob, then the schema and parse()."""

from __future__ import annotations

import io

import pytest
import yaml

from etha.job.manifest import Document, ManifestError, one_training_job, read_text, training_jobs, validate
from tests.factories import make_trainingjob


def dump(*docs: object) -> str:
    return yaml.safe_dump_all(docs)


JOB = make_trainingjob(name="a")
OTHER = make_trainingjob(name="b")
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^job\.yaml is empty: expected a TrainingJob manifest\.$"),
        ("---\n---\n", r"^job\.yaml is empty"),
        ("kind: TrainingJob\nspec: [\n", r"^job\.yaml: line 3: not valid YAML: "),
        (dump(SERVICE), r"^job\.yaml: kind \('Service'\) must be 'TrainingJob': no TrainingJob in it\.$"),
        ("- a\n", r"^job\.yaml \(list\) must be a Kubernetes object \(a mapping\)\.$"),
        (dump(JOB, "text"), r"^job\.yaml \(document 2\) \(str\) must be a Kubernetes object"),
        (
            dump(JOB, SERVICE, OTHER),
            r"^2 TrainingJobs \(job\.yaml \(document 1\): 'a', job\.yaml \(document 3\): 'b'\)",
        ),
    ],
    ids=[
        "empty",
        "only-separators",
        "yaml-error-line",
        "no-trainingjob",
        "not-a-mapping",
        "second-doc-wrong",
        "two-jobs",
    ],
)
def test_a_file_that_holds_no_one_trainingjob_is_refused(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        one_training_job("job.yaml", text)


def test_the_trainingjob_among_other_documents_is_found() -> None:
    doc = one_training_job("job.yaml", dump(SERVICE, JOB))
    assert doc.label == "job.yaml (document 2)" and doc.body == JOB


def test_validate_finds_every_trainingjob_of_a_file() -> None:
    assert [d.label for d in training_jobs("-", dump(JOB, OTHER))] == [
        "<stdin> (document 1)",
        "<stdin> (document 2)",
    ]


def test_stdin_is_read_for_dash() -> None:
    assert read_text("-", io.StringIO("kind: X\n")) == "kind: X\n"


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ManifestError, match=r"^Cannot read /nonexistent/job\.yaml: "):
        read_text("/nonexistent/job.yaml")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            make_trainingjob(replica=4, rendezvouz={"timeoutSeconds": 5}),
            r"^j: spec\.replica: unknown field; did you mean spec\.replicas\?\nj: spec\.rendezvouz: unknown field; did you mean spec\.rendezvous\?$",
        ),
        (
            {**JOB, "apiVersion": "etha.io/v1"},
            r"^j: apiVersion \('etha\.io/v1'\) must be 'etha\.io/v1alpha1'\.$",
        ),
        ({**JOB, "metadata": {}}, r"^j: metadata\.name: required field missing\.$"),
        # The schema passes; parse() (the CEL rules' and the operator's checks) refuses.
        (make_trainingjob(successPolicy={"rules": [{"succeededIndexes": "5"}]}), r"^j: spec\.successPolicy"),
    ],
    ids=["unknown-fields-all-named", "api-version", "no-name", "parse-after-schema"],
)
def test_validate_refuses(body: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        validate(Document("j", body))


def test_a_valid_job_is_parsed() -> None:
    assert validate(Document("j", JOB)).replicas == 2
