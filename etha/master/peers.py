"""Who has connected to the rendezvous master: the peers of its store's port, and their ranks.

An unmodified ``init_process_group(init_method="env://")`` writes nothing rank-specific to the
store when it joins (torch 2.13's TCPStore client leaves no key on connect, and NCCL exchanges
its id lazily), but every rank opens a TCP connection to ``MASTER_ADDR:MASTER_PORT``. So the
master looks at the connections it accepted (they are sockets of this very process):

- a peer on this host (``etha run-local``, tests) is traced to its process through
  ``/proc/net/tcp`` and ``/proc/<pid>/fd``, and its rank read from that process's ``RANK``;
- a peer on another host (a worker pod) is reported by address; the operator, which knows each
  worker pod's IP, turns addresses into ranks.

A restart in place (docs/recovery.md) moves the rendezvous to a later generation's store, which
another process (a child of the master) serves on a port of its own: its connections are read
from that process's fds and the TCP tables. :class:`PeerTracker` follows the current generation
and starts over at each: who joined is always who joined the current one.

Linux only (``/proc``); elsewhere the master reports no peers and says so once in its log.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from etha import constants as env_names
from etha.master.status import MasterStatus

logger = logging.getLogger("etha.master")

_PROC = Path("/proc")


def _tcp_sockets(skip: set[str] | None = None) -> Iterator[tuple[str, socket.socket]]:
    """(inode, a dup of it) for every TCP socket this process holds, closed once the caller is
    done with it; inodes in ``skip`` are passed over. Fds that close meanwhile are left out."""
    fd_dir = _PROC / "self" / "fd"
    for entry in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / entry)
            if not target.startswith("socket:") or (skip is not None and target in skip):
                continue
            dup = os.dup(int(entry))  # the fd may close under us; a dup is ours to close
        except (OSError, ValueError):
            continue
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
                yield target, sock
        finally:
            sock.close()


def accepted_peers(port: int, looked_at: set[str] | None = None) -> set[tuple[str, int]]:
    """(address, port) of every TCP connection this process holds whose local port is ``port``:
    the clients of a server listening there. IPv4-mapped IPv6 addresses are given as IPv4.

    ``looked_at`` (socket inodes) makes repeated calls cheap: sockets in it are skipped, and every
    TCP socket looked at is added, so a call returns only connections new since the last one."""
    peers: set[tuple[str, int]] = set()
    for target, sock in _tcp_sockets(looked_at):
        if looked_at is not None:
            looked_at.add(target)
        try:
            if sock.getsockname()[1] != port:
                continue
            host, peer_port = sock.getpeername()[:2]  # the listening socket has none: OSError
        except OSError:
            continue
        peers.add((_unmap(host), peer_port))
    return peers


#: The state of an established connection in /proc/net/tcp (hex, as the kernel prints it).
_ESTABLISHED = "01"


def served_peers(port: int, pid: int | None, looked_at: set[str] | None = None) -> set[tuple[str, int]]:
    """:func:`accepted_peers` for a server that another process of this host runs on ``port``
    (a later generation's store, see :mod:`etha.master.store`): the (address, port) of every
    established connection it accepted there, from process ``pid``'s fds and this network
    namespace's TCP tables (``pid`` None: whichever process listens on ``port``).

    ``looked_at`` as for :func:`accepted_peers` (``socket:[inode]`` strings). Raises OSError when
    ``pid``'s fds cannot be listed (gone, or another user's)."""
    wanted: set[str] | None = None
    if pid is not None:
        fresh = _socket_inodes(pid) - (looked_at or set())
        if looked_at is not None:
            looked_at |= fresh
        if not fresh:
            return set()
        wanted = {target[8:-1] for target in fresh}
    peers: set[tuple[str, int]] = set()
    for local, remote, state, inode in _tcp_entries():
        if state != _ESTABLISHED or _hex_port(local) != port:
            continue
        if wanted is not None and inode not in wanted:
            continue
        if wanted is None and looked_at is not None:
            if f"socket:[{inode}]" in looked_at:
                continue
            looked_at.add(f"socket:[{inode}]")
        peers.add((hex_address(remote), _hex_port(remote)))
    return peers


def _socket_inodes(pid: int) -> set[str]:
    """The ``socket:[inode]`` targets of process ``pid``'s fds (TCP or not). Raises OSError."""
    fd_dir = _PROC / str(pid) / "fd"
    out: set[str] = set()
    for entry in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / entry)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            out.add(target)
    return out


def _tcp_entries() -> Iterator[tuple[str, str, str, str]]:
    """(local, remote, state, inode) of every TCP socket of this network namespace, as
    ``/proc/net/tcp`` and ``tcp6`` print them."""
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) >= 10:
                yield cols[1], cols[2], cols[3], cols[9]


