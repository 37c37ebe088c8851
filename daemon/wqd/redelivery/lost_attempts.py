"""Attempts that ended with their worker (a crash, a SIGKILL, a time_limit),
counted so that a message that kills every worker it reaches is dead-lettered
after ``max_retries + 1`` attempts instead of taking its pool down forever.

Quorum queues count these attempts themselves (``x-delivery-count``). Classic
queues do not, so the master counts them: when it reaps a worker whose record
shows a running task, it counts one lost attempt of that message (its key) in
its ledger and sends the new count to every worker. A redelivery asks the
master, which answers after reaping, so a redelivery that overtakes the news
of its worker's death is still counted.

A count follows one delivery lineage: one message in the broker and its
redeliveries. A first delivery (not flagged redelivered) starts a lineage, so
it has lost nothing, whatever the ledger says of its key; when a task whose
lineage lost attempts is settled (acked, retried, dead-lettered), the worker
reports ``CLEAR`` and the master forgets the key. A retried copy is a new
lineage: its ATTEMPT_HEADER already counts the deaths of the old one.

Headers come from whoever published the message: a value wqd reads that is not
a plain non-negative integer (bool, float, bytes, nested, negative) counts as
absent, and an attempt number is clamped to the pool's last attempt.

The same query carries duplicate suppression's question (deduplication.py):
a redelivery whose message_id the master holds as finished here is acked
without running.

The wire format: a query is a worker report (reporting.py) ``QUERY`` with the
key (and, for duplicate suppression, ``finished``: what names the delivery);
the master's counts go down a pipe per worker, one JSON ``[key, count]`` per
line, and its answers to queries as ``[key, count, finished]``.
"""

import collections
import json
import os
import threading

from wqd.redelivery.headers import ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, header_number

QUERY = "lost?"  # a worker's report, with ``key``: how many attempts of it died with a worker?
CLEAR = "settled"  # a worker's report, with ``key``: a lineage that lost attempts ended
# A worker's report, with ``key``: an attempt ended with its message parked
# (no copy of it could be published, refused_copies.py): counted as lost.
RETURNED = "returned"
# Messages whose lost attempts the master remembers (the oldest are forgotten).
LEDGER_CAP = 10_000
# How long the master may hold an answer while another worker still shows the
# message busy (it is below the worker's own wait, QUERY_TIMEOUT): two copies
# of one message delivered at once (a publisher's republish after a
# PublishError, the broker's redelivery of an attempt whose worker still
# runs it) wait for the first run's end, so that the second is acked as a
# duplicate when the first finishes within the hold. Only such a delivery waits.
QUERY_HOLD = 5.0
QUERY_RECHECK = 0.05  # how soon the master's loop looks again at held queries
QUERY_TIMEOUT = 8.0  # how long a question waits for the master's answer


class WorkerLost(Exception):
    """An attempt that ended with its worker, not with the handler's return or raise."""


def message_key(properties, body: bytes) -> str:
    """Identify a message across its deliveries: its message_id, or a hash of
    the body when it has none (or one pika could not decode as text).

    The hash is Python's own (SipHash, 64 bits): a few times cheaper than a
    SHA-1 on a worker's hot path. Its secret differs from one interpreter to
    the next, but the master and every worker it forks share it, and the
    keys never leave that family: the counts live in the master and die
    with it."""
    message_id = properties.message_id
    if message_id and message_id.__class__ is str:
        return message_id
    return "body:%016x" % (hash(body) & 0xFFFF_FFFF_FFFF_FFFF)





def encode_count(key: str, count: int) -> bytes:
    return json.dumps([key, count]).encode() + b"\n"


def encode_answer(key: str, count: int, finished: bool) -> bytes:
    """The answer to a query: only an answer ends the worker's wait."""
    return json.dumps([key, count, finished]).encode() + b"\n"


def decode_count(line: bytes):
    """(key, count, finished) from one line of the master's pipe; finished is
    None on a count that answers no query."""
    key, count, *answer = json.loads(line)
    return key, count, (bool(answer[0]) if answer else None)


def send_count(fd: int, key: str, count: int, finished=None) -> None:
    """Non-blocking: a worker too wedged to read misses the update (or the
    answer, and runs the delivery after QUERY_TIMEOUT)."""
    try:
        os.write(fd, encode_count(key, count) if finished is None else encode_answer(key, count, finished))
    except (BlockingIOError, BrokenPipeError):
        pass


