"""The fake Nodes' kubelet log endpoint, so ``kubectl logs`` and ``etha logs`` work on the control
plane: the API server's ``pods/log`` proxies to ``https://<node address>:<kubelet port>/containerLogs/
<namespace>/<pod>/<container>``; this serves the local node's log file of that pod (with ``follow``,
until its process ends). The port is a free one, announced in each Node's
``status.daemonEndpoints.kubeletEndpoint``; the API server does not verify a kubelet's certificate
unless told to (``--kubelet-certificate-authority``), so the API server's own serves."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

if TYPE_CHECKING:
    from tests.harness.cluster import ControlPlane
    from tests.harness.node import LocalNode

#: How often a followed log is read again for new lines (the server's loop, not a test's wait).
FOLLOW_INTERVAL = 0.1


class KubeletLogs:
    """Serves ``node``'s pod logs on a free port of 127.0.0.1 over TLS (``cert``, ``key``)."""

    def __init__(self, node: LocalNode, cert: Path, key: Path) -> None:
        self.node = node
        handler = type("Handler", (_Handler,), {"logs": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="kubelet-logs", daemon=True)

    def start(self, plane: ControlPlane) -> KubeletLogs:
        """Serve, and announce the port on every Node the local node plays."""
        self._thread.start()
        endpoints = {"daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}
        for name in sorted(self.node.nodes):
            plane.admin.request(
                "PATCH", f"/api/v1/nodes/{name}/status", {"status": endpoints},
                content_type="application/merge-patch+json",
            )  # fmt: skip
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def running(self, namespace: str, pod: str) -> bool:
        procs = list(self.node.procs.values())
        return any((p.namespace, p.name) == (namespace, pod) and p.proc.poll() is None for p in procs)


class _Handler(BaseHTTPRequestHandler):
    logs: KubeletLogs

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, f"no such kubelet path: {url.path}")
            return
        _, namespace, pod, _container = parts
        path = self.logs.node.workdir / f"{namespace}_{pod}.log"
        if not path.exists():
            self.send_error(404, f"no log for pod {namespace}/{pod}")
            return
        follow = parse_qs(url.query).get("follow") == ["true"]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        with path.open("rb") as f:
            self.wfile.write(f.read())
            while follow and self.logs.running(namespace, pod):
                self.wfile.write(f.read())
                self.wfile.flush()
                time.sleep(FOLLOW_INTERVAL)
            self.wfile.write(f.read())

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass
