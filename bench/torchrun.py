"""torchrun benchmark: time from all worker pods started to all their processes in one group.

Each worker is a real ``torchrun`` (this interpreter's, ``python -m torch.distributed.run``) given
no flag, only the environment the operator injects (``etha.job.builders.build_worker_pod``, the
master's name mapped to 127.0.0.1 as ``etha run-local`` does). Its ``procsPerWorker`` processes
run an unmodified env:// script: ``init_process_group("gloo")`` then a barrier, and write the
time they got past it. A run's time is from the last torchrun started to the last process past
its barrier (torch's import in every agent and process included: it is what a job waits for);
also shown, from the last process done importing torch to the last past its barrier.

Three set-ups, side by side, on 127.0.0.1:

- ``etha``: the job's master (``python -m etha.master``) is the rendezvous endpoint and
  every agent a client of it (``PET_RDZV_CONF=is_host=false,...``), as the operator configures by
  default (c10d; the processes' store is then worker 0's agent's);
- ``etha-backend``: the same with ``PET_RDZV_BACKEND=etha`` (``spec.rendezvous.torchrunBackend:
  etha``): the master is the processes' store too;
- ``worker0``: what a Kubeflow elastic user gets: torchrun's c10d with its own store hosted by
  worker 0's agent (``is_host=true`` there, ``false`` elsewhere), no master process.

``--where`` runs once instead and reports where each process's store lives (its ``MASTER_ADDR``
and ``MASTER_PORT``, against the master's port), and what static rendezvous does pointed at the
master (node 0's agent tries to host the store itself).

    python bench/torchrun.py                      # 2x2 and 8x2, medians of 3 (make bench-torchrun)
    python bench/torchrun.py --shapes 2x2 --repeat 5
    python bench/torchrun.py --where
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RES_OPTIONS", "timeout:1 attempts:1")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from etha.job.spec import parse  # noqa: E402
from etha.local import LocalJob, local_env  # noqa: E402

SCRIPT = """
import json, os, sys, time
import torch.distributed as dist
imported = time.time()
dist.init_process_group("gloo", init_method="env://")
dist.barrier()
done = time.time()
with open(os.path.join(sys.argv[1], "rank-%s.json" % os.environ["RANK"]), "w") as f:
    json.dump({"done": done, "imported": imported, "MASTER_ADDR": os.environ["MASTER_ADDR"],
               "MASTER_PORT": os.environ["MASTER_PORT"], "GROUP_RANK": os.environ["GROUP_RANK"],
               "ETHA_RANK": os.environ["ETHA_RANK"], "world": dist.get_world_size()}, f)
