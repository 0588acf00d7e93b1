"""The real kopf operator against the emulator (the fault tests: API errors injected, the API
server stopped mid-job), in a thread and event loop of its own."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kopf
import yaml
from kubernetes import client

from etha.operator import handlers
from etha.operator.config import OperatorConfig
from etha.operator.k8s import Api
from tests.helpers import REPO, tool
from tests.integration.emulator.emulator import Emulator
from tests.rbac import deploy_docs, grants, roles_in


class Operator:
    """The real kopf operator in a thread and event loop of its own; restartable."""

    def __init__(self) -> None:
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.config = OperatorConfig()

    def start(self) -> None:
        ready, self._stop = threading.Event(), threading.Event()
        stop = self._stop
        url, config = self.url, self.config
        registry = handlers.registry(config)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, scheme="Bearer", token="test", insecure=True)

        kopf.on.login(registry=registry)(login)
        memo = handlers.operator_memo(config, Api(client.ApiClient(client.Configuration(host=url))))

        def run() -> None:
            asyncio.run(
                kopf.operator(
                    clusterwide=True,
                    standalone=True,
                    ready_flag=ready,
                    stop_flag=stop,
                    registry=registry,
                    memo=memo,
                )
            )

        self._thread = threading.Thread(target=run, name="operator", daemon=True)
        self._thread.start()
        assert ready.wait(30), "the operator did not start"

    def stop(self) -> None:
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join(20)
            assert not self._thread.is_alive(), "the operator did not stop"


@contextmanager
def operated_emulator(
    operator: Operator, status_url: Callable[[dict[str, Any]], str | None] | None = None
) -> Iterator[Emulator]:
    """The emulator plus the operator running against it, each in its own thread and loop.
    ``status_url`` says where a master pod serves its status document (default: its pod IP).

    On the way out, checks RBAC sufficiency: every request the operator sent is granted by the
    chart's and deploy/'s roles.
    """
    emu = Emulator().start()
    operator.url = emu.url
    if status_url is not None:
        operator.config = operator.config.replace(status_url=status_url)
    try:
        operator.start()
        yield emu
    finally:
        operator.stop()
        emu.stop()
    used = emu.operator_requests()
    assert used, "no operator request was recorded"
    for where, granted in rbac_grants().items():
        assert used <= granted, f"{where} lacks {sorted(used - granted)}"


@functools.cache
def rbac_grants() -> dict[str, set[tuple[str, str, str]]]:
    chart = subprocess.run(
        [tool("helm"), "template", "etha", str(REPO / "charts" / "etha-operator")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = {}
    for where, docs in (("the chart", list(yaml.safe_load_all(chart))), ("deploy/", deploy_docs(REPO))):
        # Every role the operator's ServiceAccount gets (the leader-election Role too).
        out[where] = {g for role in roles_in([d for d in docs if d]) for g in grants(role["rules"])}
    return out
