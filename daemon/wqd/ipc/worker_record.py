"""A worker's shared-memory record: the task it is running and its totals.

The master maps one record per worker before the fork. The worker writes it
at each task's start and end (a few microseconds, no system
call, no wake-up of the master); the master reads it when it needs to: at a
scrape, for a time limit, and after the worker died (its last task and its
final totals are still there). Pipe reports are left for rare events.

One writer at a time (a worker's threads write under its connection's lock),
two copies of the fields and a generation number:
the writer fills the copy not in use, then publishes it by bumping the
generation (one aligned 8-byte store), so a writer stopped or killed
mid-write leaves the last published copy intact. The reader copies the
current one and checks that the generation has not moved meanwhile (when it
has, the writer may be overwriting that copy, and the reader reads again).

Beside the copies, one word the worker's main thread stamps at least once a
second whatever its other threads do (stamp_alive): the master watches it move
to tell a worker that stopped running from one that is busy (stalls.py). A
single aligned 8-byte store, like the generation, so it needs neither copy.
"""

import array
import bisect
import mmap
import struct
import time

from wqd.ipc.task_stats import DURATION_BUCKETS, Outcome

KEY_BYTES = 256  # an AMQP message_id is a shortstr: at most 255 bytes
_GENERATION = struct.Struct("Q")  # native: one aligned 8-byte load or store
_ALIVE = struct.Struct("Q")  # the same, for the alive stamp
# A copy: unsigned 64-bit numbers, then the message key's bytes. The numbers:
# busy since (monotonic ns; 0 when idle), settling since (the same, once a
# handler that ended near its time_limit left its task to be settled), key
# length, redelivered, copies refused (attempts parked), duration sum (ns),
# the outcome counts, the duration bucket counts (+Inf last).
_BUSY_SINCE, _SETTLING_SINCE, _KEY_LENGTH, _REDELIVERED, _COPIES_REFUSED, _DURATION_SUM, _FIRST_OUTCOME = range(7)
_FIRST_BUCKET = _FIRST_OUTCOME + len(Outcome)
_OUTCOME_INDEX = {outcome: _FIRST_OUTCOME + i for i, outcome in enumerate(Outcome)}
_NUMBERS = _FIRST_BUCKET + len(DURATION_BUCKETS) + 1
_NUMBERS_SIZE = 8 * _NUMBERS
_COPY_SIZE = _NUMBERS_SIZE + KEY_BYTES
# A reader retries only while the writer publishes again during its copy;
# past this many tries (never seen: writes are microseconds, tasks far apart) it takes the copy.
_READ_ATTEMPTS = 100_000
# Where the copy of an even and of an odd generation starts.
_COPY_OFFSETS = (_GENERATION.size, _GENERATION.size + _COPY_SIZE)
# The alive stamp, after the copies (8-byte aligned: a copy is whole 8-byte words).
_ALIVE_OFFSET = _GENERATION.size + 2 * _COPY_SIZE
# Seconds a worker has to ack, retry or dead-letter a task once its handler
# ended within time_limit, before the master kills it as it would a hung
# handler: a publish a broker alarm blocks ends at 30 s (amqp.BLOCKED_CONNECTION_TIMEOUT).
SETTLE_TIMEOUT = 60.0


class Snapshot:
    __slots__ = ("busy_since", "settling_since", "message_key", "outcomes", "redelivered", "copies_refused",
                 "duration_sum", "duration_buckets")

    def __init__(self, busy_since, settling_since, message_key, outcomes, redelivered, copies_refused,
                 duration_sum, duration_buckets):
        self.busy_since = busy_since      # monotonic time the running task started, or None
        self.settling_since = settling_since  # when its handler ended, if it said so (task_settling), or None
        self.message_key = message_key    # that task's message key, or None
        self.outcomes = outcomes          # Outcome -> tasks finished with it
        self.redelivered = redelivered    # deliveries the broker flagged redelivered
        self.copies_refused = copies_refused  # attempts parked: no copy of their message could be made
        self.duration_sum = duration_sum  # seconds, over the tasks whose handler ran
        self.duration_buckets = duration_buckets  # per bucket (not cumulative), +Inf last

    def past_time_limit(self, limit: float, now: float) -> bool:
        """Whether the running task outlived ``limit``: its handler did, or the
        settling after a handler that ended near the limit outlived SETTLE_TIMEOUT."""
        if self.busy_since is None:
            return False
        if self.settling_since is not None:
            return now - self.settling_since > SETTLE_TIMEOUT
        return now - self.busy_since > limit


