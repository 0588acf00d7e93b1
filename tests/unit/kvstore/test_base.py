from __future__ import annotations

import re

import pytest

from etha.kvstore import InvalidArgumentError
from etha.kvstore.base import check_timeout, matches, select, split_pattern


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("rank/*", ("rank/", "")), ("*/ready", ("", "/ready")), ("a/*/b", ("a/", "/b")), ("*", ("", ""))],
    ids=["prefix", "suffix", "middle", "only-wildcard"],
)
def test_split_pattern(pattern: str, expected: tuple[str, str]) -> None:
    assert split_pattern(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "found"), [("rank", 0), ("a/*/*", 2), ("**", 2)], ids=["none", "two", "adjacent"]
)
def test_split_pattern_rejects(pattern: str, found: int) -> None:
    expected = f"key_pattern '{pattern}' must contain exactly one '*' wildcard, found {found}."
    with pytest.raises(InvalidArgumentError, match=re.escape(expected)):
        split_pattern(pattern)


@pytest.mark.parametrize(
    ("prefix", "suffix", "key", "ok"),
    [
        ("rank/", "", "rank/3", True),
        ("rank/", "", "rank/", True),
        ("rank/", "", "ran", False),
        ("a", "a", "a", False),
        ("a", "a", "aa", True),
        ("", "/ready", "w/ready", True),
    ],
    ids=["match", "empty-star", "short", "overlap-too-short", "overlap-ok", "suffix"],
)
def test_matches(prefix: str, suffix: str, key: str, ok: bool) -> None:
    assert matches(prefix, suffix, key) is ok


def test_select_dedupes_keeps_order_and_filters() -> None:
    assert select(["r/2", "x", "r/1", "r/2"], "r/", "") == ["r/2", "r/1"]
    assert select(["b", "a", "b"], "", "") == ["b", "a"]


@pytest.mark.parametrize(
    ("value", "match"),
    [(-0.1, r"timeout \(-0.1\)"), (float("nan"), r"timeout \(nan\)"), (True, "got True"), ("1", "got '1'")],
    ids=["negative", "nan", "bool", "str"],
)
def test_check_timeout_rejects(value: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        check_timeout(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 0.5, 3600, float("inf")], ids=["zero", "half", "hour", "inf"])
def test_check_timeout_accepts(value: float) -> None:
    assert check_timeout(value) == float(value)


@pytest.mark.parametrize(
    ("keys", "prefix", "suffix", "expected"),
    [
        (["r/1", "x/r/2", "r/", "r/3/x"], "r/", "", ["r/1", "r/", "r/3/x"]),
        (["a/ready", "b/ready", "ready", "b/ready/no"], "", "/ready", ["a/ready", "b/ready"]),
        (["aa", "a", "aaa"], "a", "a", ["aa", "aaa"]),
        (["p.1", "pX1", "p.2"], "p.", "", ["p.1", "p.2"]),
        (["r/\x001", "r/2", "x\x00r/3"], "r/", "", ["r/\x001", "r/2"]),
        (["r/2", "r/1", "r/2"], "r/", "", ["r/2", "r/1"]),
        ([], "r/", "", []),
    ],
    ids=["prefix", "suffix", "overlap", "regex-chars-escaped", "nul-in-key", "dedupe", "empty"],
)
def test_select_matches_like_the_pattern(
    keys: list[str], prefix: str, suffix: str, expected: list[str]
) -> None:
    assert select(keys, prefix, suffix) == expected
    assert expected == [k for k in dict.fromkeys(keys) if matches(prefix, suffix, k)]
