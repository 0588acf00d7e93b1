"""Read TrainingJob manifests as ``kubectl apply --validate=strict`` and the operator would:
YAML (several documents allowed), the CRD's schema walked (etha.job.schema), then
:func:`etha.job.spec.parse` (the CEL rules' and the operator's checks). Shared by
``etha run-local`` and ``etha validate``; no cluster, no kubernetes client."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import yaml

from etha.job.errors import InvalidSpec
from etha.job.schema import Schema, check, packaged_schema
from etha.job.spec import JobSpec, parse

#: The file name that means "read standard input".
STDIN = "-"
#: The kind and apiVersion of a TrainingJob (the CRD's group and served version).
KIND = "TrainingJob"
API_VERSION = "etha.io/v1alpha1"


class ManifestError(ValueError):
    """A manifest that is refused; ``messages`` are what a user reads, one sentence each."""

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = list(messages)


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: ``label`` names it in messages (``a.yaml`` or ``a.yaml
    (document 2)``)."""

    label: str
    body: dict[str, Any]


def read_text(name: str, stdin: IO[str] | None = None) -> str:
    """The text of file ``name``, or of standard input for ``-``."""
    if name == STDIN:
        return (stdin or sys.stdin).read()
    try:
        with open(name, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"Cannot read {name}: {exc}"]) from exc


def training_jobs(name: str, text: str) -> list[Document]:
    """The TrainingJob documents of ``text`` (read from ``name``); other kinds are skipped."""
    shown = "<stdin>" if name == STDIN else name
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ManifestError([f"{shown}:{where}: not valid YAML: {problem}."]) from exc
    if not docs:
        raise ManifestError([f"{shown} is empty: expected a TrainingJob manifest."])
    jobs, others = [], []
    for i, doc in enumerate(docs, 1):
        label = shown if len(docs) == 1 else f"{shown} (document {i})"
        if not isinstance(doc, dict):
            raise ManifestError([f"{label} ({type(doc).__name__}) must be a Kubernetes object (a mapping)."])
        if doc.get("kind") == KIND:
            jobs.append(Document(label, doc))
        else:
            others.append(f"{doc.get('kind')!r}")
    if not jobs:
        found = ", ".join(others)
        raise ManifestError([f"{shown}: kind ({found}) must be {KIND!r}: no TrainingJob in it."])
    return jobs


def one_training_job(name: str, text: str) -> Document:
    """The one TrainingJob of ``text``; several are refused, naming them."""
    jobs = training_jobs(name, text)
    if len(jobs) > 1:
        named = ", ".join(f"{d.label}: {(d.body.get('metadata') or {}).get('name')!r}" for d in jobs)
        raise ManifestError([f"{len(jobs)} TrainingJobs ({named}); run one at a time (one per file)."])
    return jobs[0]


def validate(doc: Document, schema: Schema | None = None) -> JobSpec:
    """The job's spec, once the CRD's schema and the operator's checks pass; else
    :class:`ManifestError` with every schema problem (or parse()'s one), each led by the label."""
    body = doc.body
    problems = check(body, schema if schema is not None else packaged_schema())
    if body.get("apiVersion") != API_VERSION:
        problems.insert(0, f"apiVersion ({body.get('apiVersion')!r}) must be {API_VERSION!r}.")
    if not (body.get("metadata") or {}).get("name"):
        problems.insert(0, "metadata.name: required field missing.")
    if not problems:
        try:
            return parse(body)
        except InvalidSpec as exc:
            problems = [str(exc)]
    raise ManifestError([f"{doc.label}: {p}" for p in problems])
