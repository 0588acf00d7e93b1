"""Run by torchrun in the tests: an unmodified env:// script, plus what it saw, as one PROBE line.

All-reduces rank + 1 over the whole group, reads its ranks through ``etha.kvstore.from_env()``,
checks, with a raw client of the job's master, that torch's c10d rendezvous state is there, and
says which store its process group uses (its port).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from etha.kvstore import from_env


def main() -> None:
    if os.environ.get("PROBE_FAIL") == f"{os.environ['ETHA_RANK']}/{os.environ['LOCAL_RANK']}":
        print("PROBE failing on purpose", flush=True)
        sys.exit(int(os.environ.get("PROBE_EXIT", "3")))
    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    store = from_env()
    pg_store = dist.distributed_c10d._get_default_store()
    while isinstance(pg_store, dist.PrefixStore):
        pg_store = pg_store.underlying_store
    master = dist.TCPStore(
        os.environ["ETHA_KVSTORE_HOST"],
        int(os.environ["ETHA_KVSTORE_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=30),
    )
    seen = {
        "rank": rank,
        "world": world,
        "sum": tensor.item(),
        "env_rank": int(os.environ["RANK"]),
        "env_world": int(os.environ["WORLD_SIZE"]),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "group_rank": int(os.environ["GROUP_RANK"]),
        "local_world": int(os.environ["LOCAL_WORLD_SIZE"]),
        "worker": int(os.environ["ETHA_RANK"]),
        "from_env": [store.rank, store.world_size],
        "rdzv_in_master": master.check([f"torch.rendezvous.{os.environ['TORCHELASTIC_RUN_ID']}"]),
        "master_addr": os.environ["MASTER_ADDR"],
        "master_port": int(os.environ["MASTER_PORT"]),
        "etha_port": int(os.environ["ETHA_KVSTORE_PORT"]),
        "pg_store_port": pg_store.port,
        "agent_store": os.environ["TORCHELASTIC_USE_AGENT_STORE"],
    }
    print("PROBE " + json.dumps(seen), flush=True)
    store.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
