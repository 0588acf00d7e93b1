"""What the operator asks the API server to send it: of pods, Services and NetworkPolicies only
the objects carrying the job label (a server-side ``labelSelector`` on every list and watch), so
the cluster's other pods never reach it; TrainingJobs unfiltered. Read from the API server's
audit log (request URIs of the operator's ServiceAccount)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from etha.job.constants import LABEL_JOB
from tests.harness.cluster import ControlPlane
from tests.harness.operator import ChartOperator, operating
from tests.helpers import wait_until

NS = "watches"
CHILDREN = ("pods", "services", "networkpolicies")


@pytest.fixture(scope="module")
def op(control_plane: ControlPlane) -> Iterator[ChartOperator]:
    with operating(control_plane, NS) as operator:
        yield operator


def lists_and_watches(op: ChartOperator) -> list[tuple[str, str, dict[str, str]]]:
    """(verb, resource, query) of each list and watch the operator sent (watches as they start)."""
    out = []
    for event in op.plane.requests_by(op.user, stages=("ResponseStarted", "ResponseComplete")):
        if event["verb"] in ("list", "watch"):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(event["requestURI"]).query))
            out.append((event["verb"], event["objectRef"].get("resource", ""), query))
    return out


def test_every_list_and_watch_of_a_child_kind_carries_the_job_label_selector(op: ChartOperator) -> None:
    wanted = {(verb, kind) for verb in ("list", "watch") for kind in (*CHILDREN, "trainingjobs")}

    def seen() -> set[tuple[str, str]]:
        return {(verb, kind) for verb, kind, _ in lists_and_watches(op)}

    try:
        wait_until(lambda: wanted <= seen(), 60, "the operator's lists and watches", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: seen {sorted(seen())}\n{op.log(40)}") from None
    unfiltered: list[tuple[str, str, dict[str, Any]]] = []
    for verb, kind, query in lists_and_watches(op):
        terms = query.get("labelSelector", "").split(",")
        if kind in CHILDREN and not any(t == LABEL_JOB or t.startswith(LABEL_JOB + "=") for t in terms):
            unfiltered.append((verb, kind, query))
        if kind == "trainingjobs":
            assert "labelSelector" not in query, (verb, query)
    assert not unfiltered, unfiltered
    # kopf's own list and watch of each child kind: exactly the job label's presence.
    for verb, kind, query in lists_and_watches(op):
        if kind in CHILDREN and query.get("watch") == "true":
            assert query["labelSelector"] == LABEL_JOB, (verb, kind, query)
