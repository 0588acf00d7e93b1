"""What it costs the rendezvous master to see who joined: one look at N connections.

The master (``python -m etha.master --world-size N``) lists the connections it accepted
(``peers.accepted_peers``) and traces local ones to their processes (``local_owners``). This
opens N loopback connections in this process and times, as medians over ``--repeat`` runs: the
first look (every connection new, local processes traced), and a steady look (nothing new, what
the master pays every interval while ranks are missing).

    python bench/master_peers.py --sizes 256 1024 --repeat 5
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etha.master.peers import PeerTracker


def measure(n: int) -> tuple[float, float]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(n)
    port = server.getsockname()[1]
    sockets = []
    try:
        for _ in range(n):
            sockets.append(socket.create_connection(("127.0.0.1", port)))
            sockets.append(server.accept()[0])
        tracker = PeerTracker(port, n)
        began = time.perf_counter()
        tracker.refresh()
        first = time.perf_counter() - began
        began = time.perf_counter()
        tracker.refresh()
        steady = time.perf_counter() - began
        return first, steady
    finally:
        for s in sockets:
            s.close()
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(args.sizes) + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(f"{'N':>6} {'first look (ms)':>16} {'steady look (ms)':>17}")
    for n in args.sizes:
        runs = [measure(n) for _ in range(args.repeat)]
        first = statistics.median(r[0] for r in runs) * 1000
        steady = statistics.median(r[1] for r in runs) * 1000
        print(f"{n:>6} {first:>16.1f} {steady:>17.1f}")
    print(
        "(this process holds both ends of each connection: the master holds one, so it looks at half as many)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
