"""Recovery in place (docs/recovery.md) with real processes: the master's agent channel and its
generations' stores, agents restarting their children, fencing, and the agent's signals."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from etha.master.client import MasterClientError
from tests.helpers import TEST_ENV, wait_until
from tests.integration.master.recovery import (
    AGENT,
    SLEEPER,
    TOKEN,
    Agent,
    AgentMaster,
    alive,
    kill_quietly,
    wait_records,
)

pytest.importorskip("torch")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[AgentMaster]:
    m = AgentMaster(tmp_path, world_size=3)
    assert m.proc.poll() is None, m.log()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def sleeper(tmp_path: Path) -> Path:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    (tmp_path / "out").mkdir()
    return script


def _raw(
    port: int, method: str, path: str, body: object = None, token: str | None = None
) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_killed_child_restarts_every_rank_in_place(
    tmp_path: Path, master: AgentMaster, sleeper: Path
) -> None:
    out = tmp_path / "out"
    agents = [Agent(tmp_path, master, r, [sys.executable, str(sleeper), str(out)]) for r in range(3)]
    try:
        first = wait_records(out, range(3), 0)
        assert {port for _, port, _ in first.values()} == {master.port}
        os.kill(first[1][0], signal.SIGKILL)
        seen: dict[str, object] = {}

        def exit_reported() -> bool:
            seen.update(master.client.events(after=-1))
            return bool(seen["exits"])

        wait_until(exit_reported, 10, "rank 1's exit to reach the master")
        assert seen["exits"] == [{"rank": 1, "generation": 0, "exit_code": 137, "signal": 9}]
        assert set(seen["started"]) == {"0", "1", "2"}  # type: ignore[arg-type]
        answer = master.client.next_generation(1, "rank 1 exited 137")
        assert answer["generation"] == 1 and answer["port"] not in (master.port,)
        again = wait_records(out, range(3), 1)
        for rank in range(3):
            pid, port, count = again[rank]
            assert (port, count) == (answer["port"], 1)
            assert pid != first[rank][0]
            assert not alive(first[rank][0])
        assert master.client.next_generation(1)["port"] == answer["port"]  # asked again: no change
        status = json.loads(_status(master))
        assert (status["generation"], status["generationPort"]) == (1, answer["port"])
        master.client.stop("the job failed")
        codes = [a.wait(15) for a in agents]
        assert codes == [143, 143, 143], [a.log() for a in agents]
        for rank in range(3):
            assert not alive(again[rank][0])
        assert "generation 1: started the child" in agents[0].log()
    finally:
        for a in agents:
            a.stop()


def _status(master: AgentMaster) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", master.status_port, timeout=5)
    try:
        conn.request("GET", "/status")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_decisions_need_the_token_and_follow_the_current_generation(master: AgentMaster) -> None:
    port = master.agent_port
    body = {"generation": 1, "reason": "no"}
    assert _raw(port, "POST", "/v1/generation", body)[0] == 401
    assert _raw(port, "POST", "/v1/generation", body, token="wrong")[0] == 401
    assert _raw(port, "POST", "/v1/stop", {"reason": "x"}, token=TOKEN[:-1])[0] == 401
    assert _raw(port, "GET", "/v1/events?after=-1")[0] == 401
    assert master.client.generation() == {
        "generation": 0,
        "port": master.port,
        "state": "running",
        "reason": "",
    }
    with pytest.raises(
        MasterClientError, match=r"answered 409: generation 2 is neither the current one \(0\)"
    ) as err:
        master.client.next_generation(2, "a skip")
    assert err.value.status == 409
    assert master.client.generation()["generation"] == 0
    # An exit for a generation that is not the current one is stale: recorded, ignored.
    code, doc = _raw(port, "POST", "/v1/exit", {"rank": 0, "generation": 5, "exit_code": 1, "signal": None})
    assert (code, doc) == (200, {"accepted": False})
    assert master.client.events()["exits"] == []
    code, doc = _raw(port, "POST", "/v1/exit", {"rank": 0, "generation": 0, "exit_code": 300})
    assert code == 400 and "exit_code (300)" in str(doc["error"])
    assert _raw(port, "POST", "/v1/exit", {"rank": 0, "generation": 0, "x": "y" * 5000})[0] == 413
    assert _raw(port, "DELETE", "/v1/generation")[0] == 405
    # A long poll answers at once on news, and after its timeout otherwise.
    began = time.monotonic()
    assert master.client.generation(after=0, timeout=0.5)["generation"] == 0
    assert 0.4 < time.monotonic() - began < 5


def test_a_master_with_an_agent_port_and_no_token_refuses_to_start(tmp_path: Path) -> None:
    m = AgentMaster(tmp_path, token=None)
    try:
        assert m.proc.wait(30) == 2
        assert "ETHA_MASTER_TOKEN" in m.log()
    finally:
        m.stop()


FENCED_CLIENT = textwrap.dedent(
    """
    import os, sys, time
    from datetime import timedelta
    import torch.distributed as dist
    port, ready, go, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    result = []
    try:
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=3))
        store.set("joined-" + sys.argv[5], "1")
        result.append("connected")
    except Exception as exc:
        result.append("connect failed: " + type(exc).__name__)
        store = None
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.02)
    if store is not None:
        try:
            store.add("intruder", 1)  # a request with an answer (a set is not answered)
            result.append("wrote on its old connection")
        except Exception as exc:
            result.append("old connection failed: " + type(exc).__name__)
    try:
        again = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=2))
        again.set("intruder", "1")
        result.append("wrote on a new connection")
    except Exception as exc:
        result.append("new connection failed: " + type(exc).__name__)
    open(out, "w").write("\\n".join(result))
    """
)


def _keys(port: int, *keys: str) -> dict[str, bool]:
    """Which of ``keys`` the store on ``port`` holds (the master writes keys raw: no namespace)."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5))
    return {k: bool(store.check([k])) for k in keys}


