"""A real etcd with TLS (client certificates required) and authentication on, for the tests.

Certificates are made with ``openssl`` in the server's temporary dir: a CA, the server's (SAN
127.0.0.1) and a client's. Users are added and auth enabled through etcd's JSON gateway (etcdctl
is not built here): ``root`` (password :data:`ROOT_PASSWORD`) and :data:`USER` (password
:data:`PASSWORD`, read-write on every key).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.etcd_server import EtcdServer

#: The user the stores log in as, and its password.
USER, PASSWORD = "etha-worker", "worker-secret"
#: etcd's root user (auth needs one), and its password.
ROOT_PASSWORD = "root-secret"
#: The client certificate's subject: no CommonName, which etcd's JSON gateway refuses (with
#: --client-cert-auth, "CommonName of client sending a request against gateway will be ignored").
CLIENT_SUBJECT = "/O=etha-client"


def make_certs(d: Path) -> None:
    """ca.crt, server.crt/key (SAN IP 127.0.0.1) and client.crt/key in ``d``."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=etha-test-ca"
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=etha-test-etcd"), ("client", CLIENT_SUBJECT)):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip


class SecureEtcdServer(EtcdServer):
    """An :class:`EtcdServer` on https with ``--client-cert-auth``, auth enabled."""

    scheme = "https"

    def __init__(self) -> None:
        self.auth_on = False
        super().__init__()

    @property
    def certs(self) -> Path:
        return self.dir / "certs"

    def extra_args(self) -> list[str]:
        c = self.certs
        return [
            "--cert-file", str(c / "server.crt"),
            "--key-file", str(c / "server.key"),
            "--trusted-ca-file", str(c / "ca.crt"),
            "--client-cert-auth",
        ]  # fmt: skip

    def open_health(self) -> Any:
        return urllib.request.urlopen(f"{self.url}/health", timeout=1, context=self.context())

    def start(self) -> None:
        if not self.certs.exists():
            self.certs.mkdir()
            make_certs(self.certs)
        super().start()
        if not self.auth_on:
            self._enable_auth()

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        ctx.load_cert_chain(str(self.certs / "client.crt"), str(self.certs / "client.key"))
        return ctx

    def call(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """POST to the JSON gateway as the test client (with ``token``, as that user)."""
        headers = {"Authorization": token} if token else {}
        req = urllib.request.Request(f"{self.url}{path}", json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(req, timeout=5, context=self.context()) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def _enable_auth(self) -> None:
        for user, password in (("root", ROOT_PASSWORD), (USER, PASSWORD)):
            self.call("/v3/auth/user/add", {"name": user, "password": password})
        self.call("/v3/auth/role/add", {"name": "etha"})
        everything = {"permType": "READWRITE", "key": "AA==", "range_end": "AA=="}  # \0..\0: all keys
        self.call("/v3/auth/role/grant", {"name": "etha", "perm": everything})
        self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/v3/auth/user/grant", {"user": USER, "role": "etha"})
        self.call("/v3/auth/enable", {})
        self.auth_on = True

    def write_credentials(self, folder: Path, password: str = PASSWORD) -> dict[str, str]:
        """The store's keyword arguments for this server, the password in a file in ``folder``."""
        (folder / "password").write_text(password + "\n")
        return {
            "ca_file": str(self.certs / "ca.crt"),
            "cert_file": str(self.certs / "client.crt"),
            "key_file": str(self.certs / "client.key"),
            "username": USER,
            "password_file": str(folder / "password"),
        }
