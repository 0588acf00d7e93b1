"""Every read of one look at a TrainingJob, in one place: the job's spec, the children kopf's
indexes hold (and those just made or deleted whose events are still on the way), the master's
status document while ranks join, the gang's PodGroup and the scheduler's words while pods wait,
the job's Kueue Workload (from its index) and, only when the decision will need them, the
ResourceFlavors its admission names and the priority a new Workload takes, and what the last
look's writes met (an object in the way, a child the API server rejected). It
returns the frozen value :func:`etha.operator.reconcile.reconcile` decides from, and changes
nothing in the cluster.

kopf waits until every index holds its initial listing before it calls any other handler, so an
operator restarted at any point observes a complete cache. What the cache cannot know yet (pods
created or deleted a moment ago) the job's worker remembers for a short while, as
controller-runtime's "expectations" do.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from etha.job import constants as c
from etha.job import kueue
from etha.job.kueue import Priority
from etha.job.names import master_name, network_policy_name, service_name, status_attempt, worker_name
from etha.job.scheduling import KUEUE_WORKLOAD, LABEL_KUEUE_PRIORITY_CLASS, group_name
from etha.job.security import check_pod_security
from etha.job.spec import InvalidSpec, JobSpec, parse
from etha.master.progress import parse_document
from etha.master.status import BadStatus, MasterStatus
from etha.operator.config import OperatorConfig
from etha.operator.jobs import Body, Children, JobWorker, controller_uid, slim
from etha.operator.k8s import Api
from etha.operator.progress_pace import ProgressPacer
from etha.operator.reconcile import KOPF_FINALIZER, Deleting, Observed, Refused
from etha.operator.reconcile.joins import needs_master_status
from etha.operator.reconcile.model import pins
from etha.operator.reconcile.placement import how_telling, unschedulable
from etha.operator.reconcile.queued import pods_needed

#: Seconds the operator waits for a master's status document before giving up for this round.
READ_TIMEOUT = 2.0
#: Pods of a running attempt confirmed by name at most in one look (see Observer.unlabelled).
CONFIRM_MISSING = 16
#: Consecutive failed reads of a master's status document before the job's status says so.
READ_FAILURES_SHOWN = 3
#: What a status document may take besides its ranks and addresses, and per worker (see
#: :func:`status_size_limit`).
STATUS_BASE_BYTES = 16 * 1024
STATUS_BYTES_PER_REPLICA = 64


def passed_at_start(job: JobSpec, status: Mapping[str, Any]) -> bool:
    """Whether the job started with the template it has now (``status.attemptSpec`` pinned it;
    without a pin, from an older operator: its phase is Running or Restarting). Such a job passed
    the Pod Security check of the operator that started it: a stricter one (an upgrade, a new
    ServiceAccount allowlist) must not fail it, nor its restarts. A resumed job (no pin) or a
    changed template is checked again."""
    pinned = (status.get("attemptSpec") or {}).get("hashes") or {}
    if pinned.get("template") is not None:
        return bool(pinned["template"] == pins(job)["hashes"]["template"])
    return status.get("phase") in (c.PHASE_RUNNING, c.PHASE_RESTARTING)


def _empty() -> Children:
    return dict[str, list[Body]]()


@dataclasses.dataclass
class Cache:
    """kopf's indexes of the job's children, by the job's uid (live views the handlers attach)."""

    pods: Children = dataclasses.field(default_factory=_empty)
    services: Children = dataclasses.field(default_factory=_empty)
    policies: Children = dataclasses.field(default_factory=_empty)
    workloads: Children = dataclasses.field(default_factory=_empty)

    @staticmethod
    def children(index: Children, uid: str) -> list[Body]:
        return list(index[uid]) if uid in index else []


