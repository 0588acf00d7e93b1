"""etcd endpoints (``host:port`` or ``http://host:port``), parsed: shared by the job model, which
checks ``spec.rendezvous.etcd.endpoints``, and the etcd store, which connects to them.

Pure and standard library only: importing it loads no store.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: etcd's client port, when an endpoint names none.
DEFAULT_ETCD_PORT = 2379


class EndpointError(ValueError):
    """An etcd endpoint is not ``host:port`` or ``http://host:port``."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of an etcd endpoint; the port defaults to :data:`DEFAULT_ETCD_PORT`.

    Raises:
        EndpointError: the endpoint is not ``host:port`` or ``http://host:port``.
    """
    text = endpoint.strip() if isinstance(endpoint, str) else ""
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        raise EndpointError(f"etcd endpoint ({endpoint!r}) must be host:port or http://host:port.")
    try:
        port = parts.port or DEFAULT_ETCD_PORT
    except ValueError as exc:
        raise EndpointError(
            f"etcd endpoint ({endpoint!r}) must be host:port or http://host:port: {exc}."
        ) from exc
    return parts.hostname, port
