"""All-reduce smoke test: an unmodified torch script using init_method="env://".

Every rank contributes its rank + 1; after all_reduce(SUM) each holds N(N+1)/2.
"""

import os

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    expected = world * (world + 1) / 2
    assert tensor.item() == expected, (tensor.item(), expected)
    host = os.uname().nodename
    print(f"rank {rank}/{world} on {host}: all_reduce sum = {tensor.item():g} (expected {expected:g})")
    # Tear down only once every rank is done: a rank that exits while a peer's gloo threads
    # still talk to it can abort in teardown (seen once here: exit 134, std::terminate).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