class WorkerRecord:
    def __init__(self):
        self._map = mmap.mmap(-1, _ALIVE_OFFSET + _ALIVE.size)  # anonymous: shared across a fork
        self._generation = 0
        self._numbers = array.array("Q", bytes(_NUMBERS_SIZE))  # copied as they are: no packing
        self._key = b""

    # -- worker side (one thread) --

    def task_started(self, key: str) -> None:
        self._key = key.encode()[:KEY_BYTES]
        self._numbers[_KEY_LENGTH] = len(self._key)
        self._numbers[_BUSY_SINCE] = time.monotonic_ns()
        self._publish()

    def task_settling(self) -> None:
        """The handler ended near time_limit: the master gives the settling
        SETTLE_TIMEOUT instead of killing the worker at the limit."""
        self._numbers[_SETTLING_SINCE] = time.monotonic_ns()
        self._publish()

    def task_finished(self, outcome: Outcome, duration=None) -> None:
        """``duration`` is None when the handler did not run (the outcome is wqd's)."""
        numbers = self._numbers
        numbers[_BUSY_SINCE] = 0
        numbers[_SETTLING_SINCE] = 0
        numbers[_OUTCOME_INDEX[outcome]] += 1
        if duration is not None:
            numbers[_DURATION_SUM] += int(duration * 1e9)
            numbers[_FIRST_BUCKET + bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self._publish()

    @property
    def task_started_ns(self) -> int:
        """When the running task started (monotonic ns, as read() gives it in s); 0 when idle."""
        return self._numbers[_BUSY_SINCE]

    def stamp_alive(self) -> None:
        """The worker's main thread, at least once a second: it still runs Python.
        Written by that thread alone, outside the copies the task's thread writes."""
        _ALIVE.pack_into(self._map, _ALIVE_OFFSET, time.monotonic_ns())

    def redelivered(self) -> None:
        self._numbers[_REDELIVERED] += 1
        self._publish()

    def copy_refused(self) -> None:
        self._numbers[_COPIES_REFUSED] += 1
        self._publish()

    def _publish(self) -> None:
        generation = self._generation + 1
        start = _COPY_OFFSETS[generation & 1]
        numbers = self._numbers
        self._map[start:start + _NUMBERS_SIZE] = numbers
        if numbers[_BUSY_SINCE]:  # the key is read only while busy: an idle copy skips it
            key_start = start + _NUMBERS_SIZE
            self._map[key_start:key_start + len(self._key)] = self._key
        _GENERATION.pack_into(self._map, 0, generation)
        self._generation = generation

    # -- master side --

    def read(self) -> Snapshot:
        for _ in range(_READ_ATTEMPTS):
            (generation,) = _GENERATION.unpack_from(self._map, 0)
            start = _COPY_OFFSETS[generation & 1]
            copy = self._map[start:start + _COPY_SIZE]
            (after,) = _GENERATION.unpack_from(self._map, 0)
            if after == generation:
                break
        numbers = memoryview(copy[:_NUMBERS_SIZE]).cast("Q").tolist()
        busy_since = numbers[_BUSY_SINCE] / 1e9 if numbers[_BUSY_SINCE] else None
        settling_since = numbers[_SETTLING_SINCE] / 1e9 if numbers[_SETTLING_SINCE] else None
        key = copy[_NUMBERS_SIZE:_NUMBERS_SIZE + numbers[_KEY_LENGTH]].decode(errors="replace") if busy_since else None
        outcomes = dict(zip(Outcome, numbers[_FIRST_OUTCOME:_FIRST_BUCKET]))
        return Snapshot(busy_since, settling_since, key, outcomes, numbers[_REDELIVERED], numbers[_COPIES_REFUSED],
                        numbers[_DURATION_SUM] / 1e9, numbers[_FIRST_BUCKET:])

    def alive_stamp(self) -> int:
        """The worker's last stamp_alive (monotonic ns); 0 before its first."""
        return _ALIVE.unpack_from(self._map, _ALIVE_OFFSET)[0]

    def close(self) -> None:
        self._map.close()

