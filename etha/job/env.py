"""The environment every worker container gets: pure functions, shared by the operator and
``etha run-local``. No I/O, no clock; importing it needs neither torch nor kubernetes."""

from __future__ import annotations

from etha import constants as c
from etha.job.constants import DEFAULT_RENDEZVOUS_TIMEOUT


def worker_env(
    *,
    job_name: str,
    master_addr: str,
    port: int,
    world_size: int,
    rank: int,
    attempt: int = 0,
    etcd_endpoints: list[str] | None = None,
    procs_per_worker: int = 1,
    rendezvous_timeout: int = DEFAULT_RENDEZVOUS_TIMEOUT,
    key_namespace: str | None = None,
    torchrun_backend: str = c.TORCHRUN_RDZV_BACKEND,
) -> dict[str, str]:
    """The contract's variables for one worker, in a stable order.

    ``world_size`` and ``rank`` are the pod's: the number of workers and this one's index. The
    ``PET_*`` variables make ``torchrun train.py``, with no flag, start ``procs_per_worker``
    processes that rendezvous (torchrun's ``c10d`` backend) through the store at
    ``master_addr:port``, as a client (``is_host=false``), with torchrun's own restarts off and its
    timeouts at ``rendezvous_timeout``; ``torchrun_backend`` ``etha`` makes the master the
    processes' store too (etha.kvstore.torchrun).

    With ``etcd_endpoints`` (backend etcd) there is no master pod: etha's store is etcd, and
    torch's env:// store is hosted by rank 0 (``master_addr`` is worker 0's name), so
    ``TORCHELASTIC_USE_AGENT_STORE`` is ``False`` and worker 0's torchrun hosts the c10d store.
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
    env.update(
        torchrun_env(
            job_name=job_name,
            endpoint=f"{master_addr}:{port}",
            nnodes=world_size,
            procs_per_worker=procs_per_worker,
            attempt=attempt,
            rendezvous_timeout=rendezvous_timeout,
            client_only=etcd_endpoints is None,
            backend=torchrun_backend,
        )
    )
    if etcd_endpoints is None:
        env.update({c.ENV_KVSTORE_HOST: master_addr, c.ENV_KVSTORE_PORT: str(port)})
    else:
        env.update({c.ENV_KVSTORE_BACKEND: "etcd", c.ENV_ETCD_ENDPOINTS: ",".join(etcd_endpoints)})
        if key_namespace:  # shared by the job's ranks, and by no one else (names.store_namespace)
            env[c.ENV_KVSTORE_NAMESPACE] = key_namespace
    env.update(
        {
            c.ENV_WORLD_SIZE_ETHA: str(world_size),
            c.ENV_RANK_ETHA: str(rank),
            c.ENV_JOB_NAME: job_name,
            c.ENV_ATTEMPT: str(attempt),
        }
    )
    return env


def torchrun_env(
    *,
    job_name: str,
    endpoint: str,
    nnodes: int,
    procs_per_worker: int,
    attempt: int,
    rendezvous_timeout: int,
    client_only: bool = True,
    backend: str = c.TORCHRUN_RDZV_BACKEND,
) -> dict[str, str]:
    """What torchrun reads instead of its flags (``PET_<FLAG>``), for one worker pod.

    ``client_only``: the agent never hosts the rendezvous store (``is_host=false``), even when
    the endpoint's name resolves to its own host (127.0.0.1 under run-local): the job's master
    does. Without it (backend etcd, no master pod) worker 0's agent hosts it. ``backend``:
    ``c10d``, or ``etha`` (c10d whose processes' store is the master too; etha.kvstore.torchrun).
    """
    conf = [f"join_timeout={rendezvous_timeout}", f"read_timeout={rendezvous_timeout}"]
    if client_only:
        conf.insert(0, "is_host=false")
    return {
        c.ENV_PET_NNODES: str(nnodes),
        c.ENV_PET_NPROC_PER_NODE: str(procs_per_worker),
        c.ENV_PET_RDZV_BACKEND: backend,
        c.ENV_PET_RDZV_ENDPOINT: endpoint,
        c.ENV_PET_RDZV_ID: rendezvous_id(job_name, attempt),
        c.ENV_PET_RDZV_CONF: ",".join(conf),
        c.ENV_PET_MAX_RESTARTS: "0",
    }


def rendezvous_id(job_name: str, attempt: int) -> str:
    """torchrun's rendezvous id: one per attempt of the job."""
    return f"{job_name}-{attempt}"
