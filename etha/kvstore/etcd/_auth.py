"""TLS and user/password authentication for the etcd store (standard library only).

- :func:`tls_context`: the client's TLS settings from files (a CA to verify etcd with; a client
  certificate and key, for an etcd started with ``--client-cert-auth``).
- :class:`Login`: etcd's token auth. ``POST /v3/auth/authenticate`` with the user and password
  returns a token, sent as the ``Authorization`` header of every request; a token etcd no
  longer accepts (expired, or etcd restarted) is dropped and the gateway logs in again.

The password is read from a file (a mounted Secret), kept in memory, and never put in a message.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypedDict, cast

from etha import constants as c
from etha.kvstore.errors import InvalidArgumentError, KVStoreError, StoreConfigError
from etha.kvstore.etcd._sharing import Registry

#: Answer of a gateway call: (HTTP status, body).
Answer = tuple[int, bytes]


class StoreAuthError(KVStoreError):
    """etcd refused the store's user (a wrong password, an unknown user, a missing permission)."""


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    """A client TLS context (None when no file is given): etcd verified with ``ca_file`` (else the
    system's CAs), and the client certificate ``cert_file``/``key_file`` presented if given.

    Raises:
        StoreConfigError: a file is unreadable or not what it should be, or only one of
            ``cert_file`` and ``key_file`` is given; the message names the file.
    """
    if not (ca_file or cert_file or key_file):
        return None
    if bool(cert_file) != bool(key_file):
        given, missing = ("cert_file", "key_file") if cert_file else ("key_file", "cert_file")
        raise StoreConfigError(f"etcd TLS: {given} is set but {missing} is not; give both or neither.")
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise StoreConfigError(
            f"etcd TLS: ca_file ({ca_file!r}) is not a readable PEM CA bundle: {exc}."
        ) from exc
    if cert_file and key_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise StoreConfigError(
                f"etcd TLS: cert_file ({cert_file!r}) and key_file ({key_file!r}) are not a readable "
                f"PEM certificate and its key: {exc}."
            ) from exc
    return ctx


def read_password(path: str) -> str:
    """The password in the file ``path`` (one trailing newline dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreConfigError(f"etcd auth: password_file ({path!r}) is not readable: {exc}.") from exc
    return text.removesuffix("\n").removesuffix("\r")


class Login:
    """One etcd user's token, shared by the threads of a gateway."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self._token: str | None = None
        self._lock = threading.Lock()

    def body(self) -> dict[str, str]:
        return {"name": self.username, "password": self._password}

    def token(self, authenticate: Callable[[dict[str, str]], Answer], where: str) -> str:
        """The current token, logging in (``authenticate(body)``) when there is none.

        Raises:
            StoreAuthError: etcd refused the user or its password.
        """
        with self._lock:
            if self._token is None:
                status, data = authenticate(self.body())
                self._token = self._accept(status, data, where)
            return self._token

    def forget(self, token: str) -> None:
        """Drop ``token`` (etcd said it is invalid): the next request logs in again."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _accept(self, status: int, data: bytes, where: str) -> str:
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            body = {}
        if status == 200 and isinstance(body, dict):
            return str(body.get("token") or "")
        message = body.get("message") if isinstance(body, dict) else None
        text = str(message or data[:200].decode("utf-8", "replace")).strip()
        if "authentication is not enabled" in text:
            return ""  # etcd runs without auth: requests need no token
        raise StoreAuthError(
            f"etcd at {where} refused to log in user {self.username!r}: {text}. Check the user "
            "and the password in its password file."
        )


class Security(TypedDict, total=False):
    """EtcdStore's TLS and auth keyword arguments."""

    ca_file: str
    cert_file: str
    key_file: str
    username: str
    password_file: str


def options_from_env(env: Mapping[str, str]) -> Security:
    """EtcdStore's TLS and auth keyword arguments from ``ETHA_ETCD_CA_FILE``,
    ``ETHA_ETCD_CERT_FILE``, ``ETHA_ETCD_KEY_FILE``, ``ETHA_ETCD_USERNAME`` and
    ``ETHA_ETCD_PASSWORD_FILE`` (the unset or empty ones left out)."""
    return cast(Security, {arg: env[name] for arg, name in ENV_OF_OPTION.items() if env.get(name)})


#: The environment variable of each of EtcdStore's TLS and auth arguments.
ENV_OF_OPTION = {
    "ca_file": c.ENV_ETCD_CA_FILE,
    "cert_file": c.ENV_ETCD_CERT_FILE,
    "key_file": c.ENV_ETCD_KEY_FILE,
    "username": c.ENV_ETCD_USERNAME,
    "password_file": c.ENV_ETCD_PASSWORD_FILE,
}


def make_login(username: str | None, password_file: str | None) -> Login | None:
    """The :class:`Login` for ``username`` (None without one).

    Raises:
        StoreConfigError: only one of the two is given, or the password file is unreadable.
    """
    if not username and not password_file:
        return None
    if not username or not password_file:
        given, missing = ("username", "password_file") if username else ("password_file", "username")
        raise StoreConfigError(f"etcd auth: {given} is set but {missing} is not; give both or neither.")
    password = read_password(password_file)
    with _LOGINS.lock:  # a token per user and process: etcd's bcrypt check costs ~50 ms a login
        return _LOGINS.setdefault((username, password), Login(username, password))


#: This process's logins, by user and password (a fork keeps none: tokens are cheap to redo).
_LOGINS: Registry[tuple[str, str], Login] = Registry()


def tls_for(
    endpoints: Sequence[str], schemes: list[str], tls: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """The TLS context of a gateway: ``tls``, or the system's for ``https://`` endpoints; None
    for plain http. One cluster speaks one of the two: a mix is refused."""
    secure = tls is not None or "https" in schemes
    for endpoint, scheme in zip(endpoints, schemes, strict=True):
        if secure and scheme == "http":
            raise InvalidArgumentError(
                f"etcd endpoint ({endpoint!r}) is plain http, but the store uses TLS (an https "
                "endpoint or TLS files were given): name it https://host:port or host:port."
            )
    if secure and tls is None:
        return ssl.create_default_context()
    return tls


def refused_tls(where: str, exc: ssl.SSLError) -> StoreAuthError:
    """A TLS handshake etcd (or this client) refused: not worth retrying."""
    reason = getattr(exc, "reason", None) or str(exc)
    hint = ""
    if "CERTIFICATE_REQUIRED" in str(exc).upper() or "HANDSHAKE_FAILURE" in str(exc).upper():
        hint = (
            " etcd wants a client certificate: set cert_file and key_file"
            f" ({c.ENV_ETCD_CERT_FILE}, {c.ENV_ETCD_KEY_FILE})."
        )
    elif isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            " etcd's certificate is not signed by the CA given"
            f" (ca_file, {c.ENV_ETCD_CA_FILE}) or names another host."
        )
    return StoreAuthError(f"etcd at {where} refused the TLS connection ({reason}).{hint}")


def denied(login: Login | None, where: str, path: str, message: str) -> StoreAuthError:
    """etcd refused a request as unauthenticated (401) or not permitted (403)."""
    if login is None:
        return StoreAuthError(
            f"etcd at {where} refused {path} ({message}): it requires a user; set username and "
            f"password_file ({c.ENV_ETCD_USERNAME}, {c.ENV_ETCD_PASSWORD_FILE})."
        )
    return StoreAuthError(
        f"etcd at {where} denied user {login.username!r} {path}: {message}. Grant the user's role "
        "read-write access to the keys under /etha/."
    )
