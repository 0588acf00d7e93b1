"""A small DDP loop (CPU, gloo) that checkpoints every few steps and resumes: the shape of a job
that restarts in place (examples/inplace.yaml, docs/recovery.md).

Each rank saves the model and the step to ``--checkpoint-dir`` (its pod's own emptyDir: the pods
stay across an in-place restart, so does the folder) and, when a checkpoint is there, resumes
from it. With ``CRASH_RANK`` set, that rank's process kills itself (SIGKILL, as the OOM killer
would) at ``CRASH_STEP`` in generation 0 (``ETHA_GENERATION``, which the agent sets): the
operator restarts every rank's process in place, and the job goes on from the last checkpoint.
"""

import argparse
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    generation = int(os.environ.get("ETHA_GENERATION", os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    folder = Path(args.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{rank}.pt"

    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    step = 0
    if path.exists():
        state = torch.load(path)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"rank {rank}: generation {generation} resumes at step {step}", flush=True)
    torch.manual_seed(1234 + rank)
    x = torch.randn(256, 1)
    y = 3 * x - 2
    crash_rank = os.environ.get("CRASH_RANK")
    crash_step = int(os.environ.get("CRASH_STEP", "25"))
    while step < args.steps:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        step += 1
        if step % args.every == 0:
            tmp = path.with_suffix(".tmp")
            torch.save(
                {"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
            )
            tmp.replace(path)  # whole or not at all: a kill mid-save leaves the last one
        if crash_rank == str(rank) and generation == 0 and step == crash_step:
            print(f"rank {rank}: killing myself at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    print(f"rank {rank}: done at step {step} in generation {generation}, loss {loss.item():.4f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
