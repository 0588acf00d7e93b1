"""The kubelet of the control plane's fake Nodes: runs every pod bound to them as local processes
and reports its status through the API, as a kubelet would.

It watches pods (one list, then a watch), and for a pod bound to one of its Nodes:
- gives it an address of its own on the loopback range (127.1.x.y), so every master listens on its
  real port (29500) and serves its status document at ``<pod IP>:8080``, as in a cluster; the
  operator reads it there;
- maps the pod DNS names its command and environment name (``<hostname>.<subdomain>.<ns>.svc``,
  what a headless Service resolves) to that pod's address, and keeps a pod Pending while a pod it
  names has not started (its name would not resolve yet);
- runs its first container's command (``python`` is this interpreter, ``workingDir`` /app this
  repository), then reports phase, podIP, conditions, container states, exit codes (a signal's
  as 128 + its number) and restartCount, honouring ``restartPolicy``;
- on deletion (a deletionTimestamp), sends SIGTERM, waits the grace period, kills, then deletes
  the pod with grace 0, which is what lets a bound pod go.
- volumes: a ``configMap`` volume is materialised from the ConfigMap's ``data`` (the pod stays
  Pending until the ConfigMap exists, as a kubelet's would), an ``emptyDir`` is an empty folder,
  each under a per-pod host folder (``<workdir>/volumes/<pod uid>/<volume>``); an element of the
  first container's argv that is, or lies under, a ``volumeMounts[].mountPath`` of it is rewritten
  to the host path (``/etha/agent/agent.py`` -> ``<workdir>/volumes/<uid>/etha-agent/agent.py``):
  processes run in the host's file system, so a mount is a rewrite of the paths named;
- init containers are not run (etha's pods have none of their own).
Images are not pulled: the local environment stands in for the runtime image.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from etha.local_host import local_command
from tests.harness.kube import Kube, KubeError, container_env
from tests.helpers import REPO, TEST_ENV

SYNC_SECONDS = 0.05
#: Longest wait between SIGTERM and SIGKILL, whatever the pod's grace period says.
MAX_GRACE_SECONDS = 30.0
_DNS = re.compile(
    r"\b([a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\b"
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Proc:
    uid: str
    namespace: str
    name: str
    container: str
    ip: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: IO[bytes]
    proc: subprocess.Popen[bytes]
    started_at: str
    restart_policy: str
    restarts: int = 0
    reported_exit: int | None = None
    terminating_since: float | None = None
    deleted: bool = False


class LocalNode:
    def __init__(self, kube: Kube, nodes: set[str], workdir: Path) -> None:
        self.kube = kube
        self.nodes = nodes
        self.workdir = workdir
        self.pods: dict[str, dict[str, Any]] = {}  # by uid, as last seen (bound to our nodes)
        self.procs: dict[str, _Proc] = {}  # by uid
        self.names: dict[str, str] = {}  # "<hostname>.<subdomain>.<ns>" -> pod IP
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._next_ip = 0
        self._ips: dict[str, str] = {}  # by pod uid
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch_loop, name="local-node-watch", daemon=True),
            threading.Thread(target=self._sync_loop, name="local-node", daemon=True),
        ]

    def start(self) -> LocalNode:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._threads[1].join(30)
        for p in list(self.procs.values()):
            _terminate(p.proc, 5)
            p.log.close()
        self.procs.clear()

    def kill(self, namespace: str, pod: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a pod's process, as an OOM kill or a crash would."""
        for p in list(self.procs.values()):
            if (p.namespace, p.name) == (namespace, pod) and p.proc.poll() is None:
                os.killpg(p.proc.pid, sig)
                return
        raise AssertionError(f"no running process for pod {namespace}/{pod}")

    def kill_child(self, namespace: str, pod: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal the first child process of a pod's process (the training process an agent runs,
        not the agent): a crash of the process alone. Its pid."""
        for p in list(self.procs.values()):
            if (p.namespace, p.name) == (namespace, pod) and p.proc.poll() is None:
                kids = _children(p.proc.pid)
                if not kids:
                    raise AssertionError(f"pod {namespace}/{pod}'s process {p.proc.pid} has no child")
                os.kill(kids[0], sig)
                return kids[0]
        raise AssertionError(f"no running process for pod {namespace}/{pod}")

    def child_pids(self, namespace: str, pod: str) -> list[int]:
        """The children of a pod's process (an agent's training process), oldest first."""
        for p in list(self.procs.values()):
            if (p.namespace, p.name) == (namespace, pod) and p.proc.poll() is None:
                return _children(p.proc.pid)
        return []

    def logs(self, limit: int = 4000, namespace: str | None = None) -> str:
        out = []
        for path in sorted(self.workdir.glob(f"{namespace or ''}*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-limit:]}")
        if self.errors:
            out.append("node errors:\n" + "\n".join(self.errors[-20:]))
        return "\n".join(out)

    # --- watching ------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.kube.get("/api/v1/pods")
                with self._lock:
                    self.pods = {p["metadata"]["uid"]: p for p in listing.get("items") or [] if self._ours(p)}
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    for event in self.kube.watch("/api/v1/pods", rv, timeout=5):
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise _Relist(str(obj.get("message")))
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event.get("type") == "BOOKMARK":
                            continue
                        uid = obj["metadata"]["uid"]
                        with self._lock:
                            if event["type"] == "DELETED" or not self._ours(obj):
                                self.pods.pop(uid, None)
                            else:
                                self.pods[uid] = obj
                        if self._stop.is_set():
                            return
            except _Relist:
                continue
            except Exception as exc:  # the API server away, a stream cut: list again
                self.errors.append(f"watch: {type(exc).__name__}: {exc}")
                self._stop.wait(0.5)

    def _ours(self, pod: dict[str, Any]) -> bool:
        return (pod.get("spec") or {}).get("nodeName") in self.nodes

    # --- the kubelet's loop --------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stop.wait(SYNC_SECONDS):
            try:
                self._sync()
            except Exception as exc:  # keep serving; report in logs()
                self.errors.append(f"sync: {type(exc).__name__}: {exc}")

    def _sync(self) -> None:
        with self._lock:
            pods = dict(self.pods)
        for uid, p in list(self.procs.items()):
            if uid not in pods:  # gone from the API (deleted with grace 0, or its namespace)
                _terminate(p.proc, 0)
                p.log.close()
                del self.procs[uid]
        for uid, pod in pods.items():
            p = self.procs.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                self._terminating(pod, p)
            elif p is None:
                if (pod.get("status") or {}).get("phase") in (None, "Pending"):
                    self._start(uid, pod)
            else:
                self._follow(p)

    def _terminating(self, pod: dict[str, Any], p: _Proc | None) -> None:
        meta = pod["metadata"]
        if p is not None and p.proc.poll() is None:
            grace = min(float(meta.get("deletionGracePeriodSeconds") or 0), MAX_GRACE_SECONDS)
            if p.terminating_since is None:
                p.terminating_since = time.monotonic()
                _signal(p.proc, signal.SIGTERM)
                return
            if time.monotonic() - p.terminating_since < grace:
                return
            _terminate(p.proc, 0)
        if p is not None and p.deleted:
            return
        try:
            self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                 "preconditions": {"uid": meta["uid"]}},
            )  # fmt: skip
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
        if p is not None:
            p.deleted = True
        else:
            with self._lock:
                self.pods.pop(meta["uid"], None)

    def _start(self, uid: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        ip = self._ip_of(uid, namespace, spec)
        container = spec["containers"][0]
        argv = [str(x) for x in (container.get("command") or []) + (container.get("args") or [])]
        fields = {"metadata.name": name, "metadata.namespace": namespace, "status.podIP": ip}
        # (this interpreter's folder first: a command an agent runs finds ``python`` there too)
        path = f"{Path(sys.executable).parent}{os.pathsep}{TEST_ENV.get('PATH', '')}"
        env = {**TEST_ENV, "PATH": path, "PYTHONUNBUFFERED": "1", **container_env(container, fields)}
        try:
            argv = [self._resolve(a) for a in argv]
            env = {k: self._resolve(v) for k, v in env.items()}
        except _Unresolved:
            return  # a pod it names has not started: its name would not resolve yet
        mounts = self._volumes(uid, namespace, spec, container)
        if mounts is None:
            return  # a ConfigMap it mounts does not exist yet
        argv = [_mounted(a, mounts) for a in argv]
        if "--host" in argv and argv[argv.index("--host") + 1] == "0.0.0.0":
            argv[argv.index("--host") + 1] = ip  # listen on the pod's own address
        cwd = container.get("workingDir")
        cwd_path = REPO if cwd == "/app" else Path(cwd) if cwd else self.workdir
        log = (self.workdir / f"{namespace}_{name}.log").open("ab")
        p = _Proc(uid, namespace, name, container["name"], ip, argv, env, cwd_path, log,
                  self._popen(argv, env, cwd_path, log), _now(), spec.get("restartPolicy") or "Always")  # fmt: skip
        self.procs[uid] = p
        self._report(p, running=True)

    def _volumes(
        self, uid: str, namespace: str, spec: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, Path] | None:
        """The container's mounts (mountPath -> host folder), their volumes materialised; None
        while a ConfigMap a volume names does not exist."""
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            folder = self.workdir / "volumes" / uid / volume["name"]
            if "configMap" in volume:
                source = volume["configMap"]
                try:
                    cm = self.kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{source['name']}")
                except KubeError as exc:
                    if exc.status == 404 and not source.get("optional"):
                        return None
                    if exc.status != 404:
                        raise
                    cm = {}
                folder.mkdir(parents=True, exist_ok=True)
                for key, text in (cm.get("data") or {}).items():
                    (folder / key).write_text(text)
            elif "emptyDir" in volume:
                folder.mkdir(parents=True, exist_ok=True)
            else:
                continue
            folders[volume["name"]] = folder
        return {
            m["mountPath"].rstrip("/"): folders[m["name"]]
            for m in container.get("volumeMounts") or []
            if m.get("name") in folders
        }

    def _popen(
        self, argv: list[str], env: dict[str, str], cwd: Path, log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            local_command(argv),
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _follow(self, p: _Proc) -> None:
        code = p.proc.poll()
        if code is None or p.reported_exit is not None:
            return
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number
        if p.restart_policy == "Always" or (p.restart_policy == "OnFailure" and code != 0):
            p.restarts += 1
            p.started_at = _now()
            p.proc = self._popen(p.argv, p.env, p.cwd, p.log)
            self._report(p, running=True, last_exit=code)
            return
        p.reported_exit = code
        self._report(p, running=False, exit_code=code)

    def _report(self, p: _Proc, running: bool, exit_code: int = 0, last_exit: int | None = None) -> None:
        now = _now()
        if running:
            state: dict[str, Any] = {"running": {"startedAt": p.started_at}}
            phase = "Running"
        else:
            reason = "Completed" if exit_code == 0 else "Error"
            state = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": p.started_at,
                    "finishedAt": now,
                }
            }
            phase = "Succeeded" if exit_code == 0 else "Failed"
        cstatus: dict[str, Any] = {
            "name": p.container, "image": "local", "imageID": "", "containerID": f"local://{p.proc.pid}",
            "ready": running, "started": running, "restartCount": p.restarts, "state": state,
        }  # fmt: skip
        if last_exit is not None:
            cstatus["lastState"] = {
                "terminated": {"exitCode": last_exit, "reason": "Error", "finishedAt": now}
            }
        conditions = [
            {"type": t, "status": "True" if (running or t in ("PodScheduled", "Initialized")) else "False", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]  # fmt: skip
        status = {"phase": phase, "podIP": p.ip, "podIPs": [{"ip": p.ip}], "hostIP": "127.0.0.1",
                  "hostIPs": [{"ip": "127.0.0.1"}], "startTime": p.started_at, "conditions": conditions,
                  "containerStatuses": [cstatus]}  # fmt: skip
        try:
            self.kube.request(
                "PATCH", f"/api/v1/namespaces/{p.namespace}/pods/{p.name}/status", {"status": status},
                content_type="application/merge-patch+json",
            )  # fmt: skip
        except KubeError as exc:
            if exc.status != 404:
                raise

    # --- names and addresses -------------------------------------------------------------

    def _ip_of(self, uid: str, namespace: str, spec: dict[str, Any]) -> str:
        if uid in self._ips:
            return self._ips[uid]
        self._next_ip += 1
        n = self._next_ip
        ip = self._ips[uid] = f"127.1.{n // 250}.{n % 250 + 1}"
        if spec.get("hostname") and spec.get("subdomain"):
            self.names[f"{spec['hostname']}.{spec['subdomain']}.{namespace}"] = ip
        return ip

    def _resolve(self, value: str) -> str:
        def sub(match: re.Match[str]) -> str:
            ip = self.names.get(match.group(1))
            if ip is None:
                raise _Unresolved(match.group(0))
            return ip

        return _DNS.sub(sub, value)


def _mounted(arg: str, mounts: dict[str, Path]) -> str:
    """``arg`` with a mount path it is, or starts with, replaced by the mount's host folder."""
    for path, folder in mounts.items():
        if arg == path or arg.startswith(path + "/"):
            return str(folder) + arg[len(path) :]
    return arg


def _children(pid: int) -> list[int]:
    """The live children of process ``pid`` (from /proc), oldest first."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(fields[19]), int(entry.name)))
    return [p for _, p in sorted(out)]


class _Unresolved(Exception):
    pass


class _Relist(Exception):
    pass


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    _signal(proc, signal.SIGTERM if grace else signal.SIGKILL)
    try:
        proc.wait(grace or 5)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        proc.wait(5)
