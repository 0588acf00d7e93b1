"""The Pod Security Standard "restricted" profile for worker pods: defaults the operator fills in
where the user's template is silent, and the requests it refuses (the standard forbids them).

https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted). Pure functions.
"""

from __future__ import annotations

from typing import Any

#: Volume types the restricted profile allows.
ALLOWED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: The one capability a restricted container may add.
ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
_CONTAINER_KEYS = ("initContainers", "containers")


def apply_restricted_defaults(pod_spec: dict[str, Any]) -> None:
    """Fill in what the restricted profile requires wherever the template left it unset."""
    pod_sc = pod_spec.setdefault("securityContext", {})
    pod_sc.setdefault("runAsNonRoot", True)
    pod_sc.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    for key in _CONTAINER_KEYS:
        for container in pod_spec.get(key) or []:
            sc = container.setdefault("securityContext", {})
            sc.setdefault("allowPrivilegeEscalation", False)
            caps = sc.setdefault("capabilities", {})
            if "drop" not in caps:
                caps["drop"] = ["ALL"]


def restricted_violations(pod_spec: dict[str, Any], path: str = "spec") -> list[str]:
    """What in ``pod_spec`` breaks the restricted profile, each naming its field (empty: fine).

    The one checker: the operator runs it on a template with :func:`apply_restricted_defaults`
    applied (so only what the user set can break it), the tests on every pod the project makes.
    A container inherits the pod's ``runAsNonRoot`` and ``seccompProfile``, as the kubelet does.
    """
    out = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            out.append(f"{path}.{flag} must be false (Pod Security Standard 'restricted').")
    for i, volume in enumerate(pod_spec.get("volumes") or []):
        kinds = set(volume) - {"name"} - ALLOWED_VOLUMES
        if kinds:
            out.append(
                f"{path}.volumes[{i}] uses {sorted(kinds)[0]}; allowed: {', '.join(sorted(ALLOWED_VOLUMES))}."
            )
    pod_sc = pod_spec.get("securityContext") or {}
    out += _context_violations(pod_sc, f"{path}.securityContext")
    for key in (*_CONTAINER_KEYS, "ephemeralContainers"):
        for i, container in enumerate(pod_spec.get(key) or []):
            out += _container_violations(container, pod_sc, f"{path}.{key}[{i}]")
    return out


def _container_violations(container: dict[str, Any], pod_sc: dict[str, Any], where: str) -> list[str]:
    sc = container.get("securityContext") or {}
    out = _context_violations(sc, f"{where}.securityContext")
    if sc.get("privileged"):
        out.append(f"{where}.securityContext.privileged must be false.")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}.securityContext.allowPrivilegeEscalation must be false.")
    caps = sc.get("capabilities") or {}
    added = set(caps.get("add") or []) - ADDABLE_CAPABILITIES
    if added:
        out.append(
            f"{where}.securityContext.capabilities.add may only hold NET_BIND_SERVICE, not {sorted(added)}."
        )
    if "ALL" not in (caps.get("drop") or []):
        out.append(f"{where}.securityContext.capabilities.drop must include ALL.")
    # Unset on both the container and the pod: nothing makes it non-root or confined.
    if sc.get("runAsNonRoot") is None and pod_sc.get("runAsNonRoot") is None:
        out.append(f"{where}.securityContext.runAsNonRoot must be true (here or on the pod).")
    if (sc.get("seccompProfile") or pod_sc.get("seccompProfile")) is None:
        out.append(f"{where}.securityContext.seccompProfile.type must be RuntimeDefault or Localhost.")
    for j, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            out.append(f"{where}.ports[{j}].hostPort must be unset (got {port['hostPort']}).")
    return out


def _context_violations(sc: dict[str, Any], where: str) -> list[str]:
    out = []
    if sc.get("runAsNonRoot") is False:
        out.append(f"{where}.runAsNonRoot must be true.")
    if sc.get("runAsUser") == 0:
        out.append(f"{where}.runAsUser must not be 0 (root).")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
        out.append(f"{where}.seccompProfile.type ({seccomp!r}) must be RuntimeDefault or Localhost.")
    return out
