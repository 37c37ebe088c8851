"""Attempts that ended with their worker (a crash, a SIGKILL, a time_limit),
counted so that a message that kills every worker it reaches is dead-lettered
after ``max_retries + 1`` attempts instead of taking its pool down forever.

Quorum queues count these attempts themselves (``x-delivery-count``). Classic
queues do not, so the master counts them: when it reaps a worker whose record
shows a running task, it counts one lost attempt of that message (its key) in
its ledger and sends the new count to every worker. A worker keeps the counts
it was forked with and those updates; for a redelivery it asks the master,
which answers after reaping, so a redelivery that overtakes the news of its
worker's death is still counted.

The wire format: a query is a worker report (reporting.py) ``QUERY`` with the
key; the master's counts go down a pipe per worker, one JSON ``[key, count]``
per line. A retried copy carries its next attempt number in ATTEMPT_HEADER and,
in LOST_HEADER, the master's count it already folded into that number.
"""

import collections
import hashlib
import json
import os
import threading

ATTEMPT_HEADER = "x-wqd-attempt"  # set on retried copies: the attempt they will be
LOST_HEADER = "x-wqd-lost"  # worker deaths already counted in ATTEMPT_HEADER
DELIVERY_COUNT_HEADER = "x-delivery-count"  # quorum queues: deliveries before this one
QUERY = "lost?"  # a worker's report, with ``key``: how many attempts of it died with a worker?
# Messages whose lost attempts the master remembers (the oldest are forgotten).
LEDGER_CAP = 10_000
# How long the master may hold an answer while another worker still shows the
# message busy (it is below the worker's own wait, QUERY_TIMEOUT).
QUERY_HOLD = 0.5
QUERY_RECHECK = 0.05  # how soon the master's loop looks again at held queries
QUERY_TIMEOUT = 2.0  # how long a redelivery waits for the master's answer


class WorkerLost(Exception):
    """An attempt that ended with its worker, not with the handler's return or raise."""


def message_key(body: bytes) -> str:
    """Identify a message without a message_id (for counting lost attempts)."""
    return "sha1:" + hashlib.sha1(body).hexdigest()


def retry_headers(headers: dict, attempt: int, lost_total: int) -> dict:
    """The headers of the copy retried after failed attempt ``attempt``."""
    updated = dict(headers or {})
    updated[ATTEMPT_HEADER] = attempt + 1
    updated[LOST_HEADER] = lost_total
    return updated


def encode_count(key: str, count: int) -> bytes:
    return json.dumps([key, count]).encode() + b"\n"


def decode_count(line: bytes):
    """(key, count) from one line of the master's pipe."""
    key, count = json.loads(line)
    return key, count


def send_count(fd: int, key: str, count: int) -> None:
    """Non-blocking: a worker too wedged to read misses the update."""
    try:
        os.write(fd, encode_count(key, count))
    except (BlockingIOError, BrokenPipeError):
        pass


class MasterLedger:
    """The master's side: message key -> attempts lost with their worker, and
    the workers' queries waiting for an answer. An LRU: counting a message makes
    it the newest; past ``cap`` messages the oldest is forgotten.

    Workers are the master's handles, each with ``command_fd`` (the pipe to the
    worker) and ``message_key`` (the key of the task it runs, or None).
    """

    def __init__(self, cap: int = LEDGER_CAP):
        self.cap = cap
        self._counts = collections.OrderedDict()
        self._queries = []  # (worker, key, monotonic time asked), answered after reaping

    def counts(self) -> dict:
        """A copy of every count: what a newly forked worker starts from."""
        return dict(self._counts)

    def count_lost(self, key: str, workers) -> None:
        """A worker died during this message: count it and tell every worker, so
        the next delivery knows its attempt number (and a poison message its end)."""
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        self._counts.move_to_end(key)
        if len(self._counts) > self.cap:
            self._counts.popitem(last=False)
        for worker in workers:
            send_count(worker.command_fd, key, count)

    def query(self, worker, key: str, now: float) -> None:
        """A worker asks about a redelivery; it is answered by answer_queries()."""
        self._queries.append((worker, key, now))

    @property
    def queries_waiting(self) -> bool:
        return bool(self._queries)

    def answer_queries(self, workers, now: float) -> None:
        """Call after reaping, with the live workers. While another worker still
        shows the key busy, wait (briefly) for it to be reaped: the kernel
        closes a killed worker's socket, and the broker redelivers, before its
        parent can reap it."""
        workers = list(workers)
        held = []
        for worker, key, asked in self._queries:
            if worker not in workers:
                continue  # it died meanwhile: nobody to answer
            dying = any(other is not worker and other.message_key == key for other in workers)
            if dying and now - asked < QUERY_HOLD:
                held.append((worker, key, asked))
            else:
                send_count(worker.command_fd, key, self._counts.get(key, 0))
        self._queries = held


class WorkerCounts:
    """A worker's side: the master's counts, kept current by a thread that
    reads the master's pipe, and the attempt number they give a delivery."""

    def __init__(self, fd: int, known: dict, reporter, while_waiting):
        """``known``: the master's counts at the fork (this object keeps it);
        ``reporter`` sends the queries; ``while_waiting``: a context manager
        entered while waiting for the master (the connection keeper)."""
        self._counts = known
        self._answered = set()
        self._changed = threading.Condition()
        self._reporter = reporter
        self._while_waiting = while_waiting
        threading.Thread(target=self._follow, args=(fd,), name="master-link", daemon=True).start()

    def _follow(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                key, count = decode_count(line)
                with self._changed:
                    self._counts[key] = count
                    self._answered.add(key)
                    self._changed.notify_all()

    def attempt(self, headers: dict, key: str, redelivered: bool):
        """(attempt, lost, lost_total) of a delivery: its attempt number (1 on the
        first), the attempts lost with a worker since the copy was published,
        and all of them (what a retried copy records in LOST_HEADER)."""
        if DELIVERY_COUNT_HEADER in headers:
            lost_total = lost = int(headers[DELIVERY_COUNT_HEADER])
        else:
            lost_total = self._ask(key) if redelivered else self._counts.get(key, 0)
            lost = max(0, lost_total - int(headers.get(LOST_HEADER, 0)))
        return int(headers.get(ATTEMPT_HEADER, 1)) + lost, lost, lost_total

    def _ask(self, key: str) -> int:
        """Ask the master (which answers after reaping every dead worker), so a
        redelivery that races the master's news of a death is still counted."""
        with self._while_waiting, self._changed:
            self._answered.discard(key)
            if self._reporter.send(QUERY, key=key):
                self._changed.wait_for(lambda: key in self._answered, QUERY_TIMEOUT)
            self._answered.discard(key)
            return self._counts.get(key, 0)