def test_fencing_a_late_or_resumed_process_never_reaches_a_later_generations_store(
    tmp_path: Path, master: AgentMaster
) -> None:
    gen0 = master.port
    gen1 = master.client.next_generation(1, "fencing test")["port"]
    assert gen1 != gen0

    def client(port: int, name: str) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
        ready, go, out = tmp_path / f"{name}.ready", tmp_path / f"{name}.go", tmp_path / f"{name}.out"
        proc = subprocess.Popen(
            [sys.executable, "-c", FENCED_CLIENT, str(port), str(ready), str(go), str(out), name],
            env=TEST_ENV,
        )
        return proc, ready, go, out

    # A process that joined generation 1, frozen while the master moves on to generation 2.
    frozen, ready, go, out = client(gen1, "frozen")
    # A process started late with generation 0's settings, after the switch.
    late, late_ready, late_go, late_out = client(gen0, "late")
    try:
        wait_until(lambda: ready.exists() and late_ready.exists(), 30, "the clients to connect")
        os.kill(frozen.pid, signal.SIGSTOP)
        gen2 = master.client.next_generation(2, "fencing test, again")["port"]
        assert gen2 not in (gen0, gen1)
        go.touch()
        late_go.touch()
        os.kill(frozen.pid, signal.SIGCONT)
        assert frozen.wait(30) == 0 and late.wait(30) == 0
        assert out.read_text().splitlines() == [
            "connected",
            "old connection failed: DistNetworkError",
            "new connection failed: DistNetworkError",
        ], out.read_text()
        # The late one lands in generation 0's store only (the master's own, still there).
        assert late_out.read_text().splitlines()[0] == "connected"
        assert _keys(gen0, "joined-late", "intruder") == {"joined-late": True, "intruder": True}
        assert _keys(gen2, "joined-late", "joined-frozen", "intruder") == {
            "joined-late": False,
            "joined-frozen": False,
            "intruder": False,
        }
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gen1), timeout=2).close()
    finally:
        for proc in (frozen, late):
            kill_quietly(proc.pid)
            proc.wait(10)


@pytest.mark.parametrize("preload", ["", "json"], ids=["exec", "warm-start"])
def test_an_agent_stopped_by_sigterm_stops_its_child_and_exits_143(
    tmp_path: Path, master: AgentMaster, sleeper: Path, preload: str
) -> None:
    out = tmp_path / "out"
    a = Agent(tmp_path, master, 0, [sys.executable, str(sleeper), str(out)], ETHA_AGENT_PRELOAD=preload)
    try:
        pid = wait_records(out, range(1), 0)[0][0]
        a.proc.send_signal(signal.SIGTERM)
        assert a.wait(15) == 143, a.log()
        assert not alive(pid)
        assert ("warm start" in a.log()) == bool(preload), a.log()
    finally:
        a.stop()


@pytest.mark.parametrize("preload", ["", "json"], ids=["exec", "warm-start"])
def test_a_child_never_outlives_its_agent_even_a_sigkilled_one(
    tmp_path: Path, master: AgentMaster, sleeper: Path, preload: str
) -> None:
    out = tmp_path / "out"
    a = Agent(tmp_path, master, 0, [sys.executable, str(sleeper), str(out)], ETHA_AGENT_PRELOAD=preload)
    pid = 0
    try:
        pid = wait_records(out, range(1), 0)[0][0]
        a.proc.kill()
        assert a.wait(10) == -9
        wait_until(lambda: not alive(pid), 10, "the child to die with its agent")
    finally:
        a.stop()
        if pid:
            kill_quietly(pid)


