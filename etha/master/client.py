"""A small synchronous client of the master's agent channel (see docs/recovery.md), for the
decider (``etha run-local``) and tests: it reads events, asks for the next generation, stops the
job, and reads the current generation as an agent does. Stdlib only; no torch.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

#: Seconds a request may take beyond the long poll it asks for.
MARGIN = 10.0


class MasterClientError(RuntimeError):
    """The master answered with an error, or could not be reached.

    ``status`` is the HTTP status code (0 when the master could not be reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class MasterClient:
    """The agent channel at ``url`` (``http://host:port``), with the decider's ``token``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"url ({url!r}) must be http://HOST:PORT.")
        self.host, self.port = parts.hostname, parts.port
        self.token = token
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, wait: float = 0.0, auth: bool = True
    ) -> dict[str, Any]:
        headers = {"Connection": "close"}
        if auth and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout + wait + MARGIN)
        where = f"{self.host}:{self.port}"
        try:
            conn.request(method, path, body=data, headers=headers)
            answer = conn.getresponse()
            raw = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise MasterClientError(f"the master's agent channel at {where} is not reachable: {exc}") from exc
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {"error": raw[:200].decode("utf-8", "replace")}
        if answer.status != 200:
            why = doc.get("error", "") if isinstance(doc, dict) else ""
            raise MasterClientError(
                f"{method} {path} at {where} answered {answer.status}: {why}", status=answer.status
            )
        if not isinstance(doc, dict):
            raise MasterClientError(f"{method} {path} at {where} answered {raw[:200]!r}, not a JSON object.")
        return doc

    def events(self, after: int = -1, timeout: float = 0.0) -> dict[str, Any]:
        """``{"seq", "generation", "port", "state", "reason", "exits", "started"}`` once ``seq`` is
        past ``after``, or after ``timeout`` seconds (at most 30) whatever it is."""
        return self._request("GET", f"/v1/events?after={after}&timeout={timeout:g}", wait=timeout)

    def next_generation(self, generation: int, reason: str = "") -> dict[str, Any]:
        """Asks for ``generation`` (the current + 1 switches; the current is a no-op):
        ``{"generation", "port"}``. MasterClientError with status 409 for any other."""
        return self._request("POST", "/v1/generation", {"generation": generation, "reason": reason})

    def stop(self, reason: str = "") -> dict[str, Any]:
        """Stops the job: every agent stops its child and exits with the child's code."""
        return self._request("POST", "/v1/stop", {"reason": reason})

    def generation(self, after: int = -1, timeout: float = 0.0) -> dict[str, Any]:
        """``{"generation", "port", "state", "reason"}`` once past ``after`` (or stopped), or after
        ``timeout`` seconds (at most 30): what an agent reads."""
        path = f"/v1/generation?after={after}&timeout={timeout:g}"
        return self._request("GET", path, wait=timeout, auth=False)
