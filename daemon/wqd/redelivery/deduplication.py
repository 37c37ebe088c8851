"""Duplicate suppression: a redelivery of a message already finished here is
acked without running its handler (outcome ``duplicate``).

A classic queue's broker, SIGKILLed, forgets the acks it had not yet written
and redelivers those messages; a worker killed between its handler's return
and its ack, or a connection lost there, does the same to one message. The
master keeps a bounded ledger of the messages finished here, and a delivery
the broker flags as redelivered asks it (the lost-attempts query,
lost_attempts.py) before running.

"Finished here" means settled by a worker of this wqd: the handler returned
(the message is then acked), or its failure was routed (a retry copy or dead
letter confirmed by the broker, or dropped with dead_letter_queue: null) and
the original is then acked. A delivery whose handler did not return and
whose failure was not routed (its worker died or was killed at its
time_limit, its connection was lost before the copy was confirmed, the
broker refused the copy) did not finish: its redelivery runs.

Which delivery finished is named by its *lineage*: the message_id (only
messages with one take part), the queue, and where the delivery stands in
its retries (``x-wqd-attempt``) and dead-letter replays (``x-wqd-replays``).
A redelivery is finished when the ledger holds its id at the same lineage or
a later one: the original of a message whose retry copy was confirmed (its
ack lost) is not run again and makes no second copy; the retry copy itself,
redelivered, runs unless it finished too.

The fact is written by the worker before its ack leaves: one entry in a ring
of shared memory per worker (FinishedRing), which the master drains on every
pass of its loop, before it answers a query, and when it reaps the worker. A
redelivery happens after the broker lost the ack, so after the entry was
written, and the master answers only after draining every ring: the fact
always arrives first. While another worker still runs the same message, the
answer waits (briefly, as for lost attempts) and is no unless that run
finished. A worker that dies running a message it had not
finished (no entry written since that task started) makes the master forget
that id: a message published again with the id of a finished one must still
run when its first run was killed.

Memory: the ledger stores 16-byte blake2b digests, not ids, in flat arrays
(CompactLedger): 31 MiB at the default million. It is kept in the master,
so it outlives workers and reloads, and is written to a state file at stop
and read at start (ledger_file.py).
"""

import hashlib
import logging
import mmap
import struct

from wqd.redelivery import ledger_file
from wqd.redelivery.headers import ATTEMPT_HEADER, REPLAYS_HEADER, header_number

log = logging.getLogger("wqd.master")

DEFAULT_CAPACITY = 1_000_000
DIGEST_BYTES = 16
# The ring a worker writes its finished messages to. The master drains it at
# least once a second (its loop's longest sleep): 16,384 entries are several
# seconds of the fastest worker (about 4,000 tasks a second).
RING_SLOTS = 1 << 14
_COUNT = struct.Struct("<Q")  # entries ever written; one aligned 8-byte store publishes them
# digest, lineage, and when the task started (the record's busy_since, monotonic ns)
_ENTRY_WRITE = struct.Struct("<16sQQ")
_ENTRY_READ = struct.Struct("<QQQQ")  # the digest's halves, lineage, started: how the master reads them
_RING_BYTES = _COUNT.size + RING_SLOTS * _ENTRY_WRITE.size
_MAX_LINEAGE_PART = (1 << 32) - 1


def digest(queue_prefix: bytes, message_id: str) -> bytes:
    """What the ledger keeps of a message: the same id in two queues is two
    messages (a fanout exchange may give both pools one message each)."""
    return hashlib.blake2b(queue_prefix + message_id.encode("utf-8", "surrogatepass"),
                           digest_size=DIGEST_BYTES).digest()


def queue_prefix(queue: str) -> bytes:
    return queue.encode("utf-8", "surrogatepass") + b"\0"


def lineage(headers) -> int:
    """Where a delivery stands: dead-letter replays, then the retry attempt its
    copy started at; later lineages compare greater."""
    if not isinstance(headers, dict) or not headers:
        return 1
    attempt = min(header_number(headers, ATTEMPT_HEADER) or 1, _MAX_LINEAGE_PART)
    replays = min(header_number(headers, REPLAYS_HEADER) or 0, _MAX_LINEAGE_PART)
    return replays << 32 | attempt


def message_id_of(properties):
    """The message_id that names it for deduplication, or None."""
    message_id = properties.message_id
    return message_id if message_id and isinstance(message_id, str) else None


# -- the worker's side --


