"""A restart in place through the agent, exec'd versus warm-started (docs/recovery.md).

One master with its agent channel, N agents (one per rank) each running a child that imports
torch, writes the time it got past the import and sleeps. Per repeat: the decider asks for the
next generation (the spare store warm beforehand); measured from that request to the last of the
N new children past its import. Once with ``ETHA_AGENT_PRELOAD=`` (every child exec'd: N torch
imports per restart) and once with the warm start (the children forked from an interpreter that
imported torch once per agent), each on a fresh master; medians of --repeat.

    .venv/bin/python bench/agent_restart.py [--ranks 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from etha.master.client import MasterClient  # noqa: E402

AGENT = REPO / "etha" / "agent" / "agent.py"
TOKEN = "bench-token"
CHILD = """\
import os, sys, time
import torch
out, gen, rank = sys.argv[1], os.environ["ETHA_GENERATION"], os.environ["ETHA_RANK"]
with open(os.path.join(out, f"{rank}.{gen}.tmp"), "w") as f:
    f.write(repr(time.time()))
os.replace(os.path.join(out, f"{rank}.{gen}.tmp"), os.path.join(out, f"{rank}.{gen}"))
time.sleep(3600)
"""


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(ranks: int, repeat: int, preload: str, tmp: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ETHA_MASTER_TOKEN": TOKEN, "TORCH_CPP_LOG_LEVEL": "ERROR"}
    tag = preload or "exec"
    port_file, agent_file, log = tmp / f"{tag}.port", tmp / f"{tag}.agent-port", tmp / f"{tag}.master.log"
    out = tmp / f"out-{tag}"
    out.mkdir()
    child = tmp / "child.py"
    child.write_text(CHILD)
    with log.open("wb") as master_log:
        master = subprocess.Popen(
            [sys.executable, "-m", "etha.master", "--host", "127.0.0.1", "--port", "0", "--port-file",
             str(port_file), "--agent-port", "0", "--agent-port-file", str(agent_file)],
            stdout=master_log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        agents: list[subprocess.Popen[bytes]] = []
        try:
            wait(agent_file.exists, 60, "the master")
            port, agent_port = int(port_file.read_text()), int(agent_file.read_text())
            client = MasterClient(f"http://127.0.0.1:{agent_port}", TOKEN)
            for rank in range(ranks):
                agent_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
                agent_env.update(ETHA_AGENT_PORT=str(agent_port), ETHA_RANK=str(rank))
                agent_env["ETHA_AGENT_PRELOAD"] = preload
                agents.append(
                    subprocess.Popen(
                        [sys.executable, str(AGENT), sys.executable, str(child), str(out)],
                        env=agent_env,
                        stderr=subprocess.DEVNULL,
                    )
                )
            times = []

            def started(g: int) -> bool:
                return all((out / f"{r}.{g}").exists() for r in range(ranks))

            def spare_up(g: int) -> bool:  # the master's store and g + 1 generation stores listened
                return log.read_text().count("store server listening") >= g + 2

            for generation in range(repeat + 1):
                wait(lambda g=generation: started(g), 300, "the ranks")
                if generation == repeat:
                    break
                wait(lambda g=generation: spare_up(g), 120, "the spare store")
                time.sleep(1.0)  # let the machine settle
                began = time.time()
                client.next_generation(generation + 1, "bench")
                wait(lambda g=generation: started(g + 1), 300, "the restart")
                last = max(float((out / f"{r}.{generation + 1}").read_text()) for r in range(ranks))
                times.append(last - began)
                print(f"  {tag}: generation {generation + 1}: {last - began:.2f}s", flush=True)
            return times
        finally:
            for a in agents:
                a.send_signal(signal.SIGTERM)
            for a in agents:
                try:
                    a.wait(15)
                except subprocess.TimeoutExpired:
                    a.kill()
            master.terminate()
            master.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="etha-agent-restart-") as tmp:
        cold = run(args.ranks, args.repeat, "", Path(tmp))
        warm = run(args.ranks, args.repeat, "torch", Path(tmp))
    print(
        f"restart in place of {args.ranks} ranks importing torch, decision -> every new child past "
        f"its import (median of {args.repeat}): exec'd {statistics.median(cold):.2f}s, "
        f"warm start {statistics.median(warm):.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