def store_connections(port: int, pid: int | None = None) -> int:
    """How many clients are connected now to the store on ``port``, not counting this process's
    own clients of it (the master's store holds one to itself; the master reads a later
    generation's store as a client). The store is this process's, or process ``pid``'s (a later
    generation's store process, which holds one to itself too; 0 if its fds cannot be listed)."""
    accepted: set[tuple[str, int]] = set()
    own_clients: set[tuple[str, int]] = set()
    for _, sock in _tcp_sockets():
        try:
            local, peer = sock.getsockname()[:2], sock.getpeername()[:2]
        except OSError:
            continue  # a listening socket has no peer
        if local[1] == port and pid is None:
            accepted.add((_unmap(peer[0]), peer[1]))
        elif peer[1] == port:
            own_clients.add((_unmap(local[0]), local[1]))
    if pid is not None:  # (the store process's own client of itself does not count either)
        try:
            inodes = {target[8:-1] for target in _socket_inodes(pid)}
        except OSError:
            return 0
        for local, remote, state, inode in _tcp_entries():
            if inode not in inodes or state != _ESTABLISHED:
                continue
            if _hex_port(local) == port:
                accepted.add((hex_address(remote), _hex_port(remote)))
            elif _hex_port(remote) == port:
                own_clients.add((hex_address(local), _hex_port(local)))
    return len(accepted - own_clients)


def _unmap(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def local_owners(peers: set[tuple[str, int]], server_port: int) -> dict[tuple[str, int], int]:
    """The pid that owns the client end of each peer connection that lives on this host.

    Peers on other hosts (and processes this user may not inspect) are left out."""
    inodes = _client_inodes(peers, server_port)
    if not inodes:
        return {}
    owners: dict[str, int] = {}
    wanted = set(inodes.values())
    for pid_dir in _PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            entries = os.listdir(pid_dir / "fd")
        except OSError:
            continue  # another user's process, or gone
        for entry in entries:
            try:
                target = os.readlink(pid_dir / "fd" / entry)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in wanted:
                owners.setdefault(target[8:-1], int(pid_dir.name))
        if len(owners) == len(wanted):
            break
    return {peer: owners[inode] for peer, inode in inodes.items() if inode in owners}


def _client_inodes(peers: set[tuple[str, int]], server_port: int) -> dict[tuple[str, int], str]:
    """Socket inode of the client end of each peer connection, from this network namespace's
    TCP tables (a connection from another host has no client end here)."""
    found: dict[tuple[str, int], str] = {}
    for local, remote, _state, inode in _tcp_entries():
        if _hex_port(remote) != server_port:
            continue
        peer = (hex_address(local), _hex_port(local))
        if peer in peers:
            found[peer] = inode
    return found


def finished_local_ranks(path: Path) -> dict[int, int]:
    """Rank -> pid of ``etha run-local``'s workers whose process exited 0: its file has a
    ``pid rank exited 0`` line for each (a finished rank joined, however briefly it was connected:
    the last rank of a quick env:// job can be gone before the master looks at its connection)."""
    out: dict[int, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2:] == ["exited", "0"] and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[1])] = int(parts[0])
    return out


def _hex_port(field_: str) -> int:
    return int(field_.rsplit(":", 1)[1], 16)


def hex_address(field_: str) -> str:
    """'0100007F:1F90' -> '127.0.0.1' (the kernel prints each 32-bit word in host byte order)."""
    raw = field_.rsplit(":", 1)[0]
    words = [struct.pack("=I", int(raw[i : i + 8], 16)) for i in range(0, len(raw), 8)]
    packed = b"".join(words)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return _unmap(socket.inet_ntop(socket.AF_INET6, packed))