class FinishedRing:
    """Shared memory, mapped by the master before the fork: the worker appends
    (one writer, its consumer thread), the master drains. The worker fills the
    slot, then publishes it by storing the new count; the master reads the
    count, then the slots, then the count again, and drops the slots the
    worker may have overwritten meanwhile (it would have to lap the ring)."""

    def __init__(self):
        self._map = mmap.mmap(-1, _RING_BYTES)
        self._written = 0  # the worker's count
        self._read = 0  # the master's: entries drained

    def append(self, entry_digest: bytes, entry_lineage: int, started_ns: int) -> None:
        written = self._written
        _ENTRY_WRITE.pack_into(self._map, _COUNT.size + (written % RING_SLOTS) * _ENTRY_WRITE.size,
                               entry_digest, entry_lineage, started_ns)
        self._written = written + 1
        _COUNT.pack_into(self._map, 0, written + 1)

    def drain(self):
        """(entries written since the last drain as (hi, lo, lineage, started),
        oldest first; how many were overwritten before the master read them)."""
        (written,) = _COUNT.unpack_from(self._map, 0)
        start = max(self._read, written - RING_SLOTS)
        entries = [self._slot(index) for index in range(start, written)]
        (after,) = _COUNT.unpack_from(self._map, 0)
        overwritten = max(0, after - RING_SLOTS - start)  # slots the worker reused while they were read
        missed = start - self._read + overwritten
        self._read = written
        return entries[overwritten:], missed

    def finished_running(self, hi_lo, busy_since) -> bool:
        """Whether the newest entry is that digest, written during the task that
        started at ``busy_since`` (seconds, as WorkerRecord.read() gives it)."""
        (written,) = _COUNT.unpack_from(self._map, 0)
        if not written or busy_since is None:
            return False
        hi, lo, _, started_ns = self._slot(written - 1)
        return (hi, lo) == hi_lo and started_ns / 1e9 == busy_since

    def _slot(self, index: int):
        return _ENTRY_READ.unpack_from(self._map, _COUNT.size + (index % RING_SLOTS) * _ENTRY_WRITE.size)

    def close(self) -> None:
        self._map.close()


class Recorder:
    """A worker's side: records each message it finishes, before its ack,
    and names the redeliveries it asks the master about. ``record``: the
    worker's WorkerRecord, whose running task's start each entry carries."""

    def __init__(self, queue: str, ring: FinishedRing, record):
        self._prefix = queue_prefix(queue)
        self._ring = ring
        self._record = record

    def finished(self, properties) -> None:
        """Call before the ack of a settled task (``properties``: its message's)."""
        message_id = properties.message_id
        if message_id and message_id.__class__ is str:  # the hot path: no call for a message without one
            self._ring.append(digest(self._prefix, message_id), lineage(properties.headers),
                              self._record.task_started_ns)

    def probe(self, properties):
        """The query's ``finished`` field for a redelivery: [digest hex, lineage], or None without an id."""
        message_id = message_id_of(properties)
        if message_id is None:
            return None
        return [digest(self._prefix, message_id).hex(), lineage(properties.headers)]


# -- the master's side --


def split_digest(entry_digest: bytes):
    """(hi, lo) of a digest, as the ring's reader yields them."""
    return struct.unpack("<QQ", entry_digest)


