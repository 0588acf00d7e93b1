"""A small Kubernetes REST client for the tests (standard library only): JSON in, JSON out.

The tests use it instead of the ``kubernetes`` package, whose typed models (version 37) validate
bodies client-side and refuse what the API server accepts; here every object goes out as written.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class KubeError(Exception):
    """The API server answered outside 2xx; ``status`` and ``body`` (its Status object) say why."""

    def __init__(self, method: str, path: str, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.message = str(body.get("message") or body)
        super().__init__(f"{method} {path}: {status} {self.message}")


class Kube:
    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ca_file = ca_file
        self._ssl = ssl.create_default_context(cafile=str(ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict[str, Any]:
        url = self.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                status_body = json.loads(raw) if raw else {}
            except ValueError:
                status_body = {"message": raw.decode(errors="replace")}
            raise KubeError(method, path, exc.code, status_body) from exc
        try:
            return json.loads(raw) if raw else {}
        except ValueError:  # /readyz, /healthz: plain text
            return {"text": raw.decode(errors="replace")}

    def get(self, path: str, **query: str) -> dict[str, Any]:
        return self.request("GET", path, query=query or None)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, path: str, body: dict[str, Any], **query: str) -> dict[str, Any]:
        return self.request("POST", path, body, query=query or None)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, **query: str) -> dict[str, Any] | None:
        try:
            return self.request("DELETE", path, query=query or None)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout: float = 60) -> Iterator[dict[str, Any]]:
        """Watch events of a collection from ``resource_version`` until the server ends the stream
        (after about ``timeout`` seconds)."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(timeout)),
        }
        url = f"{self.server}{path}?{urllib.parse.urlencode(query)}"
        req = urllib.request.Request(url)
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, context=self._ssl, timeout=timeout + 30) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)


def container_env(container: dict[str, Any], fields: dict[str, str]) -> dict[str, str]:
    """A container's environment as its kubelet would set it: literal values, and ``fieldRef``s
    resolved from ``fields`` (e.g. metadata.namespace); other sources are left out."""
    env = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif ref := ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath"):
            env[item["name"]] = fields.get(ref, "")
    return env
