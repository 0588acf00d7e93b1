"""A small DDP training loop on synthetic data (CPU, gloo; a few seconds).

Learns y = 3x - 2 + noise with a linear model. Each rank trains on its own shard; DDP averages
the gradients, so every rank ends with the same weights, which the script checks.

Runs as one process per pod (examples/ddp.yaml) or under torchrun, several per pod
(examples/torchrun-ddp.yaml). BACKEND=nccl trains on the GPU LOCAL_RANK names
(examples/gpu-ddp.yaml: 8 GPUs per pod, one process each).
"""

import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    backend = os.environ.get("BACKEND", "gloo")
    device = torch.device("cpu")
    if backend == "nccl":  # one GPU per process: the one torchrun's LOCAL_RANK names
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1234 + rank)  # a different shard per rank
    x = torch.randn(512, 1).to(device)
    y = 3 * x - 2 + 0.01 * torch.randn(512, 1).to(device)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(torch.nn.Linear(1, 1).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs = int(os.environ.get("EPOCHS", "40"))
    first = last = 0.0
    for epoch in range(epochs):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[start : start + 64]), y[start : start + 64])
            loss.backward()
            optimizer.step()
        if epoch == 0:
            first = loss.item()
        last = loss.item()

    weight, bias = (p.detach().clone() for p in model.module.parameters())
    gathered = [torch.zeros(2, device=device) for _ in range(world)]
    dist.all_gather(gathered, torch.cat([weight.flatten(), bias.flatten()]))
    assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks disagree on the weights"
    assert last < first / 10 and abs(weight.item() - 3) < 0.1 and abs(bias.item() + 2) < 0.1, (
        first,
        last,
        weight.item(),
        bias.item(),
    )
    where = f"worker {os.environ.get('ETHA_RANK', '?')} local rank {os.environ.get('LOCAL_RANK', '0')}"
    print(
        f"rank {rank}/{world} ({where}): loss {first:.3f} -> {last:.5f}, "
        f"learned y = {weight.item():.3f}x {bias.item():+.3f} (true: 3x - 2)"
    )
    # Free DDP before the group goes: its reducer holds the process group, and module graphs have
    # reference cycles, so left alone it is collected at interpreter exit, where gloo's threads
    # can be torn down mid-flight ("terminate called without an active exception", exit 134:
    # seen twice here in ~25 full runs). Then tear down once every rank is done.
    del model, optimizer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
