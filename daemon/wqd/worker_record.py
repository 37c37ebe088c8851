"""A worker's shared-memory record: the task it is running and its totals.

The master maps one record per worker before the fork. The worker's consumer
thread writes it at each task's start and end (a few microseconds, no system
call, no wake-up of the master); the master reads it when it needs to: at a
scrape, for a time limit, and after the worker died (its last task and its
final totals are still there). Pipe reports are left for rare events.

One writer per record; a sequence number (odd while a write is in progress)
lets the reader retry a torn read. A writer killed mid-write leaves it odd:
the reader then takes what is there, which is at most one task off.
"""

import bisect
import mmap
import struct
import time

from wqd.metrics import DURATION_BUCKETS, OUTCOMES

KEY_BYTES = 256  # an AMQP message_id is a shortstr: at most 255 bytes
_SEQUENCE = struct.Struct("=Q")
# busy_since (0.0 when idle), redelivered, duration sum, key length, then the
# outcome counts, the duration bucket counts (the last one is +Inf), the key.
_FIELDS = struct.Struct(f"=dQdH{len(OUTCOMES)}Q{len(DURATION_BUCKETS) + 1}Q{KEY_BYTES}s")
_READ_ATTEMPTS = 1000


class Snapshot:
    __slots__ = ("busy_since", "message_key", "outcomes", "redelivered", "duration_sum", "duration_buckets")

    def __init__(self, busy_since, message_key, outcomes, redelivered, duration_sum, duration_buckets):
        self.busy_since = busy_since      # monotonic time the running task started, or None
        self.message_key = message_key    # that task's message key, or None
        self.outcomes = outcomes          # outcome -> tasks finished with it
        self.redelivered = redelivered    # deliveries the broker flagged redelivered
        self.duration_sum = duration_sum  # seconds, over the tasks whose handler ran
        self.duration_buckets = duration_buckets  # per bucket (not cumulative), +Inf last


class WorkerRecord:
    def __init__(self):
        self._map = mmap.mmap(-1, _SEQUENCE.size + _FIELDS.size)  # anonymous and shared across fork
        self._sequence = 0
        self._busy_since = 0.0
        self._key = b""
        self._outcomes = [0] * len(OUTCOMES)
        self._redelivered = 0
        self._duration_sum = 0.0
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)

    # -- worker side (one thread) --

    def task_started(self, key: str) -> None:
        self._busy_since = time.monotonic()
        self._key = key.encode()[:KEY_BYTES]
        self._publish()

    def task_finished(self, outcome: str, duration=None) -> None:
        """``duration`` is None when the handler did not run (the outcome is wqd's)."""
        self._busy_since = 0.0
        self._outcomes[OUTCOMES.index(outcome)] += 1
        if duration is not None:
            self._duration_sum += duration
            self._buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self._publish()

    def redelivered(self) -> None:
        self._redelivered += 1
        self._publish()

    def _publish(self) -> None:
        self._sequence += 1
        _SEQUENCE.pack_into(self._map, 0, self._sequence)  # odd: a write is in progress
        _FIELDS.pack_into(self._map, _SEQUENCE.size, self._busy_since, self._redelivered, self._duration_sum,
                          len(self._key), *self._outcomes, *self._buckets, self._key)
        self._sequence += 1
        _SEQUENCE.pack_into(self._map, 0, self._sequence)

    # -- master side --

    def read(self) -> Snapshot:
        for _ in range(_READ_ATTEMPTS):
            (before,) = _SEQUENCE.unpack_from(self._map, 0)
            fields = _FIELDS.unpack_from(self._map, _SEQUENCE.size)
            (after,) = _SEQUENCE.unpack_from(self._map, 0)
            if before == after and before % 2 == 0:
                break
        busy_since, redelivered, duration_sum, key_length, *counts, key = fields
        outcomes = dict(zip(OUTCOMES, counts[:len(OUTCOMES)]))
        return Snapshot(busy_since or None, key[:key_length].decode(errors="replace") if busy_since else None,
                        outcomes, redelivered, duration_sum, counts[len(OUTCOMES):])

    def close(self) -> None:
        self._map.close()
