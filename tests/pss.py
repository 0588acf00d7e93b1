"""The Pod Security Standard "restricted" profile, as a checker for the pods this project makes.

Mirrors https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted
controls that apply to a pod spec). Returns the violations; an empty list means compliant.
"""

from __future__ import annotations

from typing import Any

_ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
_ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            out.append(f"spec.{flag} is true")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']} uses {sorted(kinds - _ALLOWED_VOLUMES)}")
    pod_sc = pod_spec.get("securityContext") or {}
    containers = [
        *(pod_spec.get("initContainers") or []),
        *(pod_spec.get("containers") or []),
        *(pod_spec.get("ephemeralContainers") or []),
    ]
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"container {name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"container {name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"container {name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - _ADDABLE_CAPABILITIES:
            out.append(f"container {name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            out.append(f"container {name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"container {name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"container {name}: seccompProfile.type must be RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"container {name}: hostPort {port['hostPort']}")
    return out


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a Pod, a workload (Deployment, Job, ...) or None."""
    if obj.get("kind") == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template = (obj.get("spec") or {}).get("template")
    if isinstance(template, dict) and "spec" in template:
        inner: dict[str, Any] = template["spec"]
        return inner
    return None
