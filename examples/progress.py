"""A DDP loop that reports its progress every step: ``etha.progress.report(step, total, loss=...)``.

``kubectl get tj`` shows PROGRESS and ETA, ``status.progress`` the loss; ``etha run-local`` prints a
progress line. To see stall detection, ``HANG_RANK=1 HANG_AT=40`` makes rank 1 stop at step 40
(it sleeps inside the step, as a rank stuck in I/O or a collective would): the others wait in the
next all-reduce, and after ``spec.progress.stallTimeoutSeconds`` the job is Stalled naming rank 1.
``SLOW_RANK=2`` makes rank 2 a straggler (it takes ``SLOW_SECONDS`` longer per step).
"""

import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import etha.progress


def main() -> None:
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    steps = int(os.environ.get("STEPS", "200"))
    step_seconds = float(os.environ.get("STEP_SECONDS", "0.05"))
    hang_rank, hang_at = int(os.environ.get("HANG_RANK", "-1")), int(os.environ.get("HANG_AT", "-1"))
    slow_rank, slow = int(os.environ.get("SLOW_RANK", "-1")), float(os.environ.get("SLOW_SECONDS", "0.1"))
    torch.manual_seed(1234 + rank)
    x = torch.randn(64, 1)
    y = 3 * x - 2
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(1, steps + 1):
        if rank == hang_rank and step == hang_at:
            print(f"rank {rank}: hanging at step {step}", flush=True)
            time.sleep(3600)
        time.sleep(step_seconds + (slow if rank == slow_rank else 0.0))
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # DDP's all-reduce: every rank waits for the slowest
        optimizer.step()
        etha.progress.report(step, total_steps=steps, loss=loss.item())
    etha.progress.reporter().flush()
    print(f"rank {rank}: done, loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