class CompactLedger:
    """digest -> latest lineage finished, for the last ``capacity`` messages
    finished (the oldest are forgotten first). Flat arrays instead of a dict
    of bytes (about 100 bytes an entry): a ring of entries in the order they
    were finished (the digest's halves and the lineage, 24 bytes; lineage 0 is
    a free slot) and an open-addressing index into it (4 bytes a slot, at
    most half full, linear probing).

    The arrays live in anonymous memory that forked children do not inherit
    (MADV_DONTFORK): a worker's RSS, which max_memory_per_child reads, does
    not count the master's ledger, and pages are only resident once used."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        size = 1 << (2 * capacity - 1).bit_length()
        self._mask = size - 1
        self._memory = mmap.mmap(-1, 24 * capacity + 4 * size, flags=mmap.MAP_PRIVATE)
        self._memory.madvise(mmap.MADV_DONTFORK)
        whole = memoryview(self._memory)
        self._hi = whole[:8 * capacity].cast("Q")
        self._lo = whole[8 * capacity:16 * capacity].cast("Q")
        self._lineage = whole[16 * capacity:24 * capacity].cast("Q")
        self._index = whole[24 * capacity:].cast("I")  # ring position + 1; 0 = empty
        self._next = 0  # entries ever added: the next one goes to _next % capacity
        self.size = 0

    def get(self, hi: int, lo: int) -> int:
        """The latest lineage finished of that digest, or 0."""
        position = self._find(hi, lo)[1]
        return self._lineage[position] if position >= 0 else 0

    def add(self, hi: int, lo: int, entry_lineage: int) -> None:
        """Record a finish; a digest already known becomes the newest, at the later of its lineages."""
        slot, position = self._find(hi, lo)
        if position >= 0:
            entry_lineage = max(entry_lineage, self._lineage[position])
            self._remove(slot, position)
        position = self._next % self.capacity
        if self._lineage[position]:  # full: the oldest goes
            self._remove(self._find(self._hi[position], self._lo[position])[0], position)
        self._hi[position], self._lo[position], self._lineage[position] = hi, lo, entry_lineage
        self._index[self._find(hi, lo)[0]] = position + 1
        self._next += 1
        self.size += 1

    def fill(self, entries) -> None:
        """Load an empty ledger with distinct (hi, lo, lineage) entries, oldest
        first (a state file's): the newest ``capacity`` are kept. Faster than
        add(): nothing to look up or evict."""
        entries = list(entries)[-self.capacity:]
        his, los, lineages, index, mask = self._hi, self._lo, self._lineage, self._index, self._mask
        for position, (hi, lo, entry_lineage) in enumerate(entries):
            his[position], los[position], lineages[position] = hi, lo, entry_lineage
            slot = hi & mask
            while index[slot]:
                slot = (slot + 1) & mask
            index[slot] = position + 1
        self._next = self.size = len(entries)

    def forget(self, hi: int, lo: int) -> bool:
        slot, position = self._find(hi, lo)
        if position < 0:
            return False
        self._remove(slot, position)
        return True

    def entries(self):
        """(hi, lo, lineage) of every entry, oldest first."""
        for offset in range(max(0, self._next - self.capacity), self._next):
            position = offset % self.capacity
            if self._lineage[position]:
                yield self._hi[position], self._lo[position], self._lineage[position]

    def _find(self, hi: int, lo: int):
        """(index slot, ring position) of a digest; (the empty slot where it would go, -1) when absent."""
        index, mask, his, los = self._index, self._mask, self._hi, self._lo
        slot = hi & mask
        while True:
            held = index[slot]
            if not held:
                return slot, -1
            if his[held - 1] == hi and los[held - 1] == lo:
                return slot, held - 1
            slot = (slot + 1) & mask

    def _remove(self, slot: int, position: int) -> None:
        """Free a ring position and its index slot, shifting back the entries
        probed past it, so that every lookup still finds them."""
        self._lineage[position] = 0
        self.size -= 1
        index, mask, his = self._index, self._mask, self._hi
        index[slot] = 0
        hole, probe = slot, slot
        while True:
            probe = (probe + 1) & mask
            held = index[probe]
            if not held:
                return
            home = his[held - 1] & mask
            # The entry may move to the hole unless its home lies in (hole, probe], cyclically.
            if (hole < home <= probe) if hole <= probe else (home > hole or home <= probe):
                continue
            index[hole], index[probe] = held, 0
            hole = probe


class FinishedLedger:
    """The master's side: the ledger, the rings of the live workers that
    deduplicate, and the answer to a redelivery's query."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.ledger = CompactLedger(capacity)
        self._rings = {}  # worker pid -> (FinishedRing, queue prefix)
        self.missed = 0  # entries a worker overwrote before the master read them

    def watch(self, pid: int, ring: FinishedRing, queue: str) -> None:
        """A worker forked with ``ring``."""
        self._rings[pid] = (ring, queue_prefix(queue))

    def collect(self) -> None:
        """Drain every live worker's ring into the ledger."""
        for pid, (ring, _) in self._rings.items():
            self._drain(pid, ring)

    def _drain(self, pid: int, ring: FinishedRing) -> None:
        entries, missed = ring.drain()
        add = self.ledger.add
        for hi, lo, entry_lineage, _ in entries:
            add(hi, lo, entry_lineage)
        if missed:
            self.missed += missed
            log.warning("Duplicate suppression: worker pid %d finished %d messages faster than the master "
                        "read them; their redeliveries, if any, will run again.", pid, missed)

    def worker_gone(self, pid: int, final) -> None:
        """A reaped worker (``final``: the last snapshot of its WorkerRecord):
        take what it finished, and when it died running a message it had not
        finished, forget that id."""
        watched = self._rings.pop(pid, None)
        if watched is None:
            return
        ring, prefix = watched
        self._drain(pid, ring)
        if final.busy_since is not None and final.message_key is not None:
            hi_lo = split_digest(digest(prefix, final.message_key))
            if not ring.finished_running(hi_lo, final.busy_since):
                self.ledger.forget(*hi_lo)
        ring.close()

    def load(self, path: str) -> None:
        """At start: the ledger the last stop wrote (ledger_file.py)."""
        ledger_file.load(self.ledger, path)

    def store(self, path: str) -> None:
        """At stop, once every worker was reaped (their rings drained)."""
        ledger_file.store(self.ledger, path)

    def close_in_child(self) -> None:
        """In a newly forked child: unmap the other workers' rings."""
        for ring, _ in self._rings.values():
            ring.close()

    def finished(self, probe, busy_elsewhere) -> bool:
        """Whether a redelivery (its probe: [digest hex, lineage]) finished
        here. ``busy_elsewhere``: the handles (pid, busy_since) of other live
        workers running a message with the same key; one that has not finished
        it makes the answer no (the run in progress is the one that counts)."""
        try:
            entry_digest, entry_lineage = bytes.fromhex(probe[0]), probe[1]
            hi_lo = split_digest(entry_digest)
        except (TypeError, ValueError, IndexError, struct.error):
            return False
        self.collect()  # after the caller's look at who is busy: whatever they finished is in
        if not isinstance(entry_lineage, int) or self.ledger.get(*hi_lo) < entry_lineage:
            return False
        for worker in busy_elsewhere:
            ring = self._rings.get(worker.pid, (None,))[0]
            if ring is None or not ring.finished_running(hi_lo, worker.busy_since):
                return False
        return True
