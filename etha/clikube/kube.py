"""The API server as ``etha status`` and ``etha logs`` see it: the kubeconfig loaded like kubectl
(``KUBECONFIG``, ``--kubeconfig``, ``--context``, the context's namespace), through the
``kubernetes`` client, imported only here and only when a cluster command runs."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from etha.job import constants as c

#: The environment variable kubectl reads its kubeconfig path(s) from.
ENV_KUBECONFIG = "KUBECONFIG"
#: The extra that brings the kubernetes client.
CLIENT_EXTRA = "operator"


class ClusterError(Exception):
    """A cluster command cannot go on; the message says why, for a person."""


def not_found(name: str, namespace: str) -> ClusterError:
    return ClusterError(f'trainingjob "{name}" not found in namespace "{namespace}".')


@dataclass
class Cluster:
    """An API client and the namespace the command works in."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def trainingjob(self, name: str) -> dict[str, Any]:
        from kubernetes import client

        try:
            job = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, c.PLURAL, name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                raise not_found(name, self.namespace) from exc
            raise _api_error(exc, f'reading trainingjob "{name}"') from exc
        return cast(dict[str, Any], job)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The Events whose involvedObject is the TrainingJob ``name``."""
        selector = f"involvedObject.name={name},involvedObject.kind={c.KIND}"
        return self._list("list_namespaced_event", selector, field=True)

    def pods(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        return self._list("list_namespaced_pod", ",".join(f"{k}={v}" for k, v in labels.items()))

    def _list(self, method: str, selector: str, field: bool = False) -> list[dict[str, Any]]:
        from kubernetes import client

        key = "field_selector" if field else "label_selector"
        try:
            resp = getattr(self._core(), method)(self.namespace, _preload_content=False, **{key: selector})
        except client.ApiException as exc:
            raise _api_error(exc, f"listing {selector}") from exc
        return list(json.loads(resp.data)["items"])

    def log_lines(self, pod: str, container: str, follow: bool) -> Iterator[str]:
        """The lines of ``container`` of ``pod``; with ``follow``, until the container ends."""
        from kubernetes import client

        try:
            resp = self._core().read_namespaced_pod_log(
                pod, self.namespace, container=container, follow=follow, _preload_content=False
            )
        except client.ApiException as exc:
            raise _api_error(exc, f"reading the log of pod {pod}") from exc
        try:
            pending = b""
            for chunk in resp.stream(4096, decode_content=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode(errors="replace") for line in lines)
            if pending:
                yield pending.decode(errors="replace")
        finally:
            resp.release_conn()


def _api_error(exc: Any, doing: str) -> ClusterError:
    message = exc.reason
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(exc.body).get("message") or message
    return ClusterError(f"{doing}: the API server answered {exc.status}: {message}")


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
    """A client for ``context`` (default: the current one) of ``kubeconfig`` (default: ``KUBECONFIG``,
    else ``~/.kube/config``), in ``namespace`` (default: the context's, else ``default``)."""
    try:
        from kubernetes import config as kube_config
    except ImportError as exc:
        raise ClusterError(
            f"the cluster commands need the kubernetes client, which is not installed: "
            f"pip install 'etha[{CLIENT_EXTRA}]'."
        ) from exc
    config: Any = kube_config  # untyped
    # Read KUBECONFIG now (the client reads it once, at import); paths joined by ":" merge.
    path = kubeconfig or os.environ.get(ENV_KUBECONFIG) or None
    where = path or "~/.kube/config"
    try:
        api = config.new_client_from_config(config_file=path, context=context)
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError) as exc:
        raise ClusterError(f"cannot load the kubeconfig ({where}): {exc}") from exc
    if namespace is None:
        chosen = next((x for x in contexts if x["name"] == context), current) if context else current
        namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    return Cluster(api, namespace)
