"""What a job that restarts in place (``spec.restartStrategy: InPlace``, docs/recovery.md) adds to
its children: the agent's ConfigMap, the worker container wrapped by the agent, the master's agent
channel. Pure, but for :func:`agent_source`, which reads the agent's file from the package once.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Sequence
from typing import Any

from etha.job import constants as c
from etha.job.names import agent_port
from etha.job.spec import JobSpec

Manifest = dict[str, Any]


@functools.cache
def agent_source() -> str:
    """The agent (``etha/agent/agent.py``, stdlib only) as shipped in the package: what the
    job's ConfigMap carries into every worker container."""
    return importlib.resources.files("etha").joinpath("agent", c.AGENT_FILE).read_text(encoding="utf-8")


def agent_config_map_name(job: str) -> str:
    """The job's ConfigMap holding the agent (one per job, kept across attempts)."""
    return f"{job}-agent"


def agent_path() -> str:
    """The agent's file in a wrapped worker container."""
    return f"{c.AGENT_MOUNT_PATH}/{c.AGENT_FILE}"


def agent_python(command: Sequence[str]) -> str:
    """The interpreter that runs the agent: the command's own when it is a Python
    (``/opt/conda/bin/python3.11 train.py``: the image's, which surely exists), else ``python3``."""
    first = str(command[0]) if command else ""
    return first if os.path.basename(first).startswith("python") else "python3"


def wrapped_command(command: Sequence[str], args: Sequence[str]) -> list[str]:
    """``[<python>, /etha/agent/agent.py, --, *command, *args]``: the agent runs the user's
    command (and its args) as its child."""
    return [agent_python(command), agent_path(), "--", *map(str, command), *map(str, args)]


def build_agent_config_map(
    job: JobSpec, labels: dict[str, str], owner: dict[str, Any], source: str
) -> Manifest:
    """The job's ConfigMap of the agent (``source``), owned by the job."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": agent_config_map_name(job.name),
            "namespace": job.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "data": {c.AGENT_FILE: source},
    }


def wrap_worker(job: JobSpec, spec: dict[str, Any]) -> None:
    """Wrap the worker container (the template's first) of a pod ``spec`` in the agent: its
    command runs as the agent's child; the agent's ConfigMap is mounted read-only at
    :data:`~etha.job.constants.AGENT_MOUNT_PATH`; ``ETHA_AGENT_PORT`` tells it the master's agent
    port (``MASTER_ADDR`` its host). Other containers (sidecars) are left as they are."""
    container = spec["containers"][0]
    container["command"] = wrapped_command(container.get("command") or [], container.get("args") or [])
    container.pop("args", None)
    env = list(container.get("env") or [])
    if not any(item.get("name") == c.ENV_AGENT_PORT for item in env):
        env.append({"name": c.ENV_AGENT_PORT, "value": str(agent_port(job.port))})
    container["env"] = env
    mounts = list(container.get("volumeMounts") or [])
    mounts.append({"name": c.AGENT_VOLUME, "mountPath": c.AGENT_MOUNT_PATH, "readOnly": True})
    container["volumeMounts"] = mounts
    volume = {
        "name": c.AGENT_VOLUME,
        "configMap": {"name": agent_config_map_name(job.name), "defaultMode": 0o444},
    }
    spec["volumes"] = [*(spec.get("volumes") or []), volume]
