"""A worker's shared-memory record: the task it is running and its totals.

The master maps one record per worker before the fork. The worker's consumer
thread writes it at each task's start and end (a few microseconds, no system
call, no wake-up of the master); the master reads it when it needs to: at a
scrape, for a time limit, and after the worker died (its last task and its
final totals are still there). Pipe reports are left for rare events.

One writer per record, two copies of the fields and a generation number:
the writer fills the copy not in use, then publishes it by bumping the
generation (one aligned 8-byte store), so a writer stopped or killed
mid-write leaves the last published copy intact. The reader copies the
current one and checks that the generation has not moved meanwhile (when it
has, the writer may be overwriting that copy, and the reader reads again).
"""

import bisect
import mmap
import struct
import time

from wqd.metrics import DURATION_BUCKETS, OUTCOMES

KEY_BYTES = 256  # an AMQP message_id is a shortstr: at most 255 bytes
_GENERATION = struct.Struct("Q")  # native: one aligned 8-byte load or store
# busy_since (0.0 when idle), redelivered, duration sum, key length, then the
# outcome counts, the duration bucket counts (the last one is +Inf), the key.
_FIELDS = struct.Struct(f"=dQdQ{len(OUTCOMES)}Q{len(DURATION_BUCKETS) + 1}Q{KEY_BYTES}s")
# A reader retries only while the writer publishes again during its copy;
# past this many tries (never seen: writes are microseconds, tasks far apart) it takes the copy.
_READ_ATTEMPTS = 100_000


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
        self._map = mmap.mmap(-1, _GENERATION.size + 2 * _FIELDS.size)  # anonymous: shared across a fork
        self._generation = 0
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
        fields = _FIELDS.pack(self._busy_since, self._redelivered, self._duration_sum, len(self._key),
                              *self._outcomes, *self._buckets, self._key)
        generation = self._generation + 1
        start = _copy_offset(generation)
        self._map[start:start + _FIELDS.size] = fields
        _GENERATION.pack_into(self._map, 0, generation)
        self._generation = generation

    # -- master side --

    def read(self) -> Snapshot:
        for _ in range(_READ_ATTEMPTS):
            (generation,) = _GENERATION.unpack_from(self._map, 0)
            start = _copy_offset(generation)
            fields = self._map[start:start + _FIELDS.size]
            (after,) = _GENERATION.unpack_from(self._map, 0)
            if after == generation:
                break
        busy_since, redelivered, duration_sum, key_length, *counts, key = _FIELDS.unpack(fields)
        outcomes = dict(zip(OUTCOMES, counts[:len(OUTCOMES)]))
        return Snapshot(busy_since or None, key[:key_length].decode(errors="replace") if busy_since else None,
                        outcomes, redelivered, duration_sum, counts[len(OUTCOMES):])

    def close(self) -> None:
        self._map.close()


def _copy_offset(generation: int) -> int:
    return _GENERATION.size + (generation % 2) * _FIELDS.size
