"""What etcd's JSON gateway costs, beside etcd's gRPC API: the same puts both ways, one real etcd.

``EtcdStore`` talks to etcd through its JSON gateway (``/v3/kv/put`` and friends, with etha's
minimal keep-alive HTTP client, docs/kvstore.md). etcd serves the gateway by decoding the JSON,
calling its own gRPC server over a loopback connection and encoding the answer again, so each
request costs etcd more CPU than the same request over gRPC. This measures how much, for the
request a rendezvous makes most (a put of a small key), with the etcd ``make control-plane``
builds (bin/etcd) on 127.0.0.1 and a temporary data dir:

- ``gateway``: etha's ``EtcdStore.set_bytes`` (one ``/v3/kv/put`` through its gateway client);
- ``grpc``: ``etcdserverpb.KV/Put`` over one grpcio channel, the PutRequest encoded by hand (two
  length-delimited fields; no generated code). Needs ``grpcio``, which etha does not depend on:
  ``pip install --target /tmp/grpcpkg grpcio`` and ``PYTHONPATH=/tmp/grpcpkg``; without it this
  mode is left out, and the script says so.

Per run: ``--puts`` sequential puts from one client; etcd's CPU (utime + stime of its process,
/proc) and the client's CPU and wall time, per put. The modes take turns; medians of ``--repeat``.

    python bench/etcd_transport.py                       # 2000 puts, 3 runs each
    PYTHONPATH=/tmp/grpcpkg python bench/etcd_transport.py --puts 5000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etha.kvstore.etcd import EtcdStore
from tests.etcd_server import EtcdServer

#: A mode: endpoint -> (put(i), close()).
Mode = Callable[[str], tuple[Callable[[int], None], Callable[[], None]]]

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def put_request(key: bytes, value: bytes) -> bytes:
    """etcdserverpb.PutRequest{key: 1, value: 2}, protobuf wire format."""
    return b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value


def gateway_mode(endpoint: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    store = EtcdStore([endpoint], namespace="bench", component="gw", timeout=10.0)

    def put(i: int) -> None:
        store.set_bytes(str(i), str(i).encode())

    return put, store.close


def grpc_mode(endpoint: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]

    channel = grpc.insecure_channel(endpoint)
    call = channel.unary_unary("/etcdserverpb.KV/Put")  # bytes in, bytes out: no codec

    def put(i: int) -> None:
        call(put_request(f"bench/grpc/{i}".encode(), str(i).encode()), timeout=10.0)

    return put, channel.close


def one_run(make: Mode, etcd: EtcdServer, puts: int) -> dict[str, float]:
    put, close = make(etcd.endpoint)
    try:
        for i in range(20):  # connect and warm up, outside the clock
            put(i)
        assert etcd.proc is not None
        etcd_cpu, client_cpu, wall = cpu_seconds(etcd.proc.pid), time.process_time(), time.perf_counter()
        for i in range(puts):
            put(i)
        wall = time.perf_counter() - wall
        client_cpu = time.process_time() - client_cpu
        etcd_cpu = cpu_seconds(etcd.proc.pid) - etcd_cpu
    finally:
        close()
    return {"etcd_cpu": etcd_cpu / puts, "client_cpu": client_cpu / puts, "wall": wall / puts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    modes: dict[str, Mode] = {"gateway": gateway_mode}
    try:
        import grpc  # noqa: F401

        modes["grpc"] = grpc_mode
    except ImportError:
        print(
            "grpc mode left out: grpcio is not installed"
            " (pip install --target /tmp/grpcpkg grpcio; PYTHONPATH=/tmp/grpcpkg)"
        )
    etcd = EtcdServer()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    try:
        for _ in range(args.repeat):
            for mode, make in modes.items():
                runs[mode].append(one_run(make, etcd, args.puts))
    finally:
        etcd.stop()
    print(f"{args.puts} sequential puts, {os.cpu_count()} CPUs, median of {args.repeat}; per put:")
    medians: dict[str, dict[str, float]] = {}
    for mode, results in runs.items():
        medians[mode] = {k: statistics.median(r[k] for r in results) for k in results[0]}
        each = ", ".join(f"{r['etcd_cpu'] * 1e6:.0f}" for r in results)
        m = medians[mode]
        print(
            f"  {mode:8s} etcd CPU {m['etcd_cpu'] * 1e6:6.0f} us (runs {each}), "
            f"client CPU {m['client_cpu'] * 1e6:5.0f} us, wall {m['wall'] * 1e6:6.0f} us"
        )
    if "grpc" in medians:
        for key, label in (("etcd_cpu", "etcd CPU"), ("client_cpu", "client CPU"), ("wall", "wall")):
            print(f"  gateway / grpc, {label}: {medians['gateway'][key] / medians['grpc'][key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
