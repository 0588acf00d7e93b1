"""etcd endpoints, parsed apart from any store (the job model checks them with no store loaded)."""

from __future__ import annotations

import re

import pytest

from etha.endpoints import EXPECTED, EndpointError, parse_endpoint, parse_url, redact


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("etcd:2379", ("etcd", 2379)),
        ("http://etcd.ns.svc:12379", ("etcd.ns.svc", 12379)),
        ("https://etcd.ns.svc:2379", ("etcd.ns.svc", 2379)),
        ("HTTPS://etcd", ("etcd", 2379)),
        (" 10.0.0.1:4001 ", ("10.0.0.1", 4001)),
        ("etcd", ("etcd", 2379)),
    ],
    ids=["host-port", "http-url", "https-url", "https-upper-default-port", "spaces", "default-port"],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "scheme"),
    [("etcd:2379", ""), ("http://etcd:2379", "http"), ("https://etcd:2379", "https")],
    ids=["bare", "http", "https"],
)
def test_parse_url_keeps_the_scheme(endpoint: str, scheme: str) -> None:
    assert parse_url(endpoint) == (scheme, "etcd", 2379)


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("grpc://etcd:2379", f"etcd endpoint ('grpc://etcd:2379') must be {EXPECTED}."),
        ("", f"etcd endpoint ('') must be {EXPECTED}."),
        ("host:notaport", f"etcd endpoint ('host:notaport') must be {EXPECTED}: "),
        (
            "http://user:s3cret@etcd:2379",
            "etcd endpoint ('http://user:***@etcd:2379') must not carry credentials",
        ),
        ("https://user@etcd:2379", "etcd endpoint ('https://user@etcd:2379') must not carry credentials"),
        ("user:s3cret@etcd:2379", "etcd endpoint ('user:***@etcd:2379') must not carry credentials"),
    ],
    ids=["other-scheme", "empty", "bad-port", "user-and-password", "user-only", "bare-userinfo"],
)
def test_a_bad_endpoint_is_a_value_error_naming_it(endpoint: str, message: str) -> None:
    with pytest.raises(EndpointError, match=re.escape(message)) as caught:
        parse_endpoint(endpoint)
    assert isinstance(caught.value, ValueError)
    assert "s3cret" not in str(caught.value)


def test_credentials_in_a_url_say_where_credentials_go() -> None:
    with pytest.raises(EndpointError, match="ETHA_ETCD_USERNAME and ETHA_ETCD_PASSWORD_FILE"):
        parse_endpoint("http://u:p@etcd:2379")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1", "http://u:***@h:1"),
        ("http://u@h:1", "http://u@h:1"),
        ("http://h:1", "http://h:1"),
        ("h:1/a@b", "h:1/a@b"),
    ],
    ids=["password", "user-only", "none", "at-in-path"],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
