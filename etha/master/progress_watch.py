"""The master's progress reader: every :data:`READ_INTERVAL` seconds one ``get`` of the index and
one ``multi_get`` of every reporting rank's record (see :mod:`etha.progress.wire`), fed to a
:class:`~etha.master.progress.ProgressBook`; the ``progress`` section of ``GET /status`` and the
``etha_master_progress_*`` metrics are read from it.

The store read is the current rendezvous generation's: ``source()`` returns (generation, host,
port); a new generation resets the book (its processes start over) and the reader connects to its
store. Without generations it is the master's own store, generation 0.

The reader's client connection comes from the master's own process, which the join accounting
(:class:`etha.master.peers.PeerTracker`) never counts as a rank.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from etha.master.progress import ProgressBook
from etha.progress.wire import INDEX_KEY, BadProgress, Record, parse_index, rank_key

logger = logging.getLogger("etha.master")

#: Seconds between two reads of the ranks' records.
READ_INTERVAL = 1.0
#: Seconds a read may take before the reader reconnects.
READ_TIMEOUT = 5.0


class ProgressWatch:
    """Reads the ranks' progress from the store in a daemon thread (see the module docstring)."""

    def __init__(
        self,
        source: Callable[[], tuple[int, str, int]],
        stall_timeout: float | None = None,
        interval: float = READ_INTERVAL,
    ) -> None:
        self.source = source
        self.interval = interval
        self.book = ProgressBook(stall_timeout=stall_timeout)
        self.lock = threading.Lock()
        #: CPU seconds the reads took, and how many there were (for /metrics and the bench)
        self.cpu_seconds = 0.0
        self.reads = 0
        self._client: Any = None
        self._where: tuple[int, str, int] | None = None
        self._bad: set[int] = set()
        self._stalled: str | None = None
        self._stragglers: set[int] = set()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="progress", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            began = time.thread_time()
            try:
                self.read_once()
            except Exception as exc:  # the store gone (a generation switch): reconnect next time
                logger.debug("progress: read failed: %s", exc)
                self._client = None
            self.cpu_seconds += time.thread_time() - began
            self.reads += 1

    def read_once(self) -> None:
        where = self.source()
        if where != self._where or self._client is None:
            if self._where is not None and where[0] != self._where[0]:
                with self.lock:
                    self.book.reset(where[0])
            self._client = _client(where[1], where[2])
            self._where = where
        client = self._client
        if not client.check([INDEX_KEY]):
            return
        ranks = parse_index(client.get(INDEX_KEY))
        if not ranks:
            return
        values = client.multi_get([rank_key(r) for r in ranks])
        records: list[Record] = []
        for rank, data in zip(ranks, values, strict=True):
            try:
                record = Record.decode(bytes(data))
                if record.rank != rank:
                    raise BadProgress(f"rank {rank}'s key holds rank {record.rank}'s record")
            except BadProgress as exc:
                if rank not in self._bad:
                    self._bad.add(rank)
                    logger.warning("progress: ignoring rank %d's record: %s", rank, exc)
                continue
            records.append(record)
        now = time.monotonic()
        with self.lock:
            self.book.ingest(records, now)
            _, message = self.book.stall(now)
            stragglers = {r for r, _ in self.book.stragglers()}
        if message != self._stalled:
            if message:
                logger.warning("training stalled: %s", message)
            else:
                logger.info("training advances again")
            self._stalled = message
        for rank in sorted(stragglers - self._stragglers):
            logger.warning("rank %d is a straggler: it reaches most steps last", rank)
        self._stragglers = stragglers

    def document(self) -> dict[str, Any] | None:
        with self.lock:
            return self.book.document(time.monotonic(), time.time())

    def metrics(self) -> Iterator[Any]:
        """Prometheus metric families (prometheus_client is installed: the caller imported it)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        doc = self.document()
        reads = CounterMetricFamily(
            "etha_master_progress_reads", "Reads of the ranks' progress records from the store."
        )
        reads.add_metric([], self.reads)
        yield reads
        cpu = CounterMetricFamily(
            "etha_master_progress_read_cpu_seconds", "CPU seconds the progress reads took."
        )
        cpu.add_metric([], self.cpu_seconds)
        yield cpu
        if doc is None:
            return

        def gauge(name: str, text: str, value: float | None) -> Iterator[GaugeMetricFamily]:
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)

        yield from gauge("etha_master_progress_step", "The job's step (rank 0's report).", doc["step"])
        yield from gauge("etha_master_progress_total_steps", "The job's total steps.", doc["totalSteps"])
        yield from gauge("etha_master_progress_steps_per_second", "The job's rate.", doc["stepsPerSecond"])
        yield from gauge("etha_master_progress_eta_seconds", "Seconds to the total.", doc["etaSeconds"])
        yield from gauge(
            "etha_master_progress_seconds_since_advance",
            "Seconds since any rank's step last grew.",
            doc["secondsSinceAdvance"],
        )
        yield from gauge(
            "etha_master_progress_stall_timeout_seconds",
            "The stall timeout in force (configured or derived).",
            doc["stallTimeoutSeconds"],
        )
        yield from gauge("etha_master_progress_stalled", "1 while training is stalled.", int(doc["stalled"]))
        yield from gauge(
            "etha_master_progress_reporting_ranks", "Ranks that reported.", doc["reportingRanks"]
        )
        yield from gauge("etha_master_progress_min_step", "The lowest step of any rank.", doc["minStep"])
        yield from gauge("etha_master_progress_stragglers", "Ranks named stragglers.", len(doc["stragglers"]))
        metric = GaugeMetricFamily(
            "etha_master_progress_metric", "The job's reported metrics (rank 0's).", labels=["name"]
        )
        for name, value in sorted(doc["metrics"].items()):
            metric.add_metric([name], value)
        yield metric


def _client(host: str, port: int) -> Any:
    import torch.distributed

    store: Any = torch.distributed.TCPStore  # type: ignore[attr-defined]
    return store(
        "127.0.0.1" if host in ("", "0.0.0.0") else host,
        port,
        is_master=False,
        timeout=datetime.timedelta(seconds=READ_TIMEOUT),
        wait_for_workers=False,
    )
