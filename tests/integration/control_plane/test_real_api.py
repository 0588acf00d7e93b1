"""What only a real API server shows: the CRD's CEL rules compiled and enforced, strict field
validation, kubectl explain and the server-side printer columns, Pod Security admission, the
scheduler's verdict on GPU requests, and garbage collection. The operator runs as the chart's
ServiceAccount (cluster scope here; the namespaced scope in test_rbac_scopes.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.harness.cluster import CRD, ControlPlane
from tests.harness.operator import ChartOperator, operating
from tests.helpers import REPO, wait_until

NS = "real-api"
TJ = "/apis/etha.io/v1alpha1/namespaces/" + NS + "/trainingjobs"


@pytest.fixture(scope="module")
def op(control_plane: ControlPlane) -> Iterator[ChartOperator]:
    with operating(control_plane, NS) as operator:
        yield operator


def job(name: str, replicas: int = 2, **container: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "allreduce.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"]["replicas"] = replicas
    doc["spec"]["template"]["spec"]["containers"][0].update(container)
    return doc


def status(op: ChartOperator, name: str) -> dict[str, Any]:
    return dict(op.plane.admin.get(f"{TJ}/{name}").get("status") or {})


def wait_phase(op: ChartOperator, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    try:
        wait_until(
            lambda: status(op, name).get("phase") == phase, timeout, f"{name} to be {phase}", interval=0.2
        )
    except AssertionError as exc:
        dump = op.kubectl("get", "tj,pods,events", "-n", NS, "-o", "wide", check=False).stdout
        raise AssertionError(f"{exc}\nstatus: {status(op, name)}\n{dump}\n{op.log(60)}") from None
    return status(op, name)


def apply(op: ChartOperator, doc: dict[str, Any], *flags: str, check: bool = True) -> Any:
    return op.kubectl("apply", *flags, "-f", "-", stdin=json.dumps(doc), check=check)


def test_the_crd_is_accepted_with_every_cel_rule_compiled(op: ChartOperator) -> None:
    # The fixture created it (and helm installed the chart's copy); a server-side dry run
    # compiles every rule again and reports any that does not.
    out = op.kubectl("apply", "--dry-run=server", "-f", str(CRD), check=False)
    assert out.returncode == 0, out.stderr
    crd = op.plane.admin.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainingjobs.etha.io")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions.get("NonStructuralSchema") is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["spec"]["template"]["spec"].update(containers=[]),
            "spec.template.spec.containers must hold at least one container.",
        ),
        (
            lambda d: d["spec"]["template"].update(spec={}),
            "spec.template.spec.containers must hold at least one container.",
        ),
        (
            lambda d: d["spec"].update(activeDeadlineSeconds=0),
            "spec.activeDeadlineSeconds must be at least 1 when set.",
        ),
        (
            lambda d: d["spec"].update(replicas=0),
            "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1",
        ),
        (
            lambda d: d["spec"].update(rendezvous={"torchrunBackend": "static"}),
            'spec.rendezvous.torchrunBackend: Unsupported value: "static"',
        ),
        (
            lambda d: d["spec"].update(
                rendezvous={"backend": "etcd", "etcd": {"endpoints": ["e:2379"]}, "torchrunBackend": "etha"}
            ),
            "spec.rendezvous.torchrunBackend etha needs the job's master (spec.rendezvous.backend tcp)",
        ),
        (
            lambda d: d["metadata"].update(name="7b-train"),
            "metadata.name must be a DNS-1035 label (the job's Service takes its name)",
        ),
    ],
    ids=[
        "no-containers",
        "no-pod-spec",
        "zero-deadline",
        "zero-replicas",
        "torchrun-backend-unknown",
        "torchrun-backend-etha-without-master",
        "name-starts-with-a-digit",
    ],
)
def test_the_api_server_refuses_a_bad_job_with_the_rules_message(
    op: ChartOperator, edit: Any, message: str
) -> None:
    doc = job("refused")
    edit(doc)
    out = apply(op, doc, check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert not op.plane.admin.exists(f"{TJ}/refused")


def test_strict_field_validation_names_the_unknown_field(op: ChartOperator) -> None:
    doc = job("typo")
    doc["spec"]["replicaz"] = 3
    out = apply(op, doc, "--validate=strict", check=False)
    assert out.returncode != 0 and 'unknown field "spec.replicaz"' in out.stderr, out.stderr


def test_kubectl_explain_and_the_server_side_columns(op: ChartOperator) -> None:
    explain = op.kubectl("explain", "trainingjob.spec.replicas").stdout
    assert "Number of worker pods; the world size." in explain, explain
    apply(op, job("columns", replicas=1, command=["python", "-c", "import time; time.sleep(600)"]))
    wait_phase(op, "columns", "Running")
    header, row = op.kubectl("get", "tj", "columns", "-n", NS).stdout.splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "READY",
        "JOINED",
        "RESTARTS",
        "REASON",
        "PROGRESS",
        "ETA",
        "AGE",
    ], header
    assert row.split()[:2] == ["columns", "Running"] and row.split()[2] == "1/1", row
    op.kubectl("delete", "tj", "columns", "-n", NS, "--wait=false")


def test_integer_quantities_as_users_write_them_reach_the_pods_and_the_job_succeeds(
    op: ChartOperator,
) -> None:
    resources = {"limits": {"nvidia.com/gpu": 1, "cpu": 1, "memory": "1Gi"}, "requests": {"cpu": 1}}
    apply(op, job("gpu-ints", resources=resources))
    done = wait_phase(op, "gpu-ints", "Succeeded")
    assert done["workers"]["succeeded"] == 2, done
    assert "will try again" not in op.log(), op.log()

    # What a person reads in `kubectl describe tj`: every decision, in order.
    def described() -> str:
        return str(op.kubectl("describe", "tj", "gpu-ints", "-n", NS).stdout)

    wait_until(lambda: "All 2 workers succeeded." in described(), 30, "the Succeeded event")
    text = described().split("Events:", 1)[1]
    for needle in (
        "Created Service gpu-ints.",
        "Created Pod gpu-ints-master-0.",
        "Created Pod gpu-ints-worker-0-1.",
    ):
        assert needle in text, text
    assert "RendezvousComplete" in text and "All 2 ranks joined the rendezvous of attempt 0" in text, text
    # (Their order within one second is the event list's, not the operator's: kubectl sorts by
    # timestamp, to the second.)


def test_a_job_asking_for_more_gpus_than_any_node_has_stays_pending_with_the_schedulers_reason(
    op: ChartOperator,
) -> None:
    apply(op, job("too-big", resources={"limits": {"nvidia.com/gpu": 8}}))

    def reason() -> dict[str, Any] | None:
        conds = status(op, "too-big").get("conditions") or []
        return next((c for c in conds if c["type"] == "PodsScheduled" and c["status"] == "False"), None)

    wait_until(lambda: reason() is not None, 60, "the scheduler's reason on the job", interval=0.2)
    cond = reason()
    assert cond is not None and cond["reason"] == "Unschedulable", cond
    assert "Insufficient nvidia.com/gpu" in cond["message"] and cond["message"].startswith(
        "Pod too-big-worker-0-"
    ), cond
    assert status(op, "too-big")["phase"] == "Pending"
    describe = op.kubectl("describe", "tj", "too-big", "-n", NS).stdout
    assert "Unschedulable" in describe and "Insufficient nvidia.com/gpu" in describe, describe
    op.kubectl("delete", "tj", "too-big", "-n", NS, "--wait=false")


def test_a_template_pod_security_forbids_fails_the_job_before_any_pod(op: ChartOperator) -> None:
    # An unsafe sysctl: the namespace's restricted Pod Security admission would refuse the pod;
    # the operator's own checker (the whole baseline + restricted list) refuses the template
    # first, naming the field, and makes no pod at all.
    doc = job("psa", replicas=1)
    doc["spec"]["template"]["spec"]["securityContext"] = {
        "sysctls": [{"name": "kernel.msgmax", "value": "65536"}]
    }
    apply(op, doc)
    failed = wait_phase(op, "psa", "Failed")
    cond = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "InvalidSpec", cond
    assert cond["message"].startswith(
        "spec.template.spec.securityContext.sysctls[0].name ('kernel.msgmax') must be one of the safe sysctls"
    ), cond
    pods = op.plane.admin.get(f"/api/v1/namespaces/{NS}/pods", labelSelector="etha.io/job-name=psa")["items"]
    assert pods == [], pods


def test_deleting_a_job_garbage_collects_its_children(op: ChartOperator) -> None:
    apply(op, job("collected", replicas=2, command=["python", "-c", "import time; time.sleep(600)"]))
    wait_phase(op, "collected", "Running")
    admin = op.plane.admin
    selector = "etha.io/job-name=collected"
    assert len(admin.get(f"/api/v1/namespaces/{NS}/pods", labelSelector=selector)["items"]) == 3
    op.kubectl("delete", "tj", "collected", "-n", NS, "--timeout=60s")
    wait_until(
        lambda: not admin.get(f"/api/v1/namespaces/{NS}/pods", labelSelector=selector)["items"]
        and not admin.exists(f"/api/v1/namespaces/{NS}/services/collected"),
        90, "the garbage collector to delete the job's pods and Service", interval=0.3,
    )  # fmt: skip


def test_status_writes_survive_other_writers_of_the_same_job(op: ChartOperator) -> None:
    # Another client edits the job (labels and status alike) while the operator writes its
    # status: the operator's merge patches carry no resourceVersion, so they never conflict (409)
    # and the job still ends with the operator's own account of it.
    apply(op, job("contended", replicas=2))
    path = f"{TJ}/contended"
    for i in range(30):
        op.plane.admin.merge_patch(path, {"metadata": {"labels": {"touched": str(i)}}})
        op.plane.admin.request(
            "PATCH",
            f"{path}/status",
            {"status": {"note": f"other writer {i}"}},
            content_type="application/merge-patch+json",
        )
    done = wait_phase(op, "contended", "Succeeded")
    assert done["workers"]["succeeded"] == 2 and done["note"] == "other writer 29", done
    assert "409" not in op.log() and "Conflict" not in op.log(), op.log()


#: Each rank writes a key of its own to the job's etcd keys, through the injected environment.
WRITES_A_KEY = (
    "from etha.kvstore import from_env\n"
    "store = from_env()\n"
    "store.set(f'note/{store.rank}', 'written')\n"
    "store.close()\n"
)


def test_deleting_an_etcd_job_deletes_its_keys_and_no_one_elses(op: ChartOperator) -> None:
    """backend etcd: no rank's close() deletes keys; the operator deletes the job's (each
    attempt's namespace) once the TrainingJob is deleted, and leaves another job's."""
    from etha.kvstore.etcd import EtcdStore
    from tests.etcd_server import EtcdServer

    etcd = EtcdServer()
    try:
        doc = job("etcd-keys", command=["python", "-c", WRITES_A_KEY])
        doc["spec"]["rendezvous"] = {"backend": "etcd", "etcd": {"endpoints": [etcd.endpoint]}}
        apply(op, doc)
        wait_phase(op, "etcd-keys", "Succeeded")
        uid = op.plane.admin.get(f"{TJ}/etcd-keys")["metadata"]["uid"]
        mine = EtcdStore([etcd.endpoint], namespace=f"{NS}.etcd-keys.{uid}.0", timeout=5)
        other = EtcdStore([etcd.endpoint], namespace=f"{NS}.etcd-keys.another-uid.0", timeout=5)
        try:
            assert mine.get("note/0") == b"written" and mine.get("note/1") == b"written"
            other.set("note/0", "another job's")
            op.kubectl("delete", "tj", "etcd-keys", "-n", NS, "--wait=false")
            wait_until(lambda: mine.get("note/0") is None, 30, "the job's etcd keys deleted")
            assert mine.get("note/1") is None
            assert other.get("note/0") == b"another job's"
            # 2 notes, 2 joins; said once the last attempt's keys are gone (a moment after).
            wait_until(lambda: "its 4 etcd keys with it" in op.log(), 10, "the operator's word on it")
        finally:
            mine.close()
            other.close()
    finally:
        etcd.stop()
