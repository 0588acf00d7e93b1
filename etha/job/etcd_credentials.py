"""The etcd backend's TLS files and password in worker pods: a Secret the operator is told about
(chart ``etcd.credentials``), mounted into every container of an etcd-backend job's worker pods,
with the ``ETHA_ETCD_*`` variables that point ``etha.kvstore.from_env()`` at its files.

Pure: it edits a pod spec (a dict) and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etha import constants as c

#: The pod volume holding the Secret.
VOLUME = "etha-etcd-credentials"
#: Where the Secret is mounted (read-only) in every container.
MOUNT_PATH = "/var/run/secrets/etha.io/etcd"
#: The Secret's key holding the PEM CA that verifies etcd (a kubernetes.io/tls Secret's names).
KEY_CA = "ca.crt"
#: The Secret's key holding the PEM client certificate.
KEY_CERT = "tls.crt"
#: The Secret's key holding the client certificate's PEM private key.
KEY_KEY = "tls.key"
#: The Secret's key holding the etcd user's password (needed only with a username).
KEY_PASSWORD = "password"


@dataclass(frozen=True)
class EtcdCredentials:
    """The Secret (in the job's namespace) with ca.crt, tls.crt, tls.key and, with ``username``,
    the password; ``username`` empty: TLS only, no etcd user."""

    secret: str
    username: str = ""

    def env(self) -> dict[str, str]:
        """The variables from_env() reads, pointing into the mounted Secret."""
        env = {
            c.ENV_ETCD_CA_FILE: f"{MOUNT_PATH}/{KEY_CA}",
            c.ENV_ETCD_CERT_FILE: f"{MOUNT_PATH}/{KEY_CERT}",
            c.ENV_ETCD_KEY_FILE: f"{MOUNT_PATH}/{KEY_KEY}",
        }
        if self.username:
            env[c.ENV_ETCD_USERNAME] = self.username
            env[c.ENV_ETCD_PASSWORD_FILE] = f"{MOUNT_PATH}/{KEY_PASSWORD}"
        return env


def mount_etcd_credentials(pod_spec: dict[str, Any], credentials: EtcdCredentials) -> None:
    """Add the Secret's volume to ``pod_spec``, and to each of its containers and init containers
    a read-only mount and the variables of :meth:`EtcdCredentials.env` it does not set itself."""
    # Readable by any user: the pods run as a non-root user and may set no fsGroup.
    volume = {"name": VOLUME, "secret": {"secretName": credentials.secret, "defaultMode": 0o444}}
    pod_spec["volumes"] = [v for v in pod_spec.get("volumes") or [] if v.get("name") != VOLUME] + [volume]
    injected = credentials.env()
    for key in ("containers", "initContainers"):
        for container in pod_spec.get(key) or []:
            mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != VOLUME]
            container["volumeMounts"] = [*mounts, {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}]
            env = container.get("env") or []
            taken = {item.get("name") for item in env}
            container["env"] = [
                *env,
                *({"name": k, "value": v} for k, v in injected.items() if k not in taken),
            ]
