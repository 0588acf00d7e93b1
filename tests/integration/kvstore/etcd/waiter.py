"""A process that waits for keys on etcd, for the tests of the rounds across processes.

    python -m tests.integration.kvstore.etcd.waiter ENDPOINT NAMESPACE COUNT TIMEOUT

Prints one JSON line when the wait ends: the keys found (or the error), and how many events
this process's watch of the keys' range received (the leader's only, if the round works).
"""

from __future__ import annotations

import json
import sys
import time

from etha.kvstore.errors import KVStoreError
from etha.kvstore.etcd import EtcdStore, _watch


def main() -> None:
    endpoint, namespace, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = EtcdStore([endpoint], namespace=namespace, timeout=10)
    print(json.dumps({"started": True}), flush=True)
    start = time.monotonic()
    out: dict[str, object] = {}
    try:
        out["keys"] = store.wait_for_keys("rank/*", count, timeout=timeout)
    except KVStoreError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["seconds"] = time.monotonic() - start
    range_key = f"/etha/{namespace}/tensorbus/rank/"
    out["events"] = sum(w.events for sig, w in list(_watch._WATCHERS.items()) if sig[1] == range_key)
    print(json.dumps(out), flush=True)
    store.close()


if __name__ == "__main__":
    main()