@pytest.mark.parametrize(
    ("body", "code", "shown"),
    [
        ("raise ValueError('boom')", 1, "ValueError: boom"),
        ("import sys; sys.exit(7)", 7, None),
        ("import sys; sys.exit('bye')", 1, "bye"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137, None),
    ],
    ids=["exception", "exit-7", "exit-message", "killed"],
)
def test_a_warm_started_child_exits_as_python_would(
    tmp_path: Path, master: AgentMaster, body: str, code: int, shown: str | None
) -> None:
    script = tmp_path / "child.py"
    script.write_text(f"{body}\n")
    a = Agent(tmp_path, master, 0, [sys.executable, str(script)], ETHA_AGENT_PRELOAD="json")
    try:
        wait_until(lambda: bool(master.client.events()["exits"]), 20, "the child's exit to be reported")
        exits = master.client.events()["exits"]
        assert [e["exit_code"] for e in exits] == [code], a.log()
        master.client.stop("test over")
        assert a.wait(10) == code, a.log()
        log = a.log()
        assert "warm start" in log
        if shown is not None:
            assert shown in log
        if code == 1 and shown == "ValueError: boom":
            assert 'File "' + str(script) + '", line 1' in log and "agent.py" not in log.split("Traceback")[1]
    finally:
        a.stop()


def test_a_failed_childs_agent_exits_with_its_code_once_the_master_is_lost(tmp_path: Path) -> None:
    master = AgentMaster(tmp_path)
    script = tmp_path / "child.py"
    script.write_text("import sys; sys.exit(5)\n")
    a = Agent(tmp_path, master, 0, [sys.executable, str(script)], ETHA_AGENT_MASTER_LOST="1")
    try:
        wait_until(lambda: bool(master.client.events()["exits"]), 20, "the child's exit to be reported")
        master.proc.kill()
        master.proc.wait(10)
        assert a.wait(15) == 5, a.log()
        assert "was unreachable for more than ETHA_AGENT_MASTER_LOST (1s)" in a.log()
    finally:
        a.stop()
        master.stop()


def test_an_agent_that_cannot_reach_the_master_names_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**TEST_ENV, "MASTER_ADDR": "127.0.0.1", "ETHA_AGENT_PORT": str(port), "ETHA_RANK": "0"}
    env["ETHA_AGENT_CONNECT_TIMEOUT"] = "1"
    done = subprocess.run([sys.executable, AGENT, "true"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 1
    assert (
        f"127.0.0.1:{port} was not reachable within ETHA_AGENT_CONNECT_TIMEOUT (1s)" in done.stderr.decode()
    )
    bad = subprocess.run([sys.executable, AGENT, "true"], env=TEST_ENV, capture_output=True, timeout=30)
    assert bad.returncode == 2 and b"MASTER_ADDR is not set" in bad.stderr


TORCH_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    out = sys.argv[1]
    gen = os.environ["ETHA_GENERATION"]
    with open(os.path.join(out, f"{gen}.tmp"), "w") as f:
        f.write(repr(time.time()))
    os.replace(os.path.join(out, f"{gen}.tmp"), os.path.join(out, gen))
    time.sleep(3600)
    """
)


def _restart_seconds(tmp_path: Path, master: AgentMaster, preload: str, generation: int) -> float:
    out = tmp_path / f"out-{preload or 'exec'}"
    out.mkdir()
    script = tmp_path / "torch_child.py"
    script.write_text(TORCH_CHILD)
    a = Agent(tmp_path, master, 0, [sys.executable, str(script), str(out)], ETHA_AGENT_PRELOAD=preload)
    try:
        wait_until(lambda: (out / str(generation - 1)).exists(), 60, "the first child to import torch")
        began = time.time()
        master.client.next_generation(generation, "measure")
        wait_until(lambda: (out / str(generation)).exists(), 60, "the next child to import torch")
        return float((out / str(generation)).read_text()) - began
    finally:
        a.stop()


def test_a_warm_start_restarts_a_torch_child_faster(tmp_path: Path, master: AgentMaster) -> None:
    """The restart of a child that imports torch: from the decision to the new child past its
    import, exec'd and forked from the warm interpreter (printed: run with -s to see it)."""
    cold = _restart_seconds(tmp_path, master, "", 1)
    warm = _restart_seconds(tmp_path, master, "torch", 2)
    print(f"\nrestart of a torch child: exec {cold:.2f}s, warm start {warm:.2f}s")
    assert warm < cold, (warm, cold)
