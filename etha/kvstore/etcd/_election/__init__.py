"""The election behind ``EtcdStore.wait_for_keys``: the processes waiting for the same keys elect
one leader that watches them, and the others follow its answer.

Its one entry point is what this package exports, which the store calls: :func:`prepare` (have
a lease for a lead key ready, at the store's first write) and :func:`wait` (``wait_for_keys``,
answered through a round). :mod:`~etha.kvstore.etcd._election.lead` is the protocol,
:mod:`~etha.kvstore.etcd._election.round` one process's part in a round, and
:mod:`~etha.kvstore.etcd._election.lease` the leases of the lead keys. The store's reads never
go through it.
"""

from __future__ import annotations

from etha.kvstore.etcd._election.lead import LEAD_TTL, Question, prepare, wait

__all__ = ["LEAD_TTL", "Question", "prepare", "wait"]
