"""Fuzzing what a worker reads from a message's headers: whatever a publisher
sends (any AMQP field value pika can decode, under wqd's header names), no
exception escapes and the attempt number stays within [1, max_retries + 2],
where max_retries + 2 means "lost once too often: dead-letter without running".
Also: every decoded table survives the trip through pika's encoder (a retried
or dead-lettered copy), including values pika's own decoder chokes on. And
`wqd dead list`, `list --json`, `show`, `purge --older-than` and `replay
--all`, run as commands against a real broker's dead-letter queue of fuzzed
letters (names, ids and properties of any bytes, raw values pika does not
write), exit 0 without a traceback and leave every letter in one of the two
queues."""

import datetime
import decimal
import json
import math
import os
import struct

import pika
import pika.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.daemon import pool, run_cli, wqd_env
from tests.support.dead_letters import RawValue, publish_letters
from tests.support.queues import queue_counts
from tests.support.waiting import wait_for
from wqd.broker import copies, header_decoding
from wqd.redelivery import headers, lost_attempts
from wqd.redelivery.headers import ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, LOST_HEADER
from wqd.redelivery.lost_attempts import WorkerCounts

HEADER_NAMES = st.sampled_from([ATTEMPT_HEADER, LOST_HEADER, DELIVERY_COUNT_HEADER, "x-other"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.from_regex(r"-?[0-9]{0,25}", fullmatch=True), st.binary(max_size=30),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6), max_value=10**6),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2)),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
HEADERS = st.one_of(st.none(), st.dictionaries(HEADER_NAMES, VALUES, max_size=4), VALUES)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class SilentMaster:
    """A reporter whose master knows ``count`` for every key, answering at once."""

    def __init__(self):
        self.command_read, self._command_write = os.pipe()
        self.count = 0

    def send(self, event, **fields) -> bool:
        os.write(self._command_write, lost_attempts.encode_answer(fields["key"], self.count, False))
        return True


class NoKeeper:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


MASTER = SilentMaster()
COUNTS = WorkerCounts(MASTER.command_read, {}, MASTER, NoKeeper())


@FUZZ
@given(headers=HEADERS, redelivered=st.booleans(), quorum=st.booleans(),
       max_retries=st.integers(min_value=0, max_value=50), master_count=st.integers(min_value=0, max_value=200))
def test_the_attempt_of_any_headers_is_within_bounds(headers, redelivered, quorum, max_retries, master_count):
    MASTER.count = master_count
    attempt, lost, _ = COUNTS.attempt(headers, "key", redelivered, max_retries + 1, quorum)
    assert type(attempt) is int and 1 <= attempt <= max_retries + 2
    assert lost >= 0
    if attempt == max_retries + 2:
        assert lost > 0, "only attempts lost with a worker go past the last one"


@FUZZ
@given(value=VALUES)
def test_header_number_takes_only_plain_non_negative_integers(value):
    number = headers.header_number({"h": value}, "h")
    if value is None or isinstance(value, (bool, float, dict, list, decimal.Decimal, datetime.datetime)):
        assert number is None
    else:
        assert number is None or (isinstance(number, int) and number >= 0)


def _raw_value(kind: bytes, payload: bytes) -> bytes:
    return kind + payload


