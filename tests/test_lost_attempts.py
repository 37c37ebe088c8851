"""Lost-attempt accounting without processes: the master's ledger (an LRU with a
cap), its held answers, the worker's counts and the header arithmetic."""

import os

import pika
import pytest

from wqd.redelivery import lost_attempts
from wqd.redelivery.headers import ATTEMPT_HEADER, LOST_HEADER, retry_headers
from wqd.redelivery.lost_attempts import QUERY, MasterCounts, WorkerCounts


class FakeWorker:
    """The master's handle on a worker, as far as the ledger reads it."""

    def __init__(self, message_key=None):
        self.message_key = message_key
        self.pid = id(self)
        self._read_fd, self.command_fd = os.pipe()
        os.set_blocking(self._read_fd, False)

    def received(self) -> list:
        """The lines the master sent this worker so far: (key, count) of a
        count, (key, count, finished) of an answer."""
        try:
            data = os.read(self._read_fd, 65536)
        except BlockingIOError:
            return []
        lines = [lost_attempts.decode_count(line) for line in data.splitlines()]
        return [line if line[2] is not None else line[:2] for line in lines]

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self.command_fd)


@pytest.fixture
def workers():
    made = []

    def make(message_key=None):
        made.append(FakeWorker(message_key))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def test_the_ledger_forgets_the_oldest_message_past_its_cap():
    ledger = MasterCounts(cap=3)
    for key in ("a", "b", "c", "d"):
        ledger.count_lost(key, [])
    assert list(ledger.counts().items()) == [("b", 1), ("c", 1), ("d", 1)]


def test_counting_a_message_again_makes_it_the_newest():
    ledger = MasterCounts(cap=3)
    for key in ("a", "b", "c", "a"):
        ledger.count_lost(key, [])
    assert list(ledger.counts()) == ["b", "c", "a"]
    ledger.count_lost("d", [])  # "b" is now the oldest, not "a"
    assert ledger.counts() == {"c": 1, "a": 2, "d": 1}


def test_the_default_cap_is_large_and_counts_are_a_copy():
    ledger = MasterCounts()
    assert ledger.cap == lost_attempts.LEDGER_CAP == 10_000
    ledger.count_lost("a", [])
    ledger.counts()["a"] = 99
    assert ledger.counts() == {"a": 1}


def test_every_worker_is_told_the_new_count(workers):
    ledger, first, second = MasterCounts(), workers(), workers()
    ledger.count_lost("m-1", [first, second])
    ledger.count_lost("m-1", [first, second])
    assert first.received() == second.received() == [("m-1", 1), ("m-1", 2)]


def test_a_query_is_answered_at_once_when_no_other_worker_runs_that_message(workers):
    ledger, asking, other = MasterCounts(), workers(), workers("m-2")
    ledger.count_lost("m-1", [])
    ledger.query(asking, "m-1", now=100.0)
    assert ledger.queries_waiting
    ledger.answer_queries([asking, other], now=100.0)
    assert asking.received() == [("m-1", 1, False)]
    assert not ledger.queries_waiting


def test_a_query_is_held_while_another_worker_still_shows_that_message_busy(workers):
    """The broker redelivers a killed worker's message before the master reaps it."""
    ledger, asking, dying = MasterCounts(), workers(), workers("m-1")
    ledger.query(asking, "m-1", now=100.0)
    ledger.answer_queries([asking, dying], now=100.0 + lost_attempts.QUERY_HOLD / 2)
    assert asking.received() == [] and ledger.queries_waiting
    # The master reaps the dying worker: it counts the attempt, then answers.
    ledger.count_lost("m-1", [asking])
    ledger.answer_queries([asking], now=100.0 + lost_attempts.QUERY_HOLD / 2)
    assert asking.received() == [("m-1", 1), ("m-1", 1, False)]
    assert not ledger.queries_waiting


def test_a_held_query_is_answered_with_what_is_known_once_the_hold_is_over(workers):
    ledger, asking, stuck = MasterCounts(), workers(), workers("m-1")
    ledger.query(asking, "m-1", now=100.0)
    ledger.answer_queries([asking, stuck], now=100.0 + lost_attempts.QUERY_HOLD + 0.01)
    assert asking.received() == [("m-1", 0, False)]
    assert lost_attempts.QUERY_HOLD < lost_attempts.QUERY_TIMEOUT, "the worker must wait longer than the hold"


def test_a_query_from_a_worker_that_died_meanwhile_is_dropped(workers):
    ledger, gone, alive = MasterCounts(), workers(), workers()
    ledger.query(gone, "m-1", now=100.0)
    ledger.answer_queries([alive], now=100.0)
    assert gone.received() == [] and alive.received() == []
    assert not ledger.queries_waiting


class FakeMaster:
    """A worker's reporter whose master answers every query with ``count``."""

    def __init__(self, count, answers=True):
        self.count, self.answers = count, answers
        self.command_read, self._command_write = os.pipe()
        self.queries = []

    def send(self, event, **fields) -> bool:
        assert event == QUERY
        self.queries.append(fields["key"])
        if self.answers:
            os.write(self._command_write, lost_attempts.encode_answer(fields["key"], self.count, False))
        return self.answers

    def close(self) -> None:
        os.close(self._command_write)  # ends the worker's reading thread


class _recording:
    """The keeper as a reusable context manager that records each entry."""

    def __init__(self, entered: list):
        self.entered = entered

    def __enter__(self):
        self.entered.append(True)

    def __exit__(self, *exc_info):
        return False