def rank_of_process(pid: int) -> int | None:
    """The worker index in process ``pid``'s environment: ``ETHA_RANK`` (the pod's), else ``RANK``.

    ``ETHA_RANK`` first: in a process torchrun started, ``RANK`` is the global rank
    (``replicas x procsPerWorker`` of them), while the master counts worker pods."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    env = dict(item.split(b"=", 1) for item in raw.split(b"\x00") if b"=" in item)
    for name in (env_names.ENV_RANK_ETHA, env_names.ENV_RANK):
        value = env.get(name.encode())
        if value is not None and value.isdigit():
            return int(value)
    return None


@dataclass
class PeerTracker:
    """What the master has seen connect to the current rendezvous generation's store (a rank that
    joined and left still joined). When the generation changes (a restart in place: the
    ``generation`` callable says so), the tracker starts over for the new one, on its store's
    port: ``joined``, ``addresses``, ``missing()`` and ``completed_after`` are always the tracked
    generation's (:attr:`tracked`), and :meth:`status` catches up before it reports. A process
    that still connects to an earlier generation's store counts for nothing. ``refresh()`` is
    cheap once peers are known. Not thread-safe: the master holds one lock around every call."""

    #: Generation 0's store port (the master's own store).
    port: int
    world_size: int | None
    started: float = field(default_factory=time.monotonic)
    #: rank -> where it came from ("127.0.0.1 pid 4242", or the host a from_env() client named)
    joined: dict[int, str] = field(default_factory=dict)
    #: address -> seconds after the generation began it was first seen, for peers no rank could
    #: be read for
    addresses: dict[str, float] = field(default_factory=dict)
    #: seconds after the generation began at which its last rank joined (None until every rank has)
    completed_after: float | None = None
    #: socket inodes already looked at: each look sees only connections new since the last one
    _looked_at: set[str] = field(default_factory=set)
    _available: bool = True
    #: connections the last refresh() saw for the first time (traced to processes: the costly part)
    new_connections: int = 0
    #: ``etha run-local``'s file of its workers' pids and ranks (--local-ranks-file), if any
    local_ranks_file: Path | None = None
    #: The generation now: (generation, its store's port, (rank, exit code) of its exits), from
    #: the agent channel (--agent-port); None without one.
    generation: Callable[[], tuple[int, int | None, tuple[tuple[int, int], ...]]] | None = None
    #: The pid of the process that serves a later generation's store on a port (the master's
    #: :class:`~etha.master.store.StoreKeeper`), None if not known: then whichever process
    #: listens on that port is looked at.
    store_pid: Callable[[int], int | None] | None = None
    #: The generation the joins are for, and the port its store listens on.
    tracked: int = 0
    store_port: int = field(init=False)
    #: When the tracked generation began (time.monotonic()), as the tracker saw it: the
    #: master's start for generation 0, the first look that found it current for a later one.
    generation_started: float = field(init=False)

    def __post_init__(self) -> None:
        self.store_port = self.port
        self.generation_started = self.started

    def follow(self) -> bool:
        """Catches up with the current generation; True if it changed (and the tracker started
        over for it: nobody has joined it yet)."""
        return self._follow(self.generation()) if self.generation is not None else False

    def _follow(self, now: tuple[int, int | None, tuple[tuple[int, int], ...]]) -> bool:
        generation, port, _ = now
        if generation == self.tracked:
            return False
        self.tracked, self.store_port = generation, port if port is not None else self.port
        self.generation_started = time.monotonic()
        self.joined, self.addresses, self.completed_after = {}, {}, None
        self._looked_at, self._available, self.new_connections = set(), True, 0
        return True

    def refresh(self) -> list[int]:
        """Look at the tracked generation's connections now; returns the ranks that joined it
        since the last look."""
        self.new_connections = 0
        new = self._finished_locally()
        if not self._available:
            return new
        server: int | None = None  # the process serving a later generation's store
        try:
            if self.store_port == self.port:
                peers = accepted_peers(self.port, self._looked_at)
            else:
                server = self.store_pid(self.store_port) if self.store_pid is not None else None
                peers = served_peers(self.store_port, server, self._looked_at)
        except OSError as exc:
            self._available = False
            logger.warning("cannot list the store's connections (%s); peers are not reported", exc)
            return []
        if not peers:
            return new
        self.new_connections = len(peers)
        owners = local_owners(peers, self.store_port)
        for peer in sorted(peers):
            pid = owners.get(peer)
            if pid is not None and pid in (os.getpid(), server):
                continue  # the master's own client connections, and the store's own to itself
            rank = rank_of_process(pid) if pid is not None else None
            if rank is not None and self._valid(rank):
                if rank not in self.joined:
                    self.joined[rank] = f"{peer[0]} pid {pid}"
                    new.append(rank)
            elif self.local_ranks_file is not None:
                pass  # run-local: a rank gone before it was looked at is named when it finishes
            elif peer[0] not in self.addresses:
                logger.debug("peer %s:%d: owner %s, rank %s", peer[0], peer[1], pid, rank)
                self.addresses[peer[0]] = round(time.monotonic() - self.generation_started, 3)
        self._note_complete()
        return new

    def _finished_locally(self) -> list[int]:
        """Ranks of run-local's workers that exited 0 and were not traced before (a worker that
        finished counts for every generation after, as a pod that Succeeded does)."""
        if self.local_ranks_file is None or not self.missing():
            return []
        done = finished_local_ranks(self.local_ranks_file)
        return [r for r in sorted(done) if self.record(r, f"127.0.0.1 pid {done[r]}, which exited 0")]

    def record(self, rank: int, origin: str) -> bool:
        """A rank that registered itself (``etha.kvstore.from_env()``) in the tracked
        generation's store; True if it is new."""
        if rank in self.joined or not self._valid(rank):
            return False
        self.joined[rank] = origin
        self._note_complete()
        return True

    def _note_complete(self) -> None:
        if (
            self.completed_after is None
            and self.world_size is not None
            and len(self.joined) >= self.world_size
        ):
            self.completed_after = round(time.monotonic() - self.generation_started, 3)

    def _valid(self, rank: int) -> bool:
        return self.world_size is None or 0 <= rank < self.world_size

    def missing(self) -> list[int]:
        if self.world_size is None:
            return []
        return [r for r in range(self.world_size) if r not in self.joined]

    def report(self, job: str) -> dict[str, object]:
        """The master's status document (``GET /status``)."""
        return self.status().document(job)

    def status(self) -> MasterStatus:
        """What the master knows now, as the status document's schema has it: the joins are the
        current generation's (the tracker catches up first), the one the document names."""
        uptime = round(time.monotonic() - self.started, 3)
        now = self.generation() if self.generation is not None else (0, None, ())
        self._follow(now)
        generation, port, exits = now
        return MasterStatus(
            self.world_size,
            uptime,
            frozenset(self.joined),
            frozenset(self.addresses),
            generation,
            port,
            exits,
        )
