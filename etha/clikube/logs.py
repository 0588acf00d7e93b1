"""``etha logs``: which pods (the current attempt's, or the one before), and their lines, prefixed
like ``etha run-local`` prefixes them (``[rank 3] ...``, ``[master] ...``)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from etha.clikube.kube import Cluster, ClusterError
from etha.job import constants as c

#: The pod annotation kubectl reads to choose the container of ``kubectl logs``.
ANNOTATION_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


@dataclass(frozen=True)
class Target:
    """One pod to read: its name, the container, and the prefix of its lines."""

    pod: str
    container: str
    label: str


def selector(job: Mapping[str, Any], rank: int | None, master: bool, previous: bool) -> dict[str, str]:
    """The labels of the pods to read: the job's current attempt (``status.attempt``), or with
    ``previous`` the attempt before; the master, one rank, or every rank."""
    name = job["metadata"]["name"]
    _check_rank(job, rank, master)
    attempt = int((job.get("status") or {}).get("attempt") or 0)
    if previous:
        if attempt == 0:
            raise ClusterError(
                f'trainingjob "{name}" is on its first attempt (0): there is no previous attempt to show.'
            )
        attempt -= 1
    labels = {c.LABEL_JOB: name, c.LABEL_ROLE: c.ROLE_MASTER if master else c.ROLE_WORKER}
    labels[c.LABEL_ATTEMPT] = str(attempt)
    if rank is not None:
        labels[c.LABEL_RANK] = str(rank)
    return labels


def _check_rank(job: Mapping[str, Any], rank: int | None, master: bool) -> None:
    if rank is None:
        return
    if master:
        raise ClusterError(f"--rank ({rank}) and --master ask for different pods: give one of them.")
    if rank < 0:  # beyond the job's ranks: nothing_found says there is no such pod
        raise ClusterError(f"--rank ({rank}) must be at least 0 (a worker's rank).")


def targets(pods: Sequence[Mapping[str, Any]]) -> list[Target]:
    """The pods to read, by rank (one a rank: the newest, one not being deleted first)."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for pod in sorted(pods, key=_preference):
        labels = pod["metadata"].get("labels") or {}
        chosen[labels.get(c.LABEL_RANK, "")] = pod
    out = []
    for rank, pod in sorted(chosen.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1):
        label = f"rank {rank}" if rank else "master"
        out.append(Target(pod["metadata"]["name"], _container(pod), label))
    return out


def _preference(pod: Mapping[str, Any]) -> tuple[bool, str]:
    meta = pod["metadata"]
    return "deletionTimestamp" not in meta, str(meta.get("creationTimestamp") or "")


def _container(pod: Mapping[str, Any]) -> str:
    annotations = pod["metadata"].get("annotations") or {}
    return str(annotations.get(ANNOTATION_DEFAULT_CONTAINER) or pod["spec"]["containers"][0]["name"])


def nothing_found(job: Mapping[str, Any], labels: Mapping[str, str], previous: bool) -> ClusterError:
    """Why no pod matched, for a person."""
    name, attempt = job["metadata"]["name"], labels[c.LABEL_ATTEMPT]
    what = "the master" if labels[c.LABEL_ROLE] == c.ROLE_MASTER else "any rank"
    if c.LABEL_RANK in labels:
        what = f"rank {labels[c.LABEL_RANK]}"
    if previous:
        return ClusterError(
            f'trainingjob "{name}" has no pod of {what} left from attempt {attempt}: the operator '
            "deletes the pods of an attempt when the job restarts."
        )
    phase = (job.get("status") or {}).get("phase") or "no phase yet"
    return ClusterError(f'trainingjob "{name}" has no pod of {what} in attempt {attempt} (phase: {phase}).')


def print_logs(cluster: Cluster, chosen: list[Target], follow: bool, out: TextIO = sys.stdout) -> int:
    """Every line of every target to ``out``, prefixed; 1 if a pod's log could not be read."""
    lock = threading.Lock()
    failed: list[str] = []

    def copy(target: Target) -> None:
        try:
            for line in cluster.log_lines(target.pod, target.container, follow):
                with lock:
                    out.write(f"[{target.label}] {line}\n")
                    out.flush()
        except ClusterError as exc:
            with lock:
                failed.append(f"[{target.label}] {exc}")

    if not follow:
        for target in chosen:
            copy(target)
    else:
        threads = [threading.Thread(target=copy, args=(t,), daemon=True) for t in chosen]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # join with a timeout: Ctrl-C reaches the main thread
                thread.join(0.5)
    for message in failed:
        print(message, file=sys.stderr)
    return 1 if failed else 0
