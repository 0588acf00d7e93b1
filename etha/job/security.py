"""The Pod Security Standards ("baseline" and "restricted") for worker pods: defaults the operator
fills in where the user's template is silent, and the requests it refuses (the standard forbids
them), each refusal naming the field and what the standard allows.

https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted, as of
Kubernetes 1.34). Pure functions.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

from etha import constants as env_names
from etha.job.errors import InvalidSpec

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
#: SELinux types the baseline profile allows (``seLinuxOptions.user`` and ``role`` must be unset).
SELINUX_TYPES = ("container_t", "container_init_t", "container_kvm_t", "container_engine_t")
#: Sysctls the baseline profile calls safe (namespaced, isolated from the node and other pods).
SAFE_SYSCTLS = (
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_syncookies",
)
#: Profile types the standard allows for both seccomp (restricted) and AppArmor (baseline).
CONFINED_PROFILES = ("RuntimeDefault", "Localhost")
#: The annotation that named a container's AppArmor profile before the appArmorProfile field.
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
#: AppArmor annotation values the baseline profile allows (``localhost/<profile>`` too).
APPARMOR_ANNOTATION_VALUES = ("runtime/default", "localhost/<profile>")
#: The one ``procMount`` the baseline profile allows (``Unmasked`` exposes the host's /proc).
PROC_MOUNT_DEFAULT = "Default"
_CONTAINER_KEYS = ("initContainers", "containers")
_ALL_CONTAINER_KEYS = (*_CONTAINER_KEYS, "ephemeralContainers")
# Variables whose value the operator decides; a template that sets them differently breaks rendezvous.
_RENDEZVOUS_VARS = (
    env_names.ENV_WORLD_SIZE,
    env_names.ENV_RANK,
    env_names.ENV_WORLD_SIZE_ETHA,
    env_names.ENV_RANK_ETHA,
)

#: One refusal: the path of the field, and the whole sentence that names it.
Violation = tuple[str, str]


def apply_restricted_defaults(pod_spec: dict[str, Any]) -> None:
    """Fill in what the restricted profile requires wherever the template left it unset, and
    keep the API token out of the pod unless the template asks for it."""
    pod_spec.setdefault("automountServiceAccountToken", False)
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


def check_pod_security(template: dict[str, Any], service_accounts: Collection[str] = ()) -> None:
    """Raise :class:`InvalidSpec` for the first thing in a worker template that breaks the
    standard, sets a variable the operator injects, or names a ServiceAccount outside
    ``service_accounts`` (empty: any). Checked as the pod will be: with the defaults applied, so
    only what the user set can break it."""
    found = template_violations(template, service_accounts)
    if found:
        raise InvalidSpec(*found[0])


def template_violations(template: dict[str, Any], service_accounts: Collection[str] = ()) -> list[Violation]:
    """Every refusal :func:`check_pod_security` could raise for ``template`` (empty: fine)."""
    path = "spec.template"
    spec = copy.deepcopy(_obj(template.get("spec")))
    apply_restricted_defaults(spec)
    out = _annotation_violations(_obj(template.get("metadata")), f"{path}.metadata.annotations")
    out += _env_violations(spec, f"{path}.spec")
    out += pod_violations(spec, f"{path}.spec")
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if service_accounts and account and account not in service_accounts:
        key = "serviceAccountName" if spec.get("serviceAccountName") else "serviceAccount"
        out.append(
            (
                f"{path}.spec.{key}",
                f"{path}.spec.{key} ({account!r}) is not one the operator allows; allowed: "
                f"{', '.join(sorted(service_accounts))} (chart value podSecurity.serviceAccounts).",
            )
        )
    return out


def restricted_violations(pod_spec: dict[str, Any], path: str = "spec") -> list[str]:
    """What in ``pod_spec`` breaks the baseline or restricted profile, each message naming its
    field (empty: fine). The tests run it on every pod the project makes."""
    return [message for _, message in pod_violations(pod_spec, path)]


def pod_violations(pod_spec: dict[str, Any], path: str = "spec") -> list[Violation]:
    """:func:`restricted_violations` with the path of each field. A container inherits the pod's
    ``runAsNonRoot``, ``seccompProfile`` and ``seLinuxOptions``, as the kubelet does."""
    out: list[Violation] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        value = pod_spec.get(flag)
        if value:
            out.append(_v(f"{path}.{flag}", f"({value!r}) must be false or unset (host namespaces)."))
    for i, volume in enumerate(pod_spec.get("volumes") or []):
        kinds = set(_obj(volume)) - {"name"} - ALLOWED_VOLUMES
        if kinds:
            out.append(
                _v(
                    f"{path}.volumes[{i}]",
                    f"uses {sorted(kinds)[0]}; allowed: {', '.join(sorted(ALLOWED_VOLUMES))}.",
                )
            )
    pod_sc = _obj(pod_spec.get("securityContext"))
    out += _context_violations(pod_sc, f"{path}.securityContext")
    for j, sysctl in enumerate(pod_sc.get("sysctls") or []):
        name = _obj(sysctl).get("name")
        if name not in SAFE_SYSCTLS:
            where = f"{path}.securityContext.sysctls[{j}].name"
            out.append(_v(where, f"({name!r}) must be one of the safe sysctls: {', '.join(SAFE_SYSCTLS)}."))
    for key in _ALL_CONTAINER_KEYS:
        for i, container in enumerate(pod_spec.get(key) or []):
            out += _container_violations(_obj(container), pod_sc, f"{path}.{key}[{i}]")
    return out


def _container_violations(container: dict[str, Any], pod_sc: dict[str, Any], where: str) -> list[Violation]:
    sc = _obj(container.get("securityContext"))
    at = f"{where}.securityContext"
    out = _context_violations(sc, at)
    if sc.get("privileged"):
        out.append(_v(f"{at}.privileged", f"({sc['privileged']!r}) must be false."))
    if sc.get("allowPrivilegeEscalation") is not False:
        escalation = sc.get("allowPrivilegeEscalation")
        out.append(_v(f"{at}.allowPrivilegeEscalation", f"({escalation!r}) must be false."))
    if sc.get("procMount") not in (None, PROC_MOUNT_DEFAULT):
        out.append(_v(f"{at}.procMount", f"({sc['procMount']!r}) must be {PROC_MOUNT_DEFAULT} or unset."))
    caps = _obj(sc.get("capabilities"))
    added = set(caps.get("add") or []) - ADDABLE_CAPABILITIES
    if added:
        out.append(_v(f"{at}.capabilities.add", f"may only hold NET_BIND_SERVICE, not {sorted(added)}."))
    if "ALL" not in (caps.get("drop") or []):
        out.append(_v(f"{at}.capabilities.drop", "must include ALL."))
    # Unset on both the container and the pod: nothing makes it non-root or confined.
    if sc.get("runAsNonRoot") is None and pod_sc.get("runAsNonRoot") is None:
        out.append(_v(f"{at}.runAsNonRoot", "must be true (here or on the pod)."))
    if (sc.get("seccompProfile") or pod_sc.get("seccompProfile")) is None:
        out.append(_v(f"{at}.seccompProfile.type", "must be RuntimeDefault or Localhost."))
    for j, port in enumerate(container.get("ports") or []):
        if _obj(port).get("hostPort"):
            out.append(_v(f"{where}.ports[{j}].hostPort", f"({port['hostPort']!r}) must be unset or 0."))
    return out


def _context_violations(sc: dict[str, Any], where: str) -> list[Violation]:
    """The checks a pod's and a container's securityContext share."""
    out = []
    if sc.get("runAsNonRoot") is False:
        out.append(_v(f"{where}.runAsNonRoot", "must be true."))
    if sc.get("runAsUser") == 0:
        out.append(_v(f"{where}.runAsUser", "must not be 0 (root)."))
    if _obj(sc.get("windowsOptions")).get("hostProcess"):
        out.append(_v(f"{where}.windowsOptions.hostProcess", "must be false or unset."))
    for name in ("seccompProfile", "appArmorProfile"):
        kind = _obj(sc.get(name)).get("type")
        if kind is not None and kind not in CONFINED_PROFILES:
            out.append(_v(f"{where}.{name}.type", f"({kind!r}) must be {' or '.join(CONFINED_PROFILES)}."))
    selinux = _obj(sc.get("seLinuxOptions"))
    kind = selinux.get("type")
    if kind not in (None, "", *SELINUX_TYPES):
        types = ", ".join(SELINUX_TYPES)
        out.append(_v(f"{where}.seLinuxOptions.type", f"({kind!r}) must be unset or one of {types}."))
    for key in ("user", "role"):
        if selinux.get(key) not in (None, ""):
            out.append(_v(f"{where}.seLinuxOptions.{key}", f"({selinux[key]!r}) must be unset."))
    return out


def _annotation_violations(meta: dict[str, Any], where: str) -> list[Violation]:
    """AppArmor by annotation: the template's annotations are copied onto every worker pod."""
    out = []
    for key, value in sorted(_obj(meta.get("annotations")).items()):
        if not str(key).startswith(APPARMOR_ANNOTATION_PREFIX):
            continue
        if value != "runtime/default" and not str(value).startswith("localhost/"):
            out.append(
                _v(f"{where}[{key!r}]", f"({value!r}) must be {' or '.join(APPARMOR_ANNOTATION_VALUES)}.")
            )
    return out


def _env_violations(pod_spec: dict[str, Any], where: str) -> list[Violation]:
    """Variables the operator injects into every container, init containers included."""
    out = []
    for key in _CONTAINER_KEYS:
        for i, container in enumerate(pod_spec.get(key) or []):
            at = f"{where}.{key}[{i}].env"
            for item in _obj(container).get("env") or []:
                var = str(_obj(item).get("name") or "")
                if var in _RENDEZVOUS_VARS:
                    out.append(
                        (
                            at,
                            f"{at} sets {var}, which the operator sets per worker (from "
                            "spec.replicas and the worker's index); remove it.",
                        )
                    )
                elif var == env_names.ENV_LOCAL_RANK or var.startswith(env_names.ENV_TORCHRUN_PREFIX):
                    out.append(
                        (
                            at,
                            f"{at} sets {var}, a torchrun setting the operator sets (from "
                            "spec.replicas, spec.procsPerWorker and spec.rendezvous); remove it.",
                        )
                    )
    return out


def _v(field: str, rest: str) -> Violation:
    """A refusal of ``field``: its message starts with the field's path."""
    return field, f"{field} {rest}"


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is an object, else empty (the API server's own schema refuses the rest)."""
    return value if isinstance(value, dict) else {}
