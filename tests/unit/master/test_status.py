"""The master's status document and the words shared by the operator and run-local."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from etha.master.status import BadStatus, MasterStatus, progress, rank_ranges, timeout_message


@pytest.mark.parametrize(
    ("ranks", "text"),
    [
        ([], ""),
        ([3], "3"),
        ([0, 1, 2, 5, 7, 8], "0-2, 5, 7-8"),
        ([9, 8, 8, 7], "7-9"),
        (range(1024), "0-1023"),
    ],
)
def test_rank_ranges(ranks: Any, text: str) -> None:
    assert rank_ranges(ranks) == text


def test_progress() -> None:
    assert progress(3, 4, [3]) == "3/4 joined, waiting for rank 3"
    assert progress(1, 4, [1, 2, 3]) == "1/4 joined, waiting for ranks 1-3"
    assert progress(4, 4, []) == "4/4 joined"


def test_timeout_message_describes_each_of_the_first_ranks() -> None:
    msg = timeout_message([5, 1], 8, 30, lambda r: f"pod w-{r}: Running")
    assert msg == (
        "Rendezvous timed out: 2 of 8 ranks did not join within spec.rendezvous.timeoutSeconds (30s): "
        "rank 1 (pod w-1: Running); rank 5 (pod w-5: Running)."
    )


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([], "expected a JSON object, got list"),
        ({"worldSize": 0, "uptimeSeconds": 1, "joined": [], "peers": []}, "worldSize (0)"),
        ({"worldSize": 2, "uptimeSeconds": "x", "joined": [], "peers": []}, "uptimeSeconds ('x')"),
        ({"worldSize": 2, "uptimeSeconds": 1, "joined": [-1], "peers": []}, "joined ([-1])"),
        ({"worldSize": 2, "uptimeSeconds": 1, "joined": [], "peers": [1]}, "peers ([1])"),
    ],
)
def test_bad_status_documents_are_refused_naming_the_field(doc: Any, error: str) -> None:
    with pytest.raises(BadStatus, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        MasterStatus.parse(doc)


def test_joined_ranks_by_address() -> None:
    status = MasterStatus.parse({"worldSize": 4, "uptimeSeconds": 0, "joined": [3], "peers": ["a", "b", "c"]})
    assert status.joined_ranks({0: "a", 1: "c", 2: None}) == {0, 1, 3}
    assert status.joined_ranks({0: "a", 1: "a"}) == {3}  # shared: cannot tell which


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            MasterStatus(3, 1.5, frozenset({2, 0}), frozenset({"10.0.0.8", "10.0.0.7"})),
            {
                "job": "j",
                "worldSize": 3,
                "uptimeSeconds": 1.5,
                "joined": [0, 2],
                "missing": [1],
                "complete": False,
                "peers": ["10.0.0.7", "10.0.0.8"],
                "generation": 0,
                "generationPort": None,
                "exits": [],
            },
        ),
        (
            MasterStatus(None, 0.0, frozenset(), frozenset()),
            {
                "job": "j",
                "worldSize": None,
                "uptimeSeconds": 0.0,
                "joined": [],
                "missing": [],
                "complete": False,
                "peers": [],
                "generation": 0,
                "generationPort": None,
                "exits": [],
            },
        ),
        (
            MasterStatus(2, 3.0, frozenset({0, 1}), frozenset()),
            {
                "job": "j",
                "worldSize": 2,
                "uptimeSeconds": 3.0,
                "joined": [0, 1],
                "missing": [],
                "complete": True,
                "peers": [],
                "generation": 0,
                "generationPort": None,
                "exits": [],
            },
        ),
        (
            MasterStatus(2, 3.0, frozenset({0}), frozenset(), 4, 40001, ((1, 137), (0, 1))),
            {
                "job": "j",
                "worldSize": 2,
                "uptimeSeconds": 3.0,
                "joined": [0],
                "missing": [1],
                "complete": False,
                "peers": [],
                "generation": 4,
                "generationPort": 40001,
                "exits": [{"rank": 1, "exitCode": 137}, {"rank": 0, "exitCode": 1}],
            },
        ),
    ],
    ids=["waiting", "no-world-size", "complete", "generation-4-with-exits"],
)
def test_the_document_the_master_writes_is_the_one_readers_parse(
    status: MasterStatus, expected: dict[str, object]
) -> None:
    doc = status.document("j")
    assert doc == expected and list(doc) == list(expected)
    assert MasterStatus.parse(json.loads(json.dumps(doc))) == status


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"worldSize": 10**9, "uptimeSeconds": 1, "joined": [], "peers": []}, "worldSize (1000000000)"),
        ({"worldSize": True, "uptimeSeconds": 1, "joined": [], "peers": []}, "worldSize (True)"),
        ({"worldSize": 4, "uptimeSeconds": float("inf"), "joined": [], "peers": []}, "uptimeSeconds (inf)"),
        (
            {"worldSize": 4, "uptimeSeconds": 1, "joined": list(range(200_000)), "peers": []},
            "at most 100000 ranks",
        ),
        ({"worldSize": 4, "uptimeSeconds": 1, "joined": [10**12], "peers": []}, "at most 100000 ranks"),
        (
            {"worldSize": 4, "uptimeSeconds": 1, "joined": [], "peers": ["x" * 1000]},
            "at most 100000 addresses",
        ),
    ],
    ids=["huge-world", "bool-world", "infinite-uptime", "too-many-ranks", "huge-rank", "long-address"],
)
def test_a_document_beyond_the_caps_is_refused_in_a_short_message(doc: dict[str, Any], says: str) -> None:
    with pytest.raises(BadStatus, match=re.escape(says)) as refused:
        MasterStatus.parse(doc)
    assert len(str(refused.value)) < 200  # the message becomes the job's status: never the value whole


def test_a_document_from_a_master_without_generations_reads_as_generation_0() -> None:
    doc = {"worldSize": 2, "uptimeSeconds": 1.0, "joined": [], "peers": []}
    status = MasterStatus.parse(doc)
    assert (status.generation, status.generation_port, status.exits) == (0, None, ())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("generation", -1, r"generation \(-1\) must be a non-negative integer"),
        ("generationPort", 70000, r"generationPort \(70000\) must be a port"),
        ("exits", [{"rank": 0}], r"exits .* must be a list of \{rank, exitCode\} objects"),
        ("exits", [{"rank": 0, "exitCode": 300}], r"exits .* must be"),
    ],
    ids=["negative-generation", "bad-port", "exit-without-code", "exit-code-too-big"],
)
def test_bad_generation_fields_are_refused(field: str, value: object, match: str) -> None:
    doc = {"worldSize": 2, "uptimeSeconds": 1.0, "joined": [], "peers": [], field: value}
    with pytest.raises(BadStatus, match=match):
        MasterStatus.parse(doc)
