"""etcd endpoints, parsed apart from any store (the job model checks them with no store loaded)."""

from __future__ import annotations

import re

import pytest

from etha.endpoints import EndpointError, parse_endpoint


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("etcd:2379", ("etcd", 2379)),
        ("http://etcd.ns.svc:12379", ("etcd.ns.svc", 12379)),
        (" 10.0.0.1:4001 ", ("10.0.0.1", 4001)),
        ("etcd", ("etcd", 2379)),
    ],
    ids=["host-port", "http-url", "spaces", "default-port"],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("https://etcd:2379", "etcd endpoint ('https://etcd:2379') must be host:port or http://host:port."),
        ("", "etcd endpoint ('') must be host:port or http://host:port."),
        ("host:notaport", "etcd endpoint ('host:notaport') must be host:port or http://host:port: "),
    ],
    ids=["https", "empty", "bad-port"],
)
def test_a_bad_endpoint_is_a_value_error_naming_it(endpoint: str, message: str) -> None:
    with pytest.raises(EndpointError, match=re.escape(message)) as caught:
        parse_endpoint(endpoint)
    assert isinstance(caught.value, ValueError)