RAW_VALUES = st.one_of(
    st.builds(lambda v: _raw_value(b"T", struct.pack(">Q", v)), st.integers(min_value=0, max_value=2**64 - 1)),
    st.builds(lambda v: _raw_value(b"d", struct.pack(">d", v)), st.floats()),
    st.builds(lambda v: _raw_value(b"f", struct.pack(">f", v)), st.floats(width=32)),
    st.builds(lambda v: _raw_value(b"l", struct.pack(">q", v)), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.builds(lambda b: _raw_value(b"S", struct.pack(">I", len(b)) + b), st.binary(max_size=20)),
    st.builds(lambda depth: _nested(depth), st.integers(min_value=1, max_value=1500)),
)


def _nested(depth: int) -> bytes:
    encoded = b"V"
    for _ in range(depth):
        encoded = b"A" + struct.pack(">I", len(encoded)) + encoded
    return encoded


@FUZZ
@given(raw=st.lists(RAW_VALUES, min_size=1, max_size=4))
def test_any_raw_header_table_decodes_and_encodes_again(raw):
    header_decoding.install()
    items = b"".join(struct.pack("B", len(name)) + name + value
                     for name, value in zip([b"a", b"b", b"c", b"d"], raw))
    table = struct.pack(">I", len(items)) + items
    headers, offset = pika.data.decode_table(table, 0)
    assert offset == len(table)
    properties = copies.encodable(copies.copy_properties(pika.BasicProperties(headers=headers)))
    properties.encode()


# What a publisher can put into a dead letter that RabbitMQ passes on (it
# closes the connection of one that sends a double that is not finite).
LETTER_NAMES = st.one_of(
    st.sampled_from(["x-wqd-replays", "x-wqd-attempts", "x-wqd-exception", "x-wqd-error", "x-wqd-failed-at",
                     "x-wqd-traceback", "x-death", ATTEMPT_HEADER]),
    st.text(max_size=8), st.binary(max_size=8),
).filter(lambda name: name not in ("CC", "BCC", b"CC", b"BCC"))  # they route the letter to other queues
FINITE_RAW = RAW_VALUES.filter(lambda raw: raw[:1] not in (b"d", b"f") or math.isfinite(
    struct.unpack(">d" if raw[:1] == b"d" else ">f", raw[1:])[0]))
LETTER_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=30),
    st.binary(max_size=30), st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6),
                                        max_value=10**6),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2)), FINITE_RAW.map(RawValue),
)
LETTER_VALUES = st.recursive(LETTER_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), inner,
                                                 max_size=4)), max_leaves=12)
SHORT_STRINGS = st.one_of(st.none(), st.text(max_size=20), st.binary(max_size=20))
LETTERS = st.tuples(st.binary(max_size=64), st.builds(
    pika.BasicProperties, message_id=SHORT_STRINGS, correlation_id=SHORT_STRINGS, content_type=SHORT_STRINGS,
    content_encoding=SHORT_STRINGS, reply_to=SHORT_STRINGS, type=SHORT_STRINGS, app_id=SHORT_STRINGS,
    timestamp=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
    priority=st.one_of(st.none(), st.integers(min_value=0, max_value=255)), delivery_mode=st.just(2),
    headers=st.one_of(st.none(), st.dictionaries(LETTER_NAMES, LETTER_VALUES, max_size=5))))
# Each example runs 4 to 8 commands (about 0.3 s each).
DEAD_FUZZ = settings(max_examples=12, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@DEAD_FUZZ
@given(letters=st.lists(LETTERS, min_size=1, max_size=4))
def test_the_dead_letter_commands_take_any_dead_letter(broker, queue_name, make_wqd, tmp_path, letters):
    wqd = make_wqd([pool(queue_name)])  # one config per example (the fixtures are the test's)
    dlq = f"{queue_name}.dead"
    for queue in (queue_name, dlq):
        broker.declare_queue(queue)
        broker.purge_queue(queue)
    publish_letters(broker, dlq, letters)
    count = len(letters)

    def dead(*args):
        result = run_cli("dead", args[0], "-c", str(wqd.config_path), *args[1:], env=wqd_env(tmp_path / "record"))
        assert result.returncode == 0 and "Traceback" not in result.stderr, result
        return result.stdout

    def in_queues(ready_dead: int, ready_work: int) -> bool:
        return (queue_counts(broker, dlq)["messages_ready"], queue_counts(broker, queue_name)["messages_ready"]) == (
            ready_dead, ready_work)

    assert len(dead("list").splitlines()) == count + 1, "a header line and one line per letter"
    entries = json.loads(dead("list", "--json"))
    assert len(entries) == count
    for entry in entries:
        assert dead("show", "--", entry["id"]).startswith(f"Message {entry['id']} (pool default")
    assert dead("purge", "--yes", "--older-than", str(10**10)) == "Deleted 0 dead messages.\n", "none is 300 years old"
    wait_for(lambda: in_queues(count, 0), 30, message="every letter back in the dead-letter queue")
    replayed = dead("replay", "--all").splitlines()
    assert replayed[-1] == f"Replayed {count} message{'' if count == 1 else 's'}.", replayed
    wait_for(lambda: in_queues(0, count), 30, message="every letter replayed")
