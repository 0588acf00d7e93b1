"""What run-local drops from a process it is stopping (etha.local_procs.StopNoise)."""

from __future__ import annotations

import pytest

from etha.local_procs import StopNoise, Stopped

# torchrun's agent on SIGTERM, as measured (torch 2.13), paths shortened; a user's line kept.
AGENT = """\
W1207 14:25:23.953000 8503 torch/distributed/elastic/agent/server/api.py:753] Received 15 death signal, shutting down workers
W1207 14:25:23.954000 8503 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 8771 closing signal SIGTERM
[rank 1] checkpoint saved
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
           ^^^^^^^^^^^^^
torch.distributed.elastic.multiprocessing.api.SignalException: Process 8503 got signal: 15
after the traceback"""

CHAINED = """\
[rank 2] Traceback (most recent call last):
[rank 3] still printing
[rank 2]   File "x.py", line 1, in <module>
[rank 2] KeyError: 'a'
[rank 2]
[rank 2] During handling of the above exception, another exception occurred:
[rank 2]
[rank 2] Traceback (most recent call last):
[rank 2]   File "x.py", line 3, in <module>
[rank 2] RuntimeError: Connection closed by peer
[rank 2] done"""

# torch's log tailer when the agent's SIGTERM lands while it waits for the tailers (seen in CI,
# torch 2.13): every line of the logged traceback carries torch's log header.
H = "E1207 23:20:07.338000 9813 torch/distributed/elastic/multiprocessing/tail_log.py:154] "
TAILER = f"""\
{H}error in log tailer for default0. SignalException
{H}Traceback (most recent call last):
{H}  File "torch/distributed/elastic/agent/server/api.py", line 745, in run
{H}    result = self._invoke_run(role)
{H}             ^^^^^^^^^^^^^^^^^^^^^^
{H}torch.distributed.elastic.multiprocessing.api.SignalException: Process 9813 got signal: 15
{H}
{H}During handling of the above exception, another exception occurred:
{H}
{H}Traceback (most recent call last):
{H}  File "torch/distributed/elastic/multiprocessing/tail_log.py", line 152, in stop
{H}torch.distributed.elastic.multiprocessing.api.SignalException: Process 9813 got signal: 15
[rank 0] last words
{H}a message of its own"""


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (AGENT, ["[rank 1] checkpoint saved", "after the traceback"]),
        (CHAINED, ["[rank 3] still printing", "[rank 2] done"]),
        (TAILER, ["[rank 0] last words", f"{H}a message of its own"]),
    ],
    ids=["torchrun-agent", "chained-per-rank", "torch-logged-traceback"],
)
def test_stop_noise_drops_tracebacks_and_torch_shutdown_notices(text: str, kept: list[str]) -> None:
    noise = StopNoise()
    assert [line for line in text.splitlines() if not noise.drops(line)] == kept


@pytest.mark.parametrize(
    ("signum", "code", "name"),
    [(15, 143, "SIGTERM"), (1, 129, "SIGHUP"), (2, 130, "SIGINT"), (3, 131, "SIGQUIT")],
)
def test_stopped_exits_128_plus_the_signal(signum: int, code: int, name: str) -> None:
    assert Stopped(signum).exit_code == code and str(Stopped(signum)) == name
