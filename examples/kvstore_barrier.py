"""Use etha's store directly: every rank registers, waits for all, and reads a config rank 0 shares."""

import json

from etha.kvstore import from_env


def main() -> None:
    store = from_env()
    rank, world = store.rank, store.world_size
    store.set(f"ready/{rank}", "1")
    ranks = store.wait_for_keys(
        "ready/*", world, timeout=300, candidate_keys=[f"ready/{i}" for i in range(world)]
    )
    if rank == 0:
        store.set("config", json.dumps({"lr": 0.01, "seed": 1234}))
    config = json.loads(store.wait_for_key("config", timeout=300))
    print(f"rank {rank}: {len(ranks)} ranks ready, config {config}")
    store.close(cleanup=False)  # others may still be reading; the job's keys go with the job


if __name__ == "__main__":
    main()
