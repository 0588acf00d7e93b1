"""The master's status document (``GET /status``), its one schema: the master writes it
(:meth:`MasterStatus.document`), the operator and ``etha run-local`` read it
(:meth:`MasterStatus.parse`); and the words they share to describe a rendezvous.

Pure: no I/O, no clock; importing it needs neither torch nor kubernetes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: How many missing ranks a message describes one by one (the rest are given as ranges).
DETAILED_RANKS = 8


#: The most ranks (and peer addresses) a status document may name, and an address's length: the
#: CRD's largest job (10,000 workers) with room for several processes each.
MAX_RANKS = 100_000
MAX_ADDRESS = 64


def _short(value: object) -> str:
    """A bad value as a message repeats it: at most 60 characters of it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class BadStatus(ValueError):
    """The status document is not what ``python -m etha.master`` serves."""


@dataclass(frozen=True)
class MasterStatus:
    """``GET /status`` of the rendezvous master (see :mod:`etha.master`).

    ``joined`` and ``peers`` are the rendezvous of ``generation``: a restart in place starts a
    new generation on a store of its own, and the master counts its joins afresh. (Older
    masters kept generation 0's joins for their lifetime: a reader compares ``generation`` with
    the one it expects before it trusts them.)"""

    world_size: int | None
    uptime_seconds: float
    #: Ranks the master identified itself (a local process's RANK, or a from_env() registration)
    #: among those connected to the generation's store.
    joined: frozenset[int]
    #: Addresses of peers connected to the generation's store the master could not put a rank
    #: to (pods on other hosts).
    peers: frozenset[str]
    #: The rendezvous generation these joins are for (restarts in place before it; 0 from a
    #: master without an agent channel, or one older than it).
    generation: int = 0
    #: The port of the current generation's store (None: the master's own, or not known).
    generation_port: int | None = None
    #: (rank, exit code) of the current generation's processes that exited, in order.
    exits: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, doc: Any) -> MasterStatus:
        if not isinstance(doc, dict):
            raise BadStatus(f"expected a JSON object, got {type(doc).__name__}")
        world = doc.get("worldSize")
        uptime = doc.get("uptimeSeconds")
        joined = doc.get("joined")
        peers = doc.get("peers")
        if world is not None and (type(world) is not int or not 1 <= world <= MAX_RANKS):
            raise BadStatus(f"worldSize ({_short(world)}) must be an integer from 1 to {MAX_RANKS} or null")
        if not isinstance(uptime, int | float) or not 0 <= uptime < float("inf"):
            raise BadStatus(f"uptimeSeconds ({_short(uptime)}) must be a non-negative number")
        if (
            not isinstance(joined, list)
            or len(joined) > MAX_RANKS
            or not all(type(r) is int and 0 <= r < MAX_RANKS for r in joined)
        ):
            raise BadStatus(f"joined ({_short(joined)}) must be a list of at most {MAX_RANKS} ranks")
        if (
            not isinstance(peers, list)
            or len(peers) > MAX_RANKS
            or not all(isinstance(a, str) and len(a) <= MAX_ADDRESS for a in peers)
        ):
            raise BadStatus(f"peers ({_short(peers)}) must be a list of at most {MAX_RANKS} addresses")
        generation = doc.get("generation", 0)
        port = doc.get("generationPort")
        exits = doc.get("exits", [])
        if type(generation) is not int or not 0 <= generation < 2**31:
            raise BadStatus(f"generation ({_short(generation)}) must be a non-negative integer")
        if port is not None and (type(port) is not int or not 1 <= port <= 65535):
            raise BadStatus(f"generationPort ({_short(port)}) must be a port (1..65535) or null")
        if (
            not isinstance(exits, list)
            or len(exits) > MAX_RANKS
            or not all(
                isinstance(e, dict)
                and type(e.get("rank")) is int
                and 0 <= e["rank"] < MAX_RANKS
                and type(e.get("exitCode")) is int
                and 0 <= e["exitCode"] <= 255
                for e in exits
            )
        ):
            raise BadStatus(f"exits ({_short(exits)}) must be a list of {{rank, exitCode}} objects")
        return cls(
            world,
            float(uptime),
            frozenset(joined),
            frozenset(peers),
            generation,
            port,
            tuple((e["rank"], e["exitCode"]) for e in exits),
        )

    def document(self, job: str) -> dict[str, object]:
        """The JSON document the master serves for job ``job``: what :meth:`parse` reads, and the
        ranks still missing and whether none is, for people reading it."""
        world = self.world_size
        missing = [r for r in range(world) if r not in self.joined] if world is not None else []
        return {
            "job": job,
            "worldSize": world,
            "uptimeSeconds": self.uptime_seconds,
            "joined": sorted(self.joined),
            "missing": missing,
            "complete": world is not None and not missing,
            "peers": sorted(self.peers),
            "generation": self.generation,
            "generationPort": self.generation_port,
            "exits": [{"rank": rank, "exitCode": code} for rank, code in self.exits],
        }

    def joined_ranks(self, address_of_rank: Mapping[int, str | None]) -> set[int]:
        """Every rank that joined: those the master named, and those whose pod's address
        (``address_of_rank``) connected. An address shared by several ranks (hostNetwork pods on
        one node) names none of them."""
        owners: dict[str, list[int]] = {}
        for rank, address in address_of_rank.items():
            if address:
                owners.setdefault(address, []).append(rank)
        unique = {address: ranks[0] for address, ranks in owners.items() if len(ranks) == 1}
        return set(self.joined) | {rank for address, rank in unique.items() if address in self.peers}


def rank_ranges(ranks: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out: list[str] = []
    run: list[int] = []
    for rank in sorted(set(ranks)):
        if run and rank == run[-1] + 1:
            run.append(rank)
            continue
        if run:
            out.append(_span(run))
        run = [rank]
    if run:
        out.append(_span(run))
    return ", ".join(out)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def progress(joined: int, total: int, missing: Iterable[int]) -> str:
    """'3/4 joined, waiting for rank 3' (or '4/4 joined')."""
    waiting = rank_ranges(missing)
    if not waiting:
        return f"{joined}/{total} joined"
    word = "rank" if "," not in waiting and "-" not in waiting else "ranks"
    return f"{joined}/{total} joined, waiting for {word} {waiting}"


def timeout_message(
    missing: Iterable[int], total: int, timeout_seconds: float, describe: Callable[[int], str]
) -> str:
    """Why a rendezvous failed: how many ranks never joined within the timeout, each of the first
    few described by ``describe(rank)`` (its pod or process and its state), the rest as ranges."""
    ranks = sorted(set(missing))
    shown = ranks[:DETAILED_RANKS]
    details = "; ".join(f"rank {r} ({describe(r)})" for r in shown)
    rest = ranks[DETAILED_RANKS:]
    more = f"; and {len(rest)} more: ranks {rank_ranges(rest)}" if rest else ""
    noun = "rank" if total == 1 else "ranks"
    return (
        f"Rendezvous timed out: {len(ranks)} of {total} {noun} did not join within "
        f"spec.rendezvous.timeoutSeconds ({timeout_seconds:g}s): {details}{more}."
    )