class Observer:
    """Makes one look's observed value for a job's worker (see the module docstring)."""

    def __init__(self, config: OperatorConfig, api: Api, cache: Cache) -> None:
        self.config = config
        self.api = api
        self.cache = cache
        self.pacer = ProgressPacer()

    def parse(self, body: Body) -> JobSpec:
        """The job's spec with the operator's defaults (the same for every look and for the
        clean-up after it is deleted); raises InvalidSpec. The Pod Security check runs unless
        the job's pods were made from this very template (:func:`passed_at_start`)."""
        cfg = self.config
        job = parse(
            body,
            default_image=cfg.runtime_image,
            default_etcd_endpoints=cfg.default_etcd_endpoints,
            default_gang=cfg.default_gang,
            default_scheduler=cfg.scheduler_name,
            gang_schedulers=cfg.gang_schedulers,
            pod_security=False,
            kueue_mode=cfg.kueue_mode,
        )
        if not passed_at_start(job, body.get("status") or {}):
            check_pod_security(job.template, cfg.service_accounts)
        if cfg.etcd_credentials is None or job.etcd_endpoints is None:
            return job
        return dataclasses.replace(job, etcd_credentials=cfg.etcd_credentials)

    async def look(self, worker: JobWorker) -> Observed | Refused | Deleting:
        body = worker.body
        meta = body["metadata"]
        finalizer = KOPF_FINALIZER in (meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            return Deleting(finalizer=finalizer)
        status = dict(body.get("status") or {})
        now = datetime.datetime.now(datetime.UTC)
        try:
            job = self.parse(body)
        except InvalidSpec as exc:
            return Refused(status, str(exc), now, finalizer=finalizer, workload=self.own_workload(worker))
        if worker.rejected is not None:
            if status.get("phase") != c.PHASE_FAILED:
                wl = self.own_workload(worker)
                made = {p["metadata"]["name"] for p in self.pods_of(worker)} | set(worker.expected)
                message, reason = worker.rejected
                return Refused(status, message, now, reason, sorted(made), finalizer, wl)
            worker.rejected = None
        pods = self.pods_of(worker)
        unlabelled = await self.unlabelled(worker, job, status, pods)
        pods = [*pods, *unlabelled]
        observed = Observed(
            job=job,
            status=status,
            pods=pods,
            service=self.owns(worker, self.cache.services, service_name(job.name)),
            now=now,
            network_policy=(
                self.owns(worker, self.cache.policies, network_policy_name(job.name))
                if self.config.network_policy
                else None
            ),
            operator_peer=self.config.operator_peer(),
            scrapers=self.config.status_scrapers,
            spec_hashes=self.spec_hashes(worker, job),
            terminating=[
                p
                for p in Cache.children(self.cache.pods, worker.uid)
                if p["metadata"].get("deletionTimestamp")
            ],
            master_status=await self.master_status(worker, job, status, pods),
            conflict=worker.conflict,
            retry_in=self.config.backoff(worker.conflicts) if worker.conflict is not None else None,
            settle_in=settle_in(worker),
            master_poll=(self.config.master_poll_interval, self.config.master_poll_interval_max),
            finalizer=finalizer,
            unlabelled=tuple(p["metadata"]["name"] for p in unlabelled),
        )
        if job.restart_strategy == c.RESTART_IN_PLACE and job.in_place_blocker() is None:
            observed = dataclasses.replace(observed, **self.in_place(worker, job, status, pods))
        if self.config.kueue_mode == KUEUE_WORKLOAD:  # (no request for a job without the queue label)
            observed = dataclasses.replace(observed, **await self.kueue(worker, job, status, pods))
        observed = await self.with_progress(worker, observed)  # training progress (docs/progress.md)
        stuck = unschedulable(pods) if job.scheduling.kind is not None else None
        if stuck is not None:  # a gang waits: its PodGroup's phase, and why, if no pod says now
            told = await self.scheduler_said(job, pods) if how_telling(stuck[1]) < 2 else []
            observed = dataclasses.replace(
                observed, pod_group=await self.pod_group_phase(job, status), scheduler_said=told
            )
        return observed

    async def unlabelled(
        self, worker: JobWorker, job: JobSpec, status: dict[str, Any], pods: list[Body]
    ) -> list[Body]:
        """Pods of the running attempt missing from the index that still exist and are the job's
        (someone removed their job label, so the label-filtered watch dropped them): a GET by name
        and owner before a pod counts as gone. At most :data:`CONFIRM_MISSING` a look: more
        missing at once is a lost node or a deletion, not labels edited one by one."""
        if status.get("phase") != c.PHASE_RUNNING:
            return []
        attempt = status_attempt(status.get("attempt"), job.max_restarts)
        names = [worker_name(job.name, attempt, r) for r in range(job.replicas)]
        if job.etcd_endpoints is None:
            names.append(master_name(job.name, attempt))
        seen = {p["metadata"]["name"] for p in pods} | set(worker.deleting)
        missing = [n for n in names if n not in seen]
        if not missing or len(missing) > CONFIRM_MISSING:
            return []
        found = []
        for name in missing:
            pod = await self.api.get("Pod", job.namespace, name)
            if (
                pod is not None
                and controller_uid(pod) == job.uid
                and not pod["metadata"].get("deletionTimestamp")
            ):
                found.append(slim(pod))
        return found

    # --- the cache -----------------------------------------------------------------------------

    def pods_of(self, worker: JobWorker) -> list[Body]:
        """The job's own pods as the operator knows them: the index, less those being deleted,
        plus those it created whose events have not arrived."""
        now = time.monotonic()
        cached = {p["metadata"]["name"]: p for p in Cache.children(self.cache.pods, worker.uid)}
        for name, expiry in list(worker.deleting.items()):
            if name not in cached or expiry < now or cached[name]["metadata"].get("deletionTimestamp"):
                del worker.deleting[name]
        out = [
            p
            for name, p in cached.items()
            if not p["metadata"].get("deletionTimestamp") and name not in worker.deleting
        ]
        for name, (expiry, manifest) in list(worker.expected.items()):
            if name in cached or expiry < now:
                del worker.expected[name]
            elif manifest["kind"] == "Pod":
                out.append(manifest)  # no status yet: Pending
        return out

    def owns(self, worker: JobWorker, index: Children, name: str) -> bool:
        """The job owns a live child of this name (or has just created it)."""
        if name in worker.expected:
            return True
        return any(
            x["metadata"]["name"] == name and not x["metadata"].get("deletionTimestamp")
            for x in Cache.children(index, worker.uid)
        )

    def spec_hashes(self, worker: JobWorker, job: JobSpec) -> dict[str, str | None]:
        """The spec-hash annotation of the job's Service and NetworkPolicy that exist, by name
        (what was just created or patched first: the watch may not have shown it yet)."""
        out: dict[str, str | None] = {}
        kept = [(self.cache.services, service_name(job.name))]
        if self.config.network_policy:
            kept.append((self.cache.policies, network_policy_name(job.name)))
        for index, name in kept:
            child = worker.expected[name][1] if name in worker.expected else None
            child = child or next(
                (
                    x
                    for x in Cache.children(index, worker.uid)
                    if x["metadata"]["name"] == name and not x["metadata"].get("deletionTimestamp")
                ),
                None,
            )
            if child is not None:
                out[name] = (child["metadata"].get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH)
        return out

    # --- Kueue ---------------------------------------------------------------------------------

    def workloads_of(self, worker: JobWorker) -> list[Body]:
        """The Workloads the job owns, freshest first by name: the index's, or what the operator
        wrote a moment ago if the index has not caught up (an expectation kept until it has)."""
        found = {w["metadata"]["name"]: w for w in Cache.children(self.cache.workloads, worker.uid)}
        for name, (expiry, manifest) in list(worker.expected.items()):
            if manifest.get("kind") != kueue.KIND:
                continue
            held = found.get(name)
            if expiry < time.monotonic() or (held is not None and newer(held, manifest)):
                del worker.expected[name]
            else:
                found[name] = manifest
        return list(found.values())

    def own_workload(self, worker: JobWorker) -> Body | None:
        """The job's Workload under its own name, if it has one (the uid and name of the job)."""
        name = kueue.workload_name(worker.name, worker.uid)
        return next((w for w in self.workloads_of(worker) if w["metadata"]["name"] == name), None)

    async def kueue(
        self, worker: JobWorker, job: JobSpec, status: dict[str, Any], pods: list[Body]
    ) -> dict[str, Any]:
        """The Observed fields of Kueue (see there): from the index, and requests only for a job
        with the queue label, when the decision needs them (a Workload to make; pods to make
        where the admission says)."""
        name = kueue.workload_name(job.name, job.uid)
        managed = job.scheduling.kueue_workload
        owned = self.workloads_of(worker)
        strays = [
            (str(w["metadata"]["name"]), str(w["metadata"].get("uid")))
            for w in owned
            if (w["metadata"]["name"] != name or not managed) and not w["metadata"].get("deletionTimestamp")
        ]
        mine = next((w for w in owned if w["metadata"]["name"] == name), None) if managed else None
        out: dict[str, Any] = {"workload": mine, "stray_workloads": strays}
        if not managed or status.get("phase") in c.FINISHED_PHASES:
            return out
        if mine is None:
            out["priority"] = await self.priority(job)
        elif kueue.admitted(mine) and pods_needed(job, status, pods):
            out["flavors"] = {f: await self.flavor(f) for f in kueue.flavors_of(mine)}
        return out

    async def flavor(self, name: str) -> dict[str, Any] | None:
        """A ResourceFlavor's spec (its nodeLabels, tolerations), or None if it does not exist."""
        found = await self.api.get_cluster("ResourceFlavor", name)
        return dict(found.get("spec") or {}) if found is not None else None

    async def priority(self, job: JobSpec) -> Priority | str:
        """The priority a new Workload of the job takes (Kueue's ExtractPriority): its
        WorkloadPriorityClass, else its pods' PriorityClass, else the cluster's default one;
        a string when the class it names does not exist."""
        source = kueue.priority_source(job)
        if source is None:
            defaults = [p for p in await self.api.list_cluster("PriorityClass") if p.get("globalDefault")]
            if not defaults:
                return Priority()
            best = min(defaults, key=lambda p: int(p.get("value") or 0))
            ref = {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": best["metadata"]["name"]}
            return Priority(int(best.get("value") or 0), ref)
        kind, name = source
        found = await self.api.get_cluster(kind, name)
        if found is None:
            field = (
                f"metadata.labels[{LABEL_KUEUE_PRIORITY_CLASS}]"
                if kind == "WorkloadPriorityClass"
                else "spec.scheduling.priorityClassName"
                if job.scheduling.priority_class
                else "spec.template.spec.priorityClassName"
            )
            return (
                f"{field} ({name!r}) names no {kind}: Kueue orders and preempts Workloads by it; "
                f"create the {kind} or name an existing one."
            )
        group = "kueue.x-k8s.io" if kind == "WorkloadPriorityClass" else "scheduling.k8s.io"
        return Priority(int(found.get("value") or 0), {"group": group, "kind": kind, "name": name})

    # --- the master, the scheduler -------------------------------------------------------------

    def in_place(
        self, worker: JobWorker, job: JobSpec, status: dict[str, Any], pods: list[Body]
    ) -> dict[str, Any]:
        """The current attempt's master token (read back from its pod; for a master still to
        create, made once per attempt) and the last answer of its GET /v1/events."""
        attempt = status_attempt(status.get("attempt"), job.max_restarts)
        name = master_name(job.name, attempt)
        master = next((p for p in pods if p["metadata"]["name"] == name), None)
        token = master_token(master) if master is not None else None
        if master is None:
            token = worker.tokens.get(attempt)
            if token is None:
                worker.tokens = {attempt: secrets.token_hex(16)}  # (an earlier attempt's is no use)
                token = worker.tokens[attempt]
        events = None
        if (
            master is not None
            and worker.events is not None
            and worker.events[0] == master["metadata"].get("uid")
        ):
            events = worker.events[1]
        return {"token": token, "events": events}

    async def master_status(
        self, worker: JobWorker, job: JobSpec, status: dict[str, Any], pods: list[Body]
    ) -> MasterStatus | str | None:
        """The master's status document while its ranks join (None when not asked). One failed
        read (a busy master, a slow node) is not news: a failure counts once reads keep failing,
        so the status does not flap between two messages meanwhile."""
        name = master_name(job.name, status_attempt(status.get("attempt"), job.max_restarts))
        master = next((p for p in pods if p["metadata"]["name"] == name), None)
        if not needs_master_status(job, status, master):
            return None
        assert master is not None
        url = self.config.status_url(master)
        if not url:
            return None
        report = await read_master_status(url, status_size_limit(job.replicas))
        worker.read_failures = worker.read_failures + 1 if isinstance(report, str) else 0
        if isinstance(report, str) and worker.read_failures < READ_FAILURES_SHOWN:
            return None
        return report

    async def with_progress(self, worker: JobWorker, observed: Observed) -> Observed:
        """``observed`` with the master's training progress, when the pacing says to read it
        (a running job with a master; :mod:`etha.operator.progress_pace`)."""
        job, status = observed.job, observed.status
        if job.etcd_endpoints is not None or status.get("phase") != c.PHASE_RUNNING or job.suspend:
            self.pacer.forget(worker.uid)
            return observed
        now = time.monotonic()
        if not self.pacer.read_due(worker.uid, now):
            return dataclasses.replace(observed, progress_poll=self.pacer.next_read_in(worker.uid, now))
        name = master_name(job.name, status_attempt(status.get("attempt"), job.max_restarts))
        master = next((p for p in observed.pods if p["metadata"]["name"] == name), None)
        url = self.config.status_url(master) if master is not None else None
        progress = None
        if url:
            answer = await read_master_json(url, status_size_limit(job.replicas))
            doc = answer.get("document") if isinstance(answer, dict) else None
            try:
                progress = parse_document(doc.get("progress")) if isinstance(doc, dict) else None
            except ValueError:
                progress = None  # a master image that says nonsense shows no progress
        self.pacer.read_done(worker.uid, now, progress is not None)
        return dataclasses.replace(
            observed,
            progress=progress,
            progress_due=progress is not None and self.pacer.write_due(worker.uid, now),
            progress_poll=self.pacer.next_read_in(worker.uid, now),
        )

    async def pod_group_phase(self, job: JobSpec, status: dict[str, Any]) -> str:
        """The attempt's PodGroup and its phase, for the message of a job whose pods wait."""
        kind = job.scheduling.kind
        assert kind is not None
        name = group_name(job.name, status_attempt(status.get("attempt"), job.max_restarts))
        group = await self.api.get("PodGroup", job.namespace, name, kind.api_version)
        if group is None:
            return f"PodGroup {name} does not exist"
        phase = (group.get("status") or {}).get("phase")
        return f"PodGroup {name} is {phase}" if phase else f"PodGroup {name} has no phase yet"

    async def scheduler_said(self, job: JobSpec, pods: list[Body]) -> list[tuple[str, str]]:
        """What the scheduler's FailedScheduling events said of these pods, the newest first:
        a gang's member that named what the nodes lack was rejected with the rest a moment
        later, and its own condition no longer says it."""
        names = {p["metadata"]["name"] for p in pods}
        said = [
            (
                str(e.get("lastTimestamp") or e.get("eventTime") or ""),
                e["involvedObject"]["name"],
                str(e.get("message")),
            )
            for e in await self.api.scheduling_failures(job.namespace)
            if (e.get("involvedObject") or {}).get("name") in names
        ]
        return [(name, message) for _, name, message in sorted(said, reverse=True)]


def newer(a: Body, b: Body) -> bool:
    """``a`` is at least as recent as ``b`` (their resourceVersions; unknown: not newer)."""
    old, new = (str((x.get("metadata") or {}).get("resourceVersion") or "") for x in (b, a))
    return old.isdigit() and new.isdigit() and int(new) >= int(old)


def master_token(master: Body) -> str | None:
    """The ETHA_MASTER_TOKEN a master pod was made with (kept in the cache, :func:`slim`)."""
    for container in (master.get("spec") or {}).get("containers") or []:
        for item in container.get("env") or []:
            if item.get("name") == c.ENV_MASTER_TOKEN and item.get("value"):
                return str(item["value"])
    return None


def settle_in(worker: JobWorker) -> float | None:
    """Seconds until the first expectation of ``worker`` expires (the watch never confirmed it)."""
    if not worker.expected and not worker.deleting:
        return None
    soonest = min([e for e, _ in worker.expected.values()] + list(worker.deleting.values()))
    return max(0.0, soonest - time.monotonic()) + 0.1


def status_size_limit(replicas: int) -> int:
    """The most bytes a master's status document may take for a job of ``replicas`` workers: a
    few KiB of fields, and a rank and an address per worker (a master that answers more is not
    read further: the operator's memory stays bounded whatever a job's image serves)."""
    return STATUS_BASE_BYTES + STATUS_BYTES_PER_REPLICA * max(1, replicas)


async def read_master_status(url: str, limit: int = STATUS_BASE_BYTES) -> MasterStatus | str:
    """The master's status document, or why it could not be read (a one-line reason). At most
    ``limit`` bytes are read, never decompressed (the master's image is the job author's)."""
    doc = await read_master_json(url, limit)
    if isinstance(doc, str):
        return doc
    try:
        return MasterStatus.parse(doc.get("document"))
    except (ValueError, RecursionError, BadStatus) as exc:
        return f"GET {url} returned no status document: {exc}"


async def read_master_json(url: str, limit: int = STATUS_BASE_BYTES) -> dict[str, Any] | str:
    """``{"document": the JSON value}`` the master answers, or why it could not be read."""
    try:
        timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.get(url, headers={"Accept-Encoding": "identity"}) as response,
        ):
            if response.status != 200:
                return f"GET {url} answered HTTP {response.status}"
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                return f"GET {url} answered with Content-Encoding {encoding!r}; expected plain JSON"
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    break
            if len(body) > limit:
                return f"GET {url} answered more than {limit} bytes; a status document of this job is smaller"
            return {"document": json.loads(body)}
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return f"GET {url} failed: {type(exc).__name__}: {exc}".rstrip(": ")
    except (ValueError, RecursionError) as exc:
        return f"GET {url} returned no status document: {exc}"
