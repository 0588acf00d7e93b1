"""Rendezvous benchmark: N participants register a rank key, then wait until all N have.

Three designs, side by side in one run against one real master process (``python -m
etha.master``) on 127.0.0.1:

- ``etha``: ``TorchTCPStore.set`` + ``wait_for_keys`` (server-side wait, batched read);
- ``naive``: the seed's design, every participant polling its candidate keys one by one with
  1 ms sleeps;
- ``barrier``: torch's server-side ``TCPStore.barrier``, the floor;
- ``etcd`` (with ``--modes``): ``EtcdStore.set`` + ``wait_for_keys`` against a real etcd
  (``etcd`` on PATH, 127.0.0.1, a temporary data dir), beside the others in the same run.

Participants are threads spread over several processes, each with its own connection, all
connected before the clock starts. A run's time is from the start signal to the last
participant done. Each mode and size runs ``--warmup`` times uncounted first (a fresh etcd's
first rendezvous took ~30 % longer), then ``--repeat`` times; prints the medians and the ratios.

    python bench/rendezvous.py                 # N in 8 64 256 1024, 3 runs each
    python bench/rendezvous.py --sizes 256 --repeat 5
    python bench/rendezvous.py --sizes 256 1024 --modes etha etcd barrier   # make bench-etcd
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RES_OPTIONS", "timeout:1 attempts:1")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

MODES = ("etha", "naive", "barrier", "etcd")
DEFAULT_MODES = ("etha", "naive", "barrier")
#: Set by main() when the etcd mode runs (the forked workers inherit it).
ETCD_ENDPOINT = ""
POLL = 0.001


def participant(
    mode: str,
    port: int,
    tag: str,
    rank: int,
    n: int,
    ready: threading.Barrier,
    go: threading.Event,
    ends: list[float],
    errors: list[str],
) -> None:
    import torch.distributed as dist

    from etha.kvstore.tcp import TorchTCPStore

    try:
        cands = [f"rank/{i}" for i in range(n)]
        if mode == "etha":
            store = TorchTCPStore(
                "127.0.0.1", port, n, False, timeout=120, wait_for_workers=False, namespace=tag
            )
        elif mode == "etcd":
            from etha.kvstore.etcd import EtcdStore

            store = EtcdStore([ETCD_ENDPOINT], namespace=tag, timeout=120)  # type: ignore[assignment]
        else:
            raw = dist.TCPStore(
                "127.0.0.1", port, None, False, timedelta(seconds=120), wait_for_workers=False
            )
        ready.wait()
        go.wait()
        if mode == "etha":
            store.set(f"rank/{rank}", "1")
            got = store.wait_for_keys("rank/*", n, candidate_keys=cands, timeout=120)
            assert len(got) == n, got
        elif mode == "etcd":  # a watch on the prefix; no candidate keys needed
            store.set(f"rank/{rank}", "1")
            got = store.wait_for_keys("rank/*", n, timeout=120)
            assert len(got) == n, got
        elif mode == "naive":
            raw.set(f"{tag}/rank/{rank}", "1")
            while True:
                count = 0
                for key in cands:
                    if raw.check([f"{tag}/{key}"]):
                        count += 1
                if count >= n:
                    break
                time.sleep(POLL)
        else:
            raw.barrier(f"{tag}/barrier", n)
        ends.append(time.monotonic())
        if mode in ("etha", "etcd"):
            store.close(cleanup=False)
    except BaseException as exc:  # reported to the parent
        errors.append(f"rank {rank}: {exc!r}")
        ready.abort()


def worker_process(
    mode: str, port: int, tag: str, ranks: list[int], n: int, conn: object, go_at: mp.Event
) -> None:  # type: ignore[valid-type]
    ready = threading.Barrier(len(ranks) + 1)
    go = threading.Event()
    ends: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=participant, args=(mode, port, tag, r, n, ready, go, ends, errors))
        for r in ranks
    ]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=120)
        conn.send(("ready", None))  # type: ignore[attr-defined]
        go_at.wait(120)  # type: ignore[attr-defined]
        go.set()
    except threading.BrokenBarrierError:
        go.set()
    for t in threads:
        t.join(300)
    conn.send(("done", (max(ends) if ends and not errors else None, errors)))  # type: ignore[attr-defined]


def one_run(mode: str, port: int, n: int, procs: int, tag: str) -> float:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    groups = [list(range(n))[i::procs] for i in range(procs)]
    pipes, children = [], []
    for ranks in groups:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_process, args=(mode, port, tag, ranks, n, child, go))
        proc.start()
        pipes.append(parent)
        children.append(proc)
    for p in pipes:
        assert p.recv()[0] == "ready"
    start = time.monotonic()
    go.set()
    ends = []
    for p in pipes:
        _, (end, errors) = p.recv()
        if errors:
            raise RuntimeError(f"{mode} N={n}: {errors[:3]}")
        ends.append(end)
    for c in children:
        c.join(30)
    return max(ends) - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 256, 1024])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs of each mode and size first")
    ap.add_argument("--procs", type=int, default=8, help="processes the participants are spread over")
    ap.add_argument(
        "--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES, help="etcd needs the etcd binary"
    )
    args = ap.parse_args()
    # Import torch once here: the forked participant processes share it instead of each
    # importing it (seconds and hundreds of MB apiece with --procs 64).
    import torch.distributed  # noqa: F401

    etcd = None
    if "etcd" in args.modes:
        global ETCD_ENDPOINT
        from tests.etcd_server import EtcdServer

        etcd = EtcdServer()
        ETCD_ENDPOINT = etcd.endpoint
    from tests.helpers import MasterProcess  # the tests' master process: 127.0.0.1, a free port

    master = MasterProcess(Path(tempfile.mkdtemp(prefix="etha-bench-")))
    port = master.port
    results: dict[tuple[str, int], float] = {}
    try:
        for n in args.sizes:
            for mode in args.modes:
                times = []
                for i in range(-args.warmup, args.repeat):  # the warm-up runs are not counted
                    took = one_run(mode, port, n, min(args.procs, n), f"{mode}-{n}-{i}")
                    if i >= 0:
                        times.append(took)
                results[(mode, n)] = statistics.median(times)
                print(
                    f"N={n:5d} {mode:8s} median {results[(mode, n)] * 1e3:9.1f} ms "
                    f"(runs: {', '.join(f'{t * 1e3:.1f}' for t in times)})",
                    flush=True,
                )
            if {"etha", "barrier"} <= set(args.modes):
                r = results[("etha", n)] / results[("barrier", n)]
                print(f"N={n:5d} etha/barrier = {r:.2f}x (target <= 2x)")
            if {"etha", "naive"} <= set(args.modes):
                r = results[("naive", n)] / results[("etha", n)]
                print(f"N={n:5d} naive/etha   = {r:.1f}x faster (target >= 50x)", flush=True)
            if {"etha", "etcd"} <= set(args.modes):
                r = results[("etcd", n)] / results[("etha", n)]
                print(f"N={n:5d} etcd/etha    = {r:.2f}x", flush=True)
    finally:
        master.stop()
        if etcd is not None:
            etcd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
