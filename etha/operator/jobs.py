"""The operator's memory of one TrainingJob between two looks: its worker (the event that wakes
it, what it created or deleted a moment ago, what its last writes met) and how a child is told to
be the job's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from etha.job import constants as c
from etha.job.builders import Manifest

Body = dict[str, Any]

#: Seconds an object the operator created (or deleted) counts as such before the watch shows it.
EXPECTATION_TTL = 30.0


class Children(Protocol):
    """What the controller reads of kopf's indexes: a job's children by the job's uid."""

    def __contains__(self, uid: object) -> bool: ...
    def __getitem__(self, uid: str) -> Iterable[Body]: ...


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its ownerReference with controller: true), if any."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def slim(body: Mapping[str, Any]) -> Body:
    """What the controller reads of a child: kept in the index for every pod of every job."""
    meta = body.get("metadata") or {}
    out: Body = {
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp")
            if k in meta
        },
    }
    annotations = meta.get("annotations") or {}
    if c.ANNOTATION_SPEC_HASH in annotations:  # a kept child: is it the shape the job wants?
        out["metadata"]["annotations"] = {c.ANNOTATION_SPEC_HASH: annotations[c.ANNOTATION_SPEC_HASH]}
    spec = body.get("spec") or {}
    if "containers" in spec:  # a pod: the master's ports locate its status document
        out["spec"] = {
            "containers": [
                {"name": x.get("name"), "ports": x.get("ports") or [], **_token_env(x)}
                for x in spec["containers"]
            ],
            "restartPolicy": spec.get("restartPolicy"),
        }
        out["status"] = body.get("status") or {}
    return out


def _token_env(container: Mapping[str, Any]) -> dict[str, Any]:
    """A master container's ETHA_MASTER_TOKEN (the operator reads its token back after a restart
    of its own); nothing of any other container's environment is kept."""
    env = [x for x in container.get("env") or [] if x.get("name") == c.ENV_MASTER_TOKEN and "value" in x]
    return {"env": env[:1]} if env else {}


def _resource_version(body: Mapping[str, Any]) -> int | None:
    text = (body.get("metadata") or {}).get("resourceVersion")
    return int(text) if isinstance(text, str) and text.isdigit() else None


@dataclass
class JobWorker:
    """One TrainingJob's loop and what it remembers between two looks."""

    body: Body
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Created by this operator, not in the index yet: name -> (expiry, manifest).
    expected: dict[str, tuple[float, Manifest]] = field(default_factory=dict)
    #: Deleted by this operator, maybe still in the index: name -> expiry.
    deleting: dict[str, float] = field(default_factory=dict)
    #: Consecutive failed reconciles (the retry backoff) and object conflicts (their backoff).
    failures: int = 0
    conflicts: int = 0
    #: The object in a child's way that the last creation met (said for a person), if any.
    conflict: str | None = None
    #: A child the API server rejected (message, reason): the job ends Failed at the next look.
    rejected: tuple[str, str] | None = None
    #: Consecutive reads of the master's status document that failed.
    read_failures: int = 0
    #: Tokens made for masters still to create (restarts in place), by attempt.
    tokens: dict[int, str] = field(default_factory=dict)
    #: The long poll of the master's GET /v1/events (a running job that restarts in place), the
    #: master pod's uid it polls, and its last answer (MasterEvents) with that uid.
    events_task: asyncio.Task[None] | None = None
    events_master: str | None = None
    events: tuple[str, Any] | None = None

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def offer(self, body: Body) -> None:
        """Keep ``body`` unless it is older than the one held (a late event after our own patch)."""
        new, held = _resource_version(body), _resource_version(self.body)
        if new is None or held is None or new >= held:
            self.body = body
