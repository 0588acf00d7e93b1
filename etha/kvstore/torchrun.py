"""torchrun's ``etha`` rendezvous backend: c10d through the job's master, and the master as the
processes' store too.

torch 2.13's ``c10d`` backend pointed at the master (``is_host=false``) keeps the agents'
rendezvous in the master, but the agent that becomes group rank 0 then starts a second TCPStore
on its own host and hands every process ``MASTER_ADDR``/``MASTER_PORT`` of that store, so the
processes' ``init_process_group("env://")`` goes to worker 0 (docs/torchrun.md). No flag changes
that. This backend is the same c10d rendezvous (torch's own handler, unchanged), except that what
it returns to the agent names the job's master as the processes' store: no agent hosts a store,
every process is a client of the master (``TORCHELASTIC_USE_AGENT_STORE=True``).

torchrun finds it through the ``torchrun.handlers`` entry point (pyproject.toml): it calls
:func:`handler` with no argument and registers what it returns under the name ``etha``, so the
worker image needs etha installed (``pip install 'etha[store]'``) for
``PET_RDZV_BACKEND=etha``. The operator sets it only when the job asks
(``spec.rendezvous.torchrunBackend: etha``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

#: The variable torch's dynamic rendezvous reads to stop rank 0's agent from starting a store of
#: its own for the processes.
_NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def handler() -> Callable[[Any], Any]:
    """The ``torchrun.handlers`` entry point: torchrun registers what it returns as ``etha``."""
    return create_handler


def create_handler(params: Any) -> Any:
    """A c10d rendezvous handler on ``params.endpoint`` (the job's master) whose rendezvous
    names that endpoint as the processes' store. The agent is always a client of the master
    (``is_host`` is forced off): the master pod hosts the store, never an agent."""
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousHandler,
        RendezvousInfo,
        RendezvousStoreInfo,
    )
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
        create_handler as dynamic_handler,
    )
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=29400)
    params.config["is_host"] = False
    backend, store = create_backend(params)
    # Without it, the group rank 0 agent would start a TCPStore for the processes (unused here).
    # It is read in this process only: the processes are told TORCHELASTIC_USE_AGENT_STORE by
    # use_agent_store below.
    os.environ[_NO_SHARED_STORE] = "1"
    inner = dynamic_handler(store, backend, params)

    class MasterStoreHandler(RendezvousHandler):
        """torch's c10d handler, with the master as the processes' store."""

        def get_backend(self) -> str:
            return "etha"

        @property
        def use_agent_store(self) -> bool:
            return True  # every process connects to the master as a client

        def next_rendezvous(self) -> Any:
            info = inner.next_rendezvous()
            return RendezvousInfo(info.store, info.rank, info.world_size, RendezvousStoreInfo(host, port))

        def is_closed(self) -> bool:
            return bool(inner.is_closed())

        def set_closed(self) -> None:
            inner.set_closed()

        def num_nodes_waiting(self) -> int:
            return int(inner.num_nodes_waiting())

        def get_run_id(self) -> str:
            return str(inner.get_run_id())

        def shutdown(self) -> bool:
            return bool(inner.shutdown())

    return MasterStoreHandler()
