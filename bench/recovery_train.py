"""The training loop bench/recovery.py runs in every worker: a small gloo DDP model that
checkpoints to a shared folder and resumes from it, and marks each moment the bench measures.

Each process appends one JSON line per moment to ``$ETHA_BENCH_DIR/events.jsonl`` (one small
``O_APPEND`` write each, so lines from many processes never interleave): ``start`` (the first line
of the script, before torch's import), ``imported``, ``connect`` (just before
``init_process_group``), ``init`` (the process group formed) and ``step`` (the first step done).
Every line carries the rank, the pid, ``ETHA_ATTEMPT`` and ``ETHA_GENERATION``. With
``ETHA_BENCH_STDOUT=1`` (on kind, where the pods share no folder) each line is also printed as
``ETHA_BENCH {json}`` for the bench to read from the pods' logs.
"""

from __future__ import annotations

import json
import os
import time

started = time.time()
FOLDER = os.environ["ETHA_BENCH_DIR"]
RANK = int(os.environ["RANK"])
STDOUT = os.environ.get("ETHA_BENCH_STDOUT") == "1"


def mark(event: str, when: float | None = None, **extra: object) -> None:
    line = {
        "event": event,
        "t": time.time() if when is None else when,
        "rank": RANK,
        "pid": os.getpid(),
        "attempt": int(os.environ.get("ETHA_ATTEMPT", "0")),
        "generation": int(os.environ.get("ETHA_GENERATION", "0")),
        **extra,
    }
    text = json.dumps(line)
    if STDOUT:
        print(f"ETHA_BENCH {text}", flush=True)
    fd = os.open(os.path.join(FOLDER, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


mark("start", started)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

mark("imported")
STEPS = int(os.environ.get("ETHA_BENCH_STEPS", "100000"))
STEP_SECONDS = float(os.environ.get("ETHA_BENCH_STEP_SECONDS", "0.1"))
CHECKPOINT = os.path.join(FOLDER, "checkpoint.pt")

mark("connect")
dist.init_process_group("gloo", init_method="env://")
mark("init")
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
if os.path.exists(CHECKPOINT):  # resume: every rank reads what rank 0 saved last
    state = torch.load(CHECKPOINT, weights_only=True)
    model.module.load_state_dict(state["model"])
    step = int(state["step"])
first = True
while step < STEPS:
    x = torch.randn(8, 16)
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    step += 1
    if first:
        mark("step", step=step)
        first = False
    if RANK == 0 and step % 10 == 0:
        tmp = CHECKPOINT + ".tmp"
        torch.save({"model": model.module.state_dict(), "step": step}, tmp)
        os.replace(tmp, CHECKPOINT)
    time.sleep(STEP_SECONDS)
dist.destroy_process_group()
