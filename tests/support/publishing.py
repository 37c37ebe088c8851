"""Threads that publish task ids through one wqd.Publisher as an application
that must not lose a task does: an id whose publish raised PublishError is
published again with the same id until confirmed (the broker faults tests)."""

from __future__ import annotations

import collections
import threading

from tests.support.daemon import task_body
from tests.support.waiting import wait_for
from wqd import PublishError
from wqd.publishing import BrokerUnreachable

# Publishes of one id before it is confirmed: each ends within the
# publisher's timeout, and the faults of the tests last seconds.
ATTEMPTS = 40
IDS_PER_THREAD = 10_000  # a bound: stop() comes long before


class RepublishingThreads:
    """``count`` threads publishing ids ``"<thread>-<i>"`` (task_body bodies)
    to ``queue`` until stop(); counts what was confirmed and what raised."""

    def __init__(self, publisher, queue: str, count: int = 8):
        self.publisher, self.queue = publisher, queue
        self.confirmed: list[str] = []
        self.raised = collections.Counter()  # PublishError kind -> calls
        self.sent_unconfirmed: set[str] = set()  # ids that raised after a send: they may be queued twice
        self.unexpected: list[str] = []
        self._since_mark = collections.Counter()  # thread -> ids confirmed since mark()
        self._marked = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)]

    def start(self) -> RepublishingThreads:
        for thread in self._threads:
            thread.start()
        return self

    def mark(self) -> None:
        """From now on, count each thread's confirmed ids (confirmed_since_mark)."""
        self._marked.set()

    def confirmed_since_mark(self) -> int:
        """The fewest ids a thread got confirmed since mark() (0 while one has none)."""
        counts = self._since_mark
        return min(counts.values()) if len(counts) == len(self._threads) else 0

    def stop(self, timeout: float = 60) -> None:
        """Let each thread finish its current id; fail if one does not."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self._threads), "a publishing thread did not stop"

    def describe(self) -> str:
        return (f"{len(self.confirmed)} ids confirmed; PublishError: {dict(self.raised)}; "
                f"{len(self.sent_unconfirmed)} ids published again after a send; unexpected: {self.unexpected}")

    def _run(self, number: int) -> None:
        for i in range(IDS_PER_THREAD):
            if self._stop.is_set():
                return
            message_id = f"{number}-{i}"
            try:
                if not self._publish_until_confirmed(message_id):
                    self.unexpected.append(f"{message_id} not confirmed in {ATTEMPTS} publishes")
                    return
            except Exception as exc:  # anything else fails the test that reads ``unexpected``
                self.unexpected.append(f"{message_id}: {exc!r}")
                return
            if self._marked.is_set():
                self._since_mark[number] += 1

    def _publish_until_confirmed(self, message_id: str) -> bool:
        for _ in range(ATTEMPTS):
            try:
                self.confirmed.append(self.publisher.publish(self.queue, task_body(message_id),
                                                             message_id=message_id))
                return True
            except BrokerUnreachable:  # nothing was sent
                self.raised["BrokerUnreachable"] += 1
            except PublishError as exc:
                self.raised[type(exc).__name__] += 1
                self.sent_unconfirmed.add(message_id)
        return False


def assert_each_id_ran_once(wqd, publishing: RepublishingThreads, queue_stats) -> None:
    """Every confirmed id ran exactly once on ``wqd``'s pool (its copies
    published again included), and nothing else ran. ``queue_stats()``: the
    queue's stats (BrokerNode.queue_stats) from a live node; every copy must be
    settled before the runs are counted."""
    assert not publishing.unexpected, publishing.describe()
    confirmed = set(publishing.confirmed)
    assert len(confirmed) == len(publishing.confirmed), "an id was confirmed twice"
    wait_for(lambda: set(wqd.ended_ids()) >= confirmed, 120,
             message=lambda: f"ended: {len(set(wqd.ended_ids()) & confirmed)} of {len(confirmed)}\n{wqd.logs()}")

    def settled() -> bool:
        stats = queue_stats()
        return stats is not None and stats["messages_ready"] == stats["messages_unacknowledged"] == 0

    wait_for(settled, 60, interval=0.5, message=lambda: f"every copy settled: {queue_stats()}")
    runs = collections.Counter(entry["id"] for entry in wqd.records("start"))
    duplicates = wqd.metric("wqd_tasks_total", pool="default", outcome="duplicate")
    print(f"{publishing.describe()}; {duplicates:g} copies acked as duplicates without running")
    twice = {i for i, n in runs.items() if n != 1}
    assert not twice, (f"ids run more than once (published again after a send: "
                       f"{sorted(publishing.sent_unconfirmed)}): {_runs_of(wqd, twice)}; the logs on them: "
                       f"{_log_lines_of(wqd, twice)}")
    assert set(runs) == confirmed


def _runs_of(wqd, ids: set) -> list:
    """Each start and end of ``ids``: when, where, whether redelivered."""
    return [(entry["event"], entry["id"], round(entry["t"], 3), entry["worker"], entry["redelivered"])
            for entry in wqd.records() if entry["id"] in ids]


def _log_lines_of(wqd, ids: set) -> list:
    text = wqd.stderr_path.read_text() if wqd.stderr_path.exists() else ""
    return [line for line in text.splitlines() if any(i in line for i in ids)]
