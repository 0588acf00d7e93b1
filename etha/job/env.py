"""The environment every worker container gets: pure functions, shared by the operator and
``etha run-local``. No I/O, no clock; importing it needs neither torch nor kubernetes."""

from __future__ import annotations

from etha import constants as c


def worker_env(
    *,
    job_name: str,
    master_addr: str,
    port: int,
    world_size: int,
    rank: int,
    attempt: int = 0,
    etcd_endpoints: list[str] | None = None,
) -> dict[str, str]:
    """The contract's variables for one worker, in a stable order.

    With ``etcd_endpoints`` (backend etcd) there is no master pod: etha's store is etcd, and
    torch's env:// store is hosted by rank 0 (``master_addr`` is worker 0's name), so
    ``TORCHELASTIC_USE_AGENT_STORE`` is ``False``.
    """
    env = {
        c.ENV_MASTER_ADDR: master_addr,
        c.ENV_MASTER_PORT: str(port),
        c.ENV_WORLD_SIZE: str(world_size),
        c.ENV_RANK: str(rank),
        c.ENV_LOCAL_RANK: "0",
        c.ENV_TORCHELASTIC_USE_AGENT_STORE: "True" if etcd_endpoints is None else "False",
        c.ENV_TORCHELASTIC_RESTART_COUNT: str(attempt),
    }
    if etcd_endpoints is None:
        env.update({c.ENV_KVSTORE_HOST: master_addr, c.ENV_KVSTORE_PORT: str(port)})
    else:
        env.update({c.ENV_KVSTORE_BACKEND: "etcd", c.ENV_ETCD_ENDPOINTS: ",".join(etcd_endpoints)})
    env.update(
        {
            c.ENV_WORLD_SIZE_ETHA: str(world_size),
            c.ENV_RANK_ETHA: str(rank),
            c.ENV_JOB_NAME: job_name,
            c.ENV_ATTEMPT: str(attempt),
        }
    )
    return env
