"""The consumer's one entry point to "has this message been here before?".

A delivery is assessed once (``assess``): its attempt number, the attempts of
its lineage that died with their worker (lost_attempts.py), and whether it
is a duplicate of a message already finished here (deduplication.py). A
settled task is told once (``settled``), and a task about to be acked is
recorded as finished first (``finishing``, called by the router just
before the ack, so that the fact always precedes a redelivery of it).

Who asks the master: a redelivery (the broker says it was delivered before),
and a first delivery whose publisher flagged it as possibly published before
(CHECK_DUPLICATE_HEADER: a republish after PublishError, the outbox relay
after a crash between the broker's confirm and its delete). Every other
first delivery costs no question.
"""

import dataclasses

from wqd.redelivery import deduplication, lost_attempts
from wqd.redelivery.headers import CHECK_DUPLICATE_HEADER
from wqd.redelivery.lost_attempts import message_key


@dataclasses.dataclass
class Assessment:
    key: str  # message_id, or a hash of the body: the message across its deliveries
    attempt: int  # 1 .. max_retries + 2 (past the last: lost with its worker once too often)
    lost: int  # attempts of its lineage that died with their worker
    duplicate: bool  # finished here already: ack it without running


class WorkerAccounts:
    """A worker's side of redelivery accounting, for one pool."""

    def __init__(self, context, reporter, while_waiting):
        """``context``: the WorkerContext; ``while_waiting``: entered while a
        question waits for the master (the connection keeper)."""
        pool = context.pool
        self._max_attempts = pool.max_retries + 1
        self._quorum = pool.queue_type == "quorum"
        self._reporter = reporter
        self._counts = lost_attempts.WorkerCounts(context.command_fd, context.lost_attempts, reporter,
                                                  while_waiting=while_waiting)
        self._recorder = (deduplication.Recorder(pool.queue, context.finished_ring, context.record)
                          if context.finished_ring is not None else None)

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    def assess(self, redelivered: bool, properties, body: bytes) -> Assessment:
        key = message_key(properties, body)
        headers = properties.headers
        probe = None
        if self._recorder is not None and (
                redelivered or (headers.__class__ is dict and CHECK_DUPLICATE_HEADER in headers)):
            probe = self._recorder.probe(properties)
        attempt, lost, duplicate = self._counts.attempt(headers, key, redelivered, self._max_attempts,
                                                        delivery_count=self._quorum, probe=probe)
        return Assessment(key, attempt, lost, duplicate)

    def finishing(self, properties) -> None:
        """Just before the ack of a task that finished here (its handler
        returned, or its failure's copy was confirmed)."""
        if self._recorder is not None:
            self._recorder.finished(properties)

    def settled(self, key: str, lost: int, parked: bool) -> None:
        """A task was settled: a parked one (no copy could be made) counts as
        a lost attempt; a lineage that had lost attempts ends here."""
        if parked:
            self._reporter.send(lost_attempts.RETURNED, key=key)
        elif lost:
            self._reporter.send(lost_attempts.CLEAR, key=key)