def _worker_counts(master, known=None, entered=None):
    return WorkerCounts(master.command_read, dict(known or {}), master, _recording([] if entered is None else entered))


def test_a_first_delivery_is_attempt_one_and_asks_nothing():
    master = FakeMaster(count=7)
    counts = _worker_counts(master, known={"m-1": 2})
    # Not redelivered: a new lineage, whatever the ledger says of its key.
    assert counts.attempt({}, "m-1", redelivered=False, max_attempts=4, delivery_count=False) == (1, 0, False)
    assert counts.attempt({ATTEMPT_HEADER: 3}, "m-1", False, 4, False) == (3, 0, False)
    assert master.queries == []
    master.close()


def test_a_redelivery_asks_the_master_while_the_connection_is_served():
    master, entered = FakeMaster(count=2), []
    counts = _worker_counts(master, known={"m-1": 1}, entered=entered)
    assert counts.attempt({ATTEMPT_HEADER: 2}, "m-1", redelivered=True, max_attempts=9, delivery_count=False) == (4, 2, False)
    assert master.queries == ["m-1"] and entered == [True]
    master.close()


def test_lost_attempts_past_the_last_give_max_attempts_plus_one():
    master = FakeMaster(count=5)
    counts = _worker_counts(master)
    assert counts.attempt({ATTEMPT_HEADER: 3}, "m-1", True, 4, False) == (5, 5, False)
    master.close()


def test_without_a_master_a_redelivery_uses_what_the_worker_knows():
    master = FakeMaster(count=3, answers=False)
    counts = _worker_counts(master, known={"m-1": 1})
    assert counts.attempt({}, "m-1", True, 4, False) == (2, 1, False)
    master.close()


def test_a_count_of_zero_from_the_master_clears_the_key():
    master = FakeMaster(count=0)
    counts = _worker_counts(master, known={"m-1": 3})
    assert counts.attempt({}, "m-1", True, 9, False) == (1, 0, False)
    master.answers = False  # the master's clear was kept: no stale 3 to fall back on
    assert counts.attempt({}, "m-1", True, 9, False) == (1, 0, False)
    master.close()


def test_quorum_queues_count_lost_attempts_themselves_on_redeliveries_only():
    master = FakeMaster(count=9)
    counts = _worker_counts(master)
    headers = {"x-delivery-count": 2, ATTEMPT_HEADER: 3, LOST_HEADER: 5}
    assert counts.attempt(headers, "m-1", True, 9, True) == (5, 2, False)
    # A publisher's (or an old lineage's) x-delivery-count on a first delivery means nothing.
    assert counts.attempt(headers, "m-1", False, 9, True) == (3, 0, False)
    assert master.queries == []
    master.close()


def test_a_quorum_redelivery_counts_the_masters_parkings_when_the_broker_did_not_count_them():
    """RabbitMQ 4.3 does not count a requeue in x-delivery-count; the master
    counts each parking (refused_copies.py). A death is in both: not twice."""
    master = FakeMaster(count=9)
    counts = _worker_counts(master, known={"m-1": 2, "m-2": 1})
    assert counts.attempt({"x-delivery-count": 0}, "m-1", True, 9, True) == (3, 2, False)
    assert counts.attempt({"x-delivery-count": 1}, "m-2", True, 9, True) == (2, 1, False)
    assert master.queries == [], "what the master told every worker: no question asked"
    master.close()


def test_the_ledger_clears_a_settled_lineage_and_tells_every_worker(workers):
    ledger, first, second = MasterCounts(), workers(), workers()
    ledger.count_lost("m-1", [])
    ledger.clear("m-1", [first, second])
    assert ledger.counts() == {}
    assert first.received() == second.received() == [("m-1", 0)]
    ledger.clear("m-1", [first])  # nothing counted: nothing to tell
    assert first.received() == []


def test_a_retried_copy_records_its_next_attempt_and_leaves_its_lineage_counts():
    headers = {"tenant": "acme", ATTEMPT_HEADER: 2, LOST_HEADER: 1, "x-delivery-count": 4}
    assert retry_headers(headers, 2) == {"tenant": "acme", ATTEMPT_HEADER: 3}
    assert headers["x-delivery-count"] == 4, "the original headers are left alone"
    assert retry_headers(None, 1) == {ATTEMPT_HEADER: 2}


def test_the_wire_format_and_the_key_of_a_message_without_id():
    line = lost_attempts.encode_count("m-\u00e9", 4)
    assert line.endswith(b"\n") and lost_attempts.decode_count(line) == ("m-\u00e9", 4, None)
    answer = lost_attempts.encode_answer("m-1", 2, True)
    assert lost_attempts.decode_count(answer) == ("m-1", 2, True)
    def key(body, message_id=None):
        return lost_attempts.message_key(pika.BasicProperties(message_id=message_id), body)

    assert key(b"body").startswith("body:") and key(b"body") == key(b"body") != key(b"x")
    assert key(b"body", "m-1") == "m-1"
    assert key(b"body", b"\xff\xfe") == key(b"body"), "an id pika could not decode is not a key"


def test_a_forked_worker_keys_a_message_without_id_as_its_master_does():
    """The key hashes with the interpreter's secret: a worker must share it with
    the master and its siblings, which a fork (unlike a new interpreter) does."""
    body = b"a body with no message id"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(writer, lost_attempts.message_key(pika.BasicProperties(), body).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as stream:
        in_child = stream.read().decode()
    os.waitpid(pid, 0)
    assert in_child == lost_attempts.message_key(pika.BasicProperties(), body)
