"""``etha logs``: which pods (labels of the current or previous attempt), in which order, with
which prefix; and what it says when there is none."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from etha.clikube import logs
from etha.clikube.kube import ClusterError
from tests.factories import make_pod, make_status, make_trainingjob


def job(attempt: int = 0) -> dict[str, Any]:
    return {**make_trainingjob(), "status": make_status(attempt=attempt)}


BASE = {"etha.io/job-name": "mnist", "etha.io/role": "worker"}


@pytest.mark.parametrize(
    ("attempt", "rank", "master", "previous", "expected"),
    [
        (0, None, False, False, {**BASE, "etha.io/attempt": "0"}),
        (2, 1, False, False, {**BASE, "etha.io/attempt": "2", "etha.io/rank": "1"}),
        (2, None, True, False, {**BASE, "etha.io/role": "master", "etha.io/attempt": "2"}),
        (2, 1, False, True, {**BASE, "etha.io/attempt": "1", "etha.io/rank": "1"}),
    ],
    ids=["every-rank", "one-rank", "master", "previous"],
)
def test_selector(
    attempt: int, rank: int | None, master: bool, previous: bool, expected: dict[str, str]
) -> None:
    assert logs.selector(job(attempt), rank, master, previous) == expected


def test_previous_on_the_first_attempt_is_refused() -> None:
    with pytest.raises(
        ClusterError, match=r'trainingjob "mnist" is on its first attempt \(0\): there is no previous'
    ):
        logs.selector(job(0), None, False, True)


@pytest.mark.parametrize(
    ("rank", "master", "message"),
    [
        (-1, False, r"--rank \(-1\) must be at least 0 \(a worker's rank\)\."),
        (0, True, r"--rank \(0\) and --master ask for different pods: give one of them\."),
    ],
    ids=["negative", "with-master"],
)
def test_a_bad_rank_is_refused(rank: int, master: bool, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        logs.selector(job(), rank, master, False)


def pod(name: str, rank: int | None, **meta: Any) -> dict[str, Any]:
    out = make_pod(name, "Running", role="master" if rank is None else "worker")
    if rank is not None:
        out["metadata"]["labels"]["etha.io/rank"] = str(rank)
    out["metadata"].update(meta)
    return out


def test_targets_by_rank_numerically_one_a_rank_the_live_one() -> None:
    going = pod(
        "w-2-old", 2, deletionTimestamp="2026-12-07T10:00:00Z", creationTimestamp="2026-12-07T10:00:09Z"
    )
    chosen = logs.targets([pod("w-10", 10), going, pod("w-2", 2, creationTimestamp="2026-12-07T10:00:01Z"),
                           pod("w-0", 0)])  # fmt: skip
    assert [(t.pod, t.label) for t in chosen] == [("w-0", "rank 0"), ("w-2", "rank 2"), ("w-10", "rank 10")]


def test_the_container_is_kubectls_default_else_the_first() -> None:
    annotated = pod("w-1", 1, annotations={logs.ANNOTATION_DEFAULT_CONTAINER: "trainer"})
    chosen = logs.targets([pod("m", None), annotated])
    assert [(t.label, t.container) for t in chosen] == [("master", "c"), ("rank 1", "trainer")]


@pytest.mark.parametrize(
    ("labels", "previous", "message"),
    [
        ({**BASE, "etha.io/attempt": "0", "etha.io/rank": "7"}, False,
         r'trainingjob "mnist" has no pod of rank 7 in attempt 0 \(phase: Running\)\.'),
        ({**BASE, "etha.io/attempt": "0"}, False, r"has no pod of any rank in attempt 0"),
        ({**BASE, "etha.io/role": "master", "etha.io/attempt": "0"}, False, r"has no pod of the master"),
        ({**BASE, "etha.io/attempt": "1"}, True,
         r"no pod of any rank left from attempt 1: the operator deletes the pods of an attempt when the job restarts\."),
    ],
    ids=["rank", "any-rank", "master", "previous-deleted"],
)  # fmt: skip
def test_nothing_found_says_why(labels: dict[str, str], previous: bool, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        raise logs.nothing_found(job(), labels, previous)


class FakeCluster:
    def __init__(self, lines: dict[str, list[str]]) -> None:
        self.lines = lines

    def log_lines(self, pod: str, container: str, follow: bool) -> Iterator[str]:
        if pod not in self.lines:
            raise ClusterError(f"reading the log of pod {pod}: the API server answered 400: waiting to start")
        yield from self.lines[pod]


@pytest.mark.parametrize("follow", [False, True], ids=["once", "follow"])
def test_every_line_prefixed_like_run_local(follow: bool, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster({"w-0": ["a", "b"], "w-1": ["c"]})
    chosen = [
        logs.Target("w-0", "c", "rank 0"),
        logs.Target("w-1", "c", "rank 1"),
        logs.Target("w-2", "c", "rank 2"),
    ]
    out = io.StringIO()
    assert logs.print_logs(cluster, chosen, follow, out) == 1  # type: ignore[arg-type]
    assert sorted(out.getvalue().splitlines()) == ["[rank 0] a", "[rank 0] b", "[rank 1] c"]
    assert "[rank 2] reading the log of pod w-2: the API server answered 400" in capsys.readouterr().err
