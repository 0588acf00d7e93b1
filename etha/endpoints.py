"""etcd endpoints (``host:port``, ``http://host:port`` or ``https://host:port``), parsed: shared by
the job model, which checks ``spec.rendezvous.etcd.endpoints``, and the etcd store, which connects
to them.

Credentials never go in an endpoint: a URL with a user (``http://user:pw@etcd:2379``) is refused,
naming the URL without its password and where credentials go instead.

Pure and standard library only: importing it loads no store.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: etcd's client port, when an endpoint names none.
DEFAULT_ETCD_PORT = 2379
#: The schemes an endpoint may name ("" for a bare host:port: http, or https when TLS is set up).
SCHEMES = ("", "http", "https")
#: What an endpoint must look like, for error messages.
EXPECTED = "host:port, http://host:port or https://host:port"
#: Where credentials go instead of an endpoint's URL, for error messages.
CREDENTIALS_GO = (
    "give the user and password to the store (ETHA_ETCD_USERNAME and ETHA_ETCD_PASSWORD_FILE; "
    "the chart's etcd.credentials.secretName), never in the URL"
)


class EndpointError(ValueError):
    """An etcd endpoint is not one of :data:`EXPECTED`, or it carries credentials."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of an etcd endpoint; the port defaults to :data:`DEFAULT_ETCD_PORT`.

    Raises:
        EndpointError: the endpoint is not one of :data:`EXPECTED`, or names a user.
    """
    _, host, port = parse_url(endpoint)
    return host, port


def parse_url(endpoint: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an etcd endpoint; the scheme is "" for a bare ``host:port``.

    Raises:
        EndpointError: the endpoint is not one of :data:`EXPECTED`, or names a user.
    """
    text = endpoint.strip() if isinstance(endpoint, str) else ""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    parts = urlsplit(text if scheme else f"http://{text}")
    if parts.username is not None or parts.password is not None:
        raise EndpointError(f"etcd endpoint ({redact(text)!r}) must not carry credentials: {CREDENTIALS_GO}.")
    if scheme not in SCHEMES or not parts.hostname:
        raise EndpointError(f"etcd endpoint ({endpoint!r}) must be {EXPECTED}.")
    try:
        port = parts.port or DEFAULT_ETCD_PORT
    except ValueError as exc:
        raise EndpointError(f"etcd endpoint ({endpoint!r}) must be {EXPECTED}: {exc}.") from exc
    return scheme, parts.hostname, port


def redact(url: str) -> str:
    """``url`` with the password of its user info (if any) replaced by ``***``."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    userinfo, at, hostpart = rest.partition("@")
    if not at or "/" in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:***" if ":" in userinfo else user
    return f"{head}{sep}{masked}@{hostpart}"