class MasterCounts:
    """The master's side: message key -> attempts lost with their worker, and
    the workers' queries waiting for an answer. An LRU: counting a message makes
    it the newest; past ``cap`` messages the oldest is forgotten.

    Workers are the master's handles, each with ``pid``, ``command_fd`` (the
    pipe to the worker) and ``message_key`` (the key of the task it runs, or None).
    """

    def __init__(self, cap: int = LEDGER_CAP, finished=None):
        """``finished(probe, busy_workers)``: whether a redelivery finished here
        (deduplication.FinishedLedger.finished), for queries that ask."""
        self.cap = cap
        self._counts = collections.OrderedDict()
        self._queries = []  # (worker, key, monotonic time asked, probe), answered after reaping
        self._finished = finished

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

    def clear(self, key: str, workers) -> None:
        """A lineage that lost attempts was settled: a later message with the
        same key starts from nothing."""
        if self._counts.pop(key, None) is not None:
            for worker in workers:
                send_count(worker.command_fd, key, 0)

    def query(self, worker, key: str, now: float, probe=None) -> None:
        """A worker asks about a redelivery (``probe``: whether it finished
        here, too); it is answered by answer_queries()."""
        self._queries.append((worker, key, now, probe))

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
        for worker, key, asked, probe in self._queries:
            if worker not in workers:
                continue  # it died meanwhile: nobody to answer
            busy = [other for other in workers if other is not worker and other.message_key == key]
            if busy and now - asked < QUERY_HOLD:
                held.append((worker, key, asked, probe))
            else:
                finished = probe is not None and self._finished is not None and self._finished(probe, busy)
                send_count(worker.command_fd, key, self._counts.get(key, 0), finished)
        self._queries = held


class WorkerCounts:
    """A worker's side: the master's counts, kept current by a thread that
    reads the master's pipe, and the attempt number they give a delivery."""

    def __init__(self, fd: int, known: dict, reporter, while_waiting):
        """``known``: the master's counts at the fork (this object keeps it);
        ``reporter`` sends the queries; ``while_waiting``: a context manager
        entered while waiting for the master (the connection keeper)."""
        self._counts = known
        self._answers = {}  # key -> finished, from the master's answer to a query
        self._changed = threading.Condition()
        self._reporter = reporter
        self._while_waiting = while_waiting
        threading.Thread(target=self._follow, args=(fd,), name="master-link", daemon=True).start()

    def _follow(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                key, count, finished = decode_count(line)
                with self._changed:
                    if count:
                        self._counts[key] = count
                    else:
                        self._counts.pop(key, None)
                    if finished is not None:
                        self._answers[key] = finished
                        self._changed.notify_all()

    def attempt(self, headers, key: str, redelivered: bool, max_attempts: int, delivery_count: bool, probe=None):
        """(attempt, lost, finished) of a delivery: its attempt number, from 1
        to ``max_attempts + 1`` (past the last: lost with its worker once too
        often), the attempts of its lineage lost with a worker, and whether
        the master holds it as finished here (asked only with a ``probe``,
        deduplication.Recorder.probe: on a redelivery, or a first delivery
        flagged as perhaps published before).
        ``delivery_count``: trust x-delivery-count (set by quorum queues)."""
        if not headers or not isinstance(headers, dict):
            if not redelivered:  # most deliveries: a first attempt, nothing lost, no header to parse
                return 1, 0, False
            headers = {}
        first = header_number(headers, ATTEMPT_HEADER) or 1
        finished = False
        if not redelivered:
            lost = 0  # a lineage's first delivery: nothing of it died yet
            if probe is not None:  # flagged as perhaps published before (accounting.py)
                finished = self._ask(key, probe)[1]
        elif delivery_count:
            # The broker counts deliveries that were not settled; the master
            # counts parkings too (refused_copies.py), which RabbitMQ 4.3 no
            # longer counts as a requeue. A worker's death is in both: the larger.
            lost = header_number(headers, DELIVERY_COUNT_HEADER) or 0
            if probe is not None:
                counted, finished = self._ask(key, probe)
            else:
                counted = self._counts.get(key, 0)
            lost = max(lost, counted)
        else:
            lost, finished = self._ask(key, probe)
        return min(min(first, max_attempts) + lost, max_attempts + 1), lost, finished

    def _ask(self, key: str, probe=None):
        """Ask the master (which answers after reaping every dead worker), so a
        redelivery that races the master's news of a death is still counted:
        (lost attempts, finished here). No answer in time: not finished."""
        fields = {"key": key} if probe is None else {"key": key, "finished": probe}
        with self._while_waiting, self._changed:
            self._answers.pop(key, None)
            if self._reporter.send(QUERY, **fields):
                self._changed.wait_for(lambda: key in self._answers, QUERY_TIMEOUT)
            return self._counts.get(key, 0), self._answers.pop(key, False)