dist.barrier()
dist.destroy_process_group()
"""


#: etha: c10d through the master (the operator's default); etha-backend: torchrunBackend etha (the
#: master is the processes' store too); worker0: torchrun's c10d store on worker 0's agent.
MODES = ["etha", "etha-backend", "worker0"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job(replicas: int, procs: int) -> LocalJob:
    body = {
        "apiVersion": "etha.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "procsPerWorker": procs,
            "rendezvous": {"timeoutSeconds": 600},
            "template": {"spec": {"containers": [{"name": "w", "image": "local", "command": ["torchrun"]}]}},
        },
    }
    return LocalJob(parse(body), ["torchrun"], None)


def start_master(tmp: Path, replicas: int) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "master.port"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "etha.master", "--host", "127.0.0.1", "--port", "0"),
            *("--port-file", str(port_file), "--world-size", str(replicas), "--log-level", "WARNING"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the master did not start (exit {proc.poll()})")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def worker_envs(mode: str, replicas: int, procs: int, port: int) -> list[dict[str, str]]:
    spec = job(replicas, procs)
    envs = []
    for rank in range(replicas):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            **local_env(spec, rank, port, "127.0.0.1"),
        }
        if mode == "etha-backend":  # spec.rendezvous.torchrunBackend etha: the master is the processes' store
            env["PET_RDZV_BACKEND"] = "etha"
        if mode == "worker0":  # torchrun's own c10d store, hosted by worker 0's agent
            conf = env["PET_RDZV_CONF"].replace(
                "is_host=false", f"is_host={'true' if rank == 0 else 'false'}"
            )
            env["PET_RDZV_CONF"] = conf
        envs.append(env)
    return envs


def run_once(
    mode: str, replicas: int, procs: int, tmp: Path
) -> tuple[float, float, list[dict[str, str]], int]:
    """(seconds from the last torchrun started to the last process in the group, seconds from
    the last process done importing torch to the same, what each process saw, the store port)."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    script = tmp / "probe.py"
    script.write_text(SCRIPT)
    master = None
    if mode in ("etha", "etha-backend"):
        master, port = start_master(out, replicas)
    else:
        port = free_port()
    agents: list[subprocess.Popen[bytes]] = []
    try:
        for env in worker_envs(mode, replicas, procs, port):
            agents.append(
                subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", str(script), str(out)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        started = time.time()
        for agent in agents:
            _, err = agent.communicate(timeout=900)
            if agent.returncode != 0:
                raise SystemExit(
                    f"{mode} {replicas}x{procs}: torchrun exited {agent.returncode}:\n{err.decode()[-3000:]}"
                )
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        if master is not None:
            master.terminate()
            master.wait(10)
    seen = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    if len(seen) != replicas * procs or any(s["world"] != replicas * procs for s in seen):
        raise SystemExit(
            f"{mode} {replicas}x{procs}: {len(seen)} processes reported, expected {replicas * procs}"
        )
    last = max(float(s["done"]) for s in seen)
    return last - started, last - max(float(s["imported"]) for s in seen), seen, port


def where(tmp: Path) -> None:
    """Where the processes' store lives under each backend, measured (2 workers x 2 processes)."""
    _, _, seen, port = run_once("etha", 2, 2, tmp)
    print(f"c10d through the master at 127.0.0.1:{port} (the operator's default); the processes got:")
    for s in seen:
        print(f"  worker {s['ETHA_RANK']} group rank {s['GROUP_RANK']}: ", end="")
        print(f"MASTER_ADDR={s['MASTER_ADDR']} MASTER_PORT={s['MASTER_PORT']}")
    _, _, seen, port = run_once("etha-backend", 2, 2, tmp)
    print(f"etha (torchrunBackend: etha) through the master at 127.0.0.1:{port}; the processes got:")
    for s in seen:
        print(f"  worker {s['ETHA_RANK']} group rank {s['GROUP_RANK']}: ", end="")
        print(f"MASTER_ADDR={s['MASTER_ADDR']} MASTER_PORT={s['MASTER_PORT']}")
    # Static rendezvous pointed at the master: node 0's agent is the store's host (is_master).
    master, port = start_master(tmp, 2)
    try:
        env = worker_envs("etha", 2, 2, port)[0]
        env.update({"PET_RDZV_BACKEND": "static", "PET_RDZV_CONF": "timeout=20"})
        res = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", str(tmp / "probe.py"), str(tmp)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        last = [line for line in res.stderr.splitlines() if "Error" in line or "error" in line][-3:]
        print(f"static rendezvous, node 0, endpoint = the master (127.0.0.1:{port}): exit {res.returncode}")
        for line in last:
            print(f"  {line.strip()[:300]}")
    finally:
        master.terminate()
        master.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["2x2", "8x2"], help="workers x processes (default: 2x2 8x2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per shape and set-up (default 3)")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--where", action="store_true", help="report where the stores live, then exit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="etha-bench-torchrun-") as tmp:
        if args.where:
            where(Path(tmp))
            return 0
        torch_version = __import__("torch").__version__
        print(f"torch {torch_version}, {os.cpu_count()} CPUs; seconds, median of {args.repeat}")
        for shape in args.shapes:
            replicas, procs = (int(x) for x in shape.split("x"))
            runs: dict[str, list[float]] = {mode: [] for mode in args.modes}
            tails: dict[str, list[float]] = {mode: [] for mode in args.modes}
            for _ in range(args.repeat):  # set-ups take turns, so a busier minute hits both alike
                for mode in args.modes:
                    seconds, tail, _, _ = run_once(mode, replicas, procs, Path(tmp))
                    runs[mode].append(seconds)
                    tails[mode].append(tail)
            medians = {mode: statistics.median(values) for mode, values in runs.items()}
            for mode, values in runs.items():
                each = ", ".join(f"{r:.2f}" for r in values)
                tail = statistics.median(tails[mode])
                print(
                    f"{shape} {mode:12s} median {medians[mode]:.2f} s (runs {each}); "
                    f"after the last import {tail:.3f} s",
                    flush=True,
                )
            for mode in ("etha", "etha-backend"):
                if {mode, "worker0"} <= medians.keys():
                    ratio = medians[mode] / medians["worker0"]
                    print(f"{shape} {mode} / worker0 = {ratio:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
