"""The Pod Security Standards, baseline and restricted, one row per control of the standard's own
list (https://kubernetes.io/docs/concepts/security/pod-security-standards/): what a worker
template may not ask for (the refusal names the field and what is allowed), and what it may."""

from __future__ import annotations

import re
from typing import Any

import pytest

from etha.job.builders import build_worker_pod
from etha.job.security import restricted_violations
from etha.job.spec import InvalidSpec, parse
from tests.factories import make_trainingjob

C0 = ("spec", "containers", 0)
SC0 = (*C0, "securityContext")
POD_SC = ("spec", "securityContext")
APPARMOR = "container.apparmor.security.beta.kubernetes.io/trainer"
INIT = {"name": "prep", "image": "example/prep:1"}


def with_set(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A TrainingJob whose template has ``value`` at ``path`` (objects made on the way)."""
    job = make_trainingjob()
    node: Any = job["spec"]["template"]
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value
    return job


# (path in the template, value, the refused field, the message's tail: the allowed values)
FORBIDDEN = [
    # baseline: HostProcess
    (
        (*POD_SC, "windowsOptions"),
        {"hostProcess": True},
        "spec.template.spec.securityContext.windowsOptions.hostProcess",
        "must be false or unset",
    ),
    (
        (*SC0, "windowsOptions"),
        {"hostProcess": True},
        "spec.template.spec.containers[0].securityContext.windowsOptions.hostProcess",
        "must be false or unset",
    ),
    # baseline: host namespaces
    (("spec", "hostNetwork"), True, "spec.template.spec.hostNetwork", r"\(True\) must be false"),
    (("spec", "hostPID"), True, "spec.template.spec.hostPID", r"\(True\) must be false"),
    (("spec", "hostIPC"), True, "spec.template.spec.hostIPC", r"\(True\) must be false"),
    # baseline: privileged containers
    (
        (*SC0, "privileged"),
        True,
        "spec.template.spec.containers[0].securityContext.privileged",
        r"\(True\) must be false",
    ),
    # baseline + restricted: capabilities
    (
        (*SC0, "capabilities"),
        {"add": ["SYS_ADMIN"]},
        "spec.template.spec.containers[0].securityContext.capabilities.add",
        r"may only hold NET_BIND_SERVICE, not \['SYS_ADMIN'\]",
    ),
    (
        (*SC0, "capabilities"),
        {"drop": ["NET_RAW"]},
        "spec.template.spec.containers[0].securityContext.capabilities.drop",
        "must include ALL",
    ),
    # baseline: hostPath volumes (restricted: only the listed volume types)
    (
        ("spec", "volumes"),
        [{"name": "h", "hostPath": {"path": "/"}}],
        "spec.template.spec.volumes[0]",
        "uses hostPath; allowed: configMap, csi, ",
    ),
    (
        ("spec", "volumes"),
        [{"name": "n", "nfs": {"server": "x"}}],
        "spec.template.spec.volumes[0]",
        "uses nfs",
    ),
    # baseline: host ports
    (
        (*C0, "ports"),
        [{"containerPort": 80, "hostPort": 80}],
        "spec.template.spec.containers[0].ports[0].hostPort",
        r"\(80\) must be unset or 0",
    ),
    # baseline: AppArmor (the field, on the pod and on a container, and the annotation)
    (
        (*POD_SC, "appArmorProfile"),
        {"type": "Unconfined"},
        "spec.template.spec.securityContext.appArmorProfile.type",
        r"\('Unconfined'\) must be RuntimeDefault or Localhost",
    ),
    (
        (*SC0, "appArmorProfile"),
        {"type": "Unconfined"},
        "spec.template.spec.containers[0].securityContext.appArmorProfile.type",
        r"\('Unconfined'\) must be RuntimeDefault or Localhost",
    ),
    (
        ("metadata", "annotations"),
        {APPARMOR: "unconfined"},
        f"spec.template.metadata.annotations['{APPARMOR}']",
        r"\('unconfined'\) must be runtime/default or localhost/<profile>",
    ),
    # baseline: SELinux
    (
        (*SC0, "seLinuxOptions"),
        {"type": "spc_t"},
        "spec.template.spec.containers[0].securityContext.seLinuxOptions.type",
        r"\('spc_t'\) must be unset or one of container_t, container_init_t, container_kvm_t, "
        "container_engine_t",
    ),
    (
        (*POD_SC, "seLinuxOptions"),
        {"user": "system_u"},
        "spec.template.spec.securityContext.seLinuxOptions.user",
        r"\('system_u'\) must be unset",
    ),
    (
        (*SC0, "seLinuxOptions"),
        {"role": "sysadm_r"},
        "spec.template.spec.containers[0].securityContext.seLinuxOptions.role",
        r"\('sysadm_r'\) must be unset",
    ),
    # baseline: /proc mount type
    (
        (*SC0, "procMount"),
        "Unmasked",
        "spec.template.spec.containers[0].securityContext.procMount",
        r"\('Unmasked'\) must be Default or unset",
    ),
    # baseline + restricted: seccomp
    (
        (*POD_SC, "seccompProfile"),
        {"type": "Unconfined"},
        "spec.template.spec.securityContext.seccompProfile.type",
        r"\('Unconfined'\) must be RuntimeDefault or Localhost",
    ),
    (
        (*SC0, "seccompProfile"),
        {"type": "Unconfined"},
        "spec.template.spec.containers[0].securityContext.seccompProfile.type",
        r"\('Unconfined'\) must be RuntimeDefault or Localhost",
    ),
    # baseline: sysctls
    (
        (*POD_SC, "sysctls"),
        [{"name": "kernel.msgmax", "value": "1"}],
        "spec.template.spec.securityContext.sysctls[0].name",
        r"\('kernel.msgmax'\) must be one of the safe sysctls: kernel.shm_rmid_forced, ",
    ),
    # restricted: privilege escalation
    (
        (*SC0, "allowPrivilegeEscalation"),
        True,
        "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
        r"\(True\) must be false",
    ),
    # restricted: running as non-root, non-root user
    (
        (*POD_SC, "runAsNonRoot"),
        False,
        "spec.template.spec.securityContext.runAsNonRoot",
        "must be true",
    ),
    (
        (*SC0, "runAsNonRoot"),
        False,
        "spec.template.spec.containers[0].securityContext.runAsNonRoot",
        "must be true",
    ),
    ((*POD_SC, "runAsUser"), 0, "spec.template.spec.securityContext.runAsUser", r"must not be 0 \(root\)"),
    ((*SC0, "runAsUser"), 0, "spec.template.spec.containers[0].securityContext.runAsUser", "must not be 0"),
    # init containers are containers too, and get the injected variables too
    (
        ("spec", "initContainers"),
        [{**INIT, "securityContext": {"privileged": True}}],
        "spec.template.spec.initContainers[0].securityContext.privileged",
        r"\(True\) must be false",
    ),
    (
        ("spec", "initContainers"),
        [{**INIT, "env": [{"name": "RANK", "value": "0"}]}],
        "spec.template.spec.initContainers[0].env",
        "sets RANK, which the operator sets per worker",
    ),
    (
        ("spec", "initContainers"),
        [{**INIT, "env": [{"name": "PET_NNODES", "value": "3"}]}],
        "spec.template.spec.initContainers[0].env",
        "sets PET_NNODES, a torchrun setting the operator sets",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "tail"), FORBIDDEN, ids=[f"{row[2]}={row[1]!r}" for row in FORBIDDEN]
)
def test_the_standard_forbids(path: tuple[Any, ...], value: Any, field: str, tail: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(field) + " " + tail) as caught:
        parse(with_set(path, value))
    assert caught.value.field == field


ALLOWED = [
    ((*SC0, "seLinuxOptions"), {"type": "container_t", "level": "s0:c1,c2"}),
    ((*SC0, "seLinuxOptions"), {"type": "container_engine_t"}),
    ((*POD_SC, "appArmorProfile"), {"type": "RuntimeDefault"}),
    ((*SC0, "appArmorProfile"), {"type": "Localhost", "localhostProfile": "k8s-trainer"}),
    (("metadata", "annotations"), {APPARMOR: "runtime/default", "team": "vision"}),
    (("metadata", "annotations"), {APPARMOR: "localhost/k8s-trainer"}),
    ((*SC0, "procMount"), "Default"),
    ((*POD_SC, "sysctls"), [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"}]),
    ((*POD_SC, "seccompProfile"), {"type": "Localhost", "localhostProfile": "p.json"}),
    ((*SC0, "capabilities"), {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}),
    ((*C0, "ports"), [{"containerPort": 80, "hostPort": 0}]),
    ((*POD_SC, "runAsUser"), 1000),
    (("spec", "volumes"), [{"name": "d", "emptyDir": {}}, {"name": "c", "csi": {"driver": "x"}}]),
    (("spec", "initContainers"), [INIT]),
]


@pytest.mark.parametrize(("path", "value"), ALLOWED, ids=[f"{row[0][-1]}={row[1]!r}" for row in ALLOWED])
def test_the_standard_allows(path: tuple[Any, ...], value: Any) -> None:
    pod = build_worker_pod(parse(with_set(path, value)), 0, 0)
    assert restricted_violations(pod["spec"]) == []


@pytest.mark.parametrize(
    ("template_sets", "expected"),
    [(None, False), (True, True), (False, False)],
    ids=["unset-means-no-token", "the-template-asks-for-it", "the-template-says-no"],
)
def test_worker_pods_get_no_api_token_unless_the_template_asks(
    template_sets: bool | None, expected: bool
) -> None:
    job = make_trainingjob()
    if template_sets is not None:
        job["spec"]["template"]["spec"]["automountServiceAccountToken"] = template_sets
    pod = build_worker_pod(parse(job), 0, 1)
    assert pod["spec"]["automountServiceAccountToken"] is expected


@pytest.mark.parametrize(
    ("key", "account", "allowed", "refused"),
    [
        ("serviceAccountName", "trainer", (), False),
        ("serviceAccountName", "trainer", ("trainer", "reader"), False),
        ("serviceAccountName", "admin", ("trainer", "reader"), True),
        ("serviceAccount", "admin", ("trainer",), True),
        (None, None, ("trainer",), False),
    ],
    ids=["empty-list-allows-any", "listed", "not-listed", "deprecated-field-too", "none-named"],
)
def test_service_accounts_allowlist(
    key: str | None, account: str | None, allowed: tuple[str, ...], refused: bool
) -> None:
    job = make_trainingjob()
    if key is not None:
        job["spec"]["template"]["spec"][key] = account
    if not refused:
        parse(job, service_accounts=allowed)
        return
    field = f"spec.template.spec.{key}"
    message = rf"{re.escape(field)} \('admin'\) is not one the operator allows; allowed: {', '.join(sorted(allowed))}"
    with pytest.raises(InvalidSpec, match=message) as caught:
        parse(job, service_accounts=allowed)
    assert caught.value.field == field


def test_without_pod_security_a_started_job_parses() -> None:
    """The operator leaves the checks out for a job that passed them when it started."""
    job = with_set((*SC0, "seLinuxOptions"), {"type": "spc_t"})
    with pytest.raises(InvalidSpec, match=r"seLinuxOptions\.type"):
        parse(job)
    assert parse(job, pod_security=False).replicas == 2
