"""``wqd dead``: the messages a pool gave up on, read from its dead-letter queue,
shown, put back on its work queue, or deleted; with or without a running daemon.

Reading takes every message with basic.get and no ack, up to the count the
queue had when the command began, then closes the channel: the broker takes
every unacked message back, and a classic queue puts each at its old position.

A replay moves one message at a time on one channel in confirm mode:
basic.get from the dead-letter queue, publish the copy to the work queue with
mandatory set, wait for the broker's confirm, and only then ack the original.
A copy the broker returns (no queue took it: the work queue was deleted) or
nacks (a full queue with overflow reject-publish) is not a move: its original
stays unacked and goes back to the dead-letter queue when the channel closes.
(A transaction cannot do this: RabbitMQ commits the ack even when the publish
in the same transaction went to no queue or was refused.) So a replay never
loses a message; one killed while a copy is in flight (published, its
original not yet acked) leaves that one message in both queues.
"""

import collections
import dataclasses
import datetime
import hashlib
import json
import math
import os
import time
from typing import Callable, Iterator, Optional, Tuple

import pika
import pika.exceptions

from wqd import errors
from wqd.broker import amqp, header_decoding, queues
from wqd.broker.copies import encodable, not_copied
from wqd.broker.header_decoding import header_text
from wqd.config import Config, PoolConfig
from wqd.redelivery.headers import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    EXCEPTION_HEADER,
    FAILED_AT_HEADER,
    REPLAYED_AT_HEADER,
    REPLAYS_HEADER,
    WQD_PREFIX,
    header_number,
)

_SHORT_KEY = len("sha1:") + 12  # a message without an id is named by its body's hash, this long
_MAX_DEPTH = 32  # tables and arrays shown nested at most this deep
_CANDIDATES_SHOWN = 10  # the ids an ambiguous prefix starts that an error lists
# The largest AMQP long (a signed 64-bit header value): the replay counter stays there.
REPLAYS_MAX = 2**63 - 1


@dataclasses.dataclass
class DeadLetter:
    pool: str
    queue: str  # the dead-letter queue it is in
    body: bytes
    properties: pika.BasicProperties
    occurrence: int = 1  # its rank among the letters of this queue that have the same id, in queue order

    @property
    def headers(self) -> dict:
        return self.properties.headers or {}

    @property
    def id(self) -> str:
        """How the commands show and name it: its message id, printable (see
        printable()), or (none given) a prefix of its body's hash; the second
        letter with the same one in the queue gets ~2 after it, and so on."""
        if self.properties.message_id:
            shown = printable(text(self.properties.message_id))
        else:
            shown = ("sha1:" + hashlib.sha1(self.body).hexdigest())[:_SHORT_KEY]
        return shown if self.occurrence == 1 else f"{shown}~{self.occurrence}"

    def header(self, name: str) -> Optional[str]:
        """Header ``name`` as text (see text()), None when it is absent."""
        value = self.headers.get(name)
        return None if value is None else text(value)

    @property
    def exception(self) -> str:
        """The handler's exception type; for a message the broker dead-lettered
        (e.g. a quorum queue's delivery limit), its reason."""
        if self.header(EXCEPTION_HEADER):
            return self.header(EXCEPTION_HEADER)
        death = self._first_death()
        return f"(broker: {text(death.get('reason'))})" if death.get("reason") else "(unknown)"

    @property
    def error(self) -> str:
        return self.header(ERROR_HEADER) or ""

    @property
    def attempts(self) -> Optional[int]:
        attempts = header_number(self.headers, ATTEMPTS_HEADER)
        return attempts if attempts is not None else header_number(self._first_death(), "count")

    @property
    def failed_at(self) -> Optional[float]:
        """When it was given up on (epoch seconds): wqd's header, the broker's
        dead-lettering time, else the time it was published; None if unknown."""
        stamp = self.header(FAILED_AT_HEADER)
        if stamp:
            try:
                return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
            except ValueError:
                pass
        death = self._first_death().get("time")
        if isinstance(death, datetime.datetime):
            return death.replace(tzinfo=death.tzinfo or datetime.timezone.utc).timestamp()
        if self.properties.timestamp:
            return float(self.properties.timestamp)
        return None

    def age(self, now: float) -> Optional[float]:
        failed = self.failed_at
        return None if failed is None else max(0.0, now - failed)

    def matches(self, ids, exceptions) -> bool:
        """Named by one of ``ids`` and of one of the ``exceptions`` types (either: any when empty)."""
        if ids and not any(self.named(wanted) for wanted in ids):
            return False
        return not exceptions or self.exception in exceptions

    def named(self, wanted: str) -> bool:
        """Whether a command-line argument names it: its id as shown, its message
        id as sent (a byte that is not UTF-8 comes in surrogate-escaped), or
        9 characters or more of a body hash's id."""
        message_id = self.properties.message_id
        if not message_id:  # a later twin (~2) only by its whole id
            return wanted == self.id or (self.occurrence == 1 and len(wanted) >= 9 and self.id.startswith(wanted))
        sent = message_id if isinstance(message_id, bytes) else message_id.encode()
        return wanted == self.id or os.fsencode(wanted) == sent

    def summary(self, now: float) -> dict:
        """What `wqd dead list --json` prints of it."""
        message_id = self.properties.message_id
        return {"pool": self.pool, "dead_letter_queue": self.queue, "id": self.id,
                "message_id": None if message_id is None else text(message_id), "age_seconds": _round(self.age(now)),
                "failed_at": self.header(FAILED_AT_HEADER), "attempts": self.attempts,
                "exception": self.exception, "error": self.error, "body_bytes": len(self.body),
                "replays": self.replays}

    @property
    def replays(self) -> int:
        """How often it was replayed before: 0 when the header is missing or not
        a whole number >= 0 (any publisher may set it)."""
        return header_number(self.headers, REPLAYS_HEADER) or 0

    def _first_death(self) -> dict:
        deaths = self.headers.get("x-death")
        return deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}


@dataclasses.dataclass
class Refusal:
    """Why the broker did not take a replayed copy."""
    nacked: bool  # else returned: no queue took it
    reason: str


def text(value) -> str:
    """Any value pika decoded, as text: bytes that are not UTF-8 with \\xNN
    escapes, tables and arrays as JSON (see jsonable()), None as null."""
    as_text = header_text(value, "backslashreplace")
    if as_text is not None:
        return as_text
    shown = jsonable(value)
    return shown if isinstance(shown, str) else json.dumps(shown)


def jsonable(value, depth: int = 0):
    """``value`` as json.dumps takes it: names and strings as text(), numbers
    that are not finite, decimals and timestamps as strings, tables and arrays
    nested deeper than _MAX_DEPTH as "..."."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, bytes)):
        return text(value)
    if isinstance(value, (dict, list)) and depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {text(name): jsonable(item, depth + 1) for name, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item, depth + 1) for item in value]
    return str(value)


def age_text(seconds) -> str:
    """A dead letter's age as `wqd dead` and the console show it: 12s, 3m05s, 2h10m, 1d04h; ? when unknown."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // sub_size:02d}{sub_unit}"
    return f"{seconds}s"


def quoted(value: str) -> str:
    """``value`` printable, between single quotes (repr() would double its escapes)."""
    return f"'{printable(value)}'"


def printable(value: str) -> str:
    """``value`` with what is not printable (a terminal's escape sequences, a
    line break) spelled out as Python would: \\x1b, \\n, \\u200b."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in value)


def _round(value):
    return None if value is None else round(value, 1)


def named_by(letters: list, wanted: str) -> list:
    """The letters ``wanted`` names: those it names exactly, else those whose
    id starts with it, when they share one id; raise WqdError listing the ids
    when it starts several."""
    exact = [letter for letter in letters if letter.named(wanted)]
    if exact or not wanted:
        return exact
    found = [letter for letter in letters if letter.id.startswith(wanted)]
    ids = list(dict.fromkeys(letter.id for letter in found))
    if len(ids) > 1:
        holding = ", ".join(dict.fromkeys(letter.queue for letter in found))
        more = f" and {len(ids) - _CANDIDATES_SHOWN} more" if len(ids) > _CANDIDATES_SHOWN else ""
        raise errors.WqdError(f"{quoted(wanted)} is the start of {len(ids)} dead messages' ids in {holding}: "
                              f"{', '.join(ids[:_CANDIDATES_SHOWN])}{more}; give more of the ID")
    return found


def pools_with_dead_letters(config: Config, pool_name: Optional[str]) -> list:
    """The pools a command works on: the one named, else every pool with a
    dead-letter queue; raise WqdError for an unknown pool or one without."""
    if pool_name is None:
        return [pool for pool in config.pools if pool.dead_letter_queue]
    pool = next((p for p in config.pools if p.name == pool_name), None)
    if pool is None:
        raise errors.WqdError(f"no pool {pool_name!r} in {config.path} (pools: "
                              f"{', '.join(p.name for p in config.pools)})")
    if not pool.dead_letter_queue:
        raise errors.WqdError(f"pool {pool_name!r} has no dead-letter queue (dead_letter_queue: null)")
    return [pool]


class DeadLetterQueues:
    """One broker connection for a `wqd dead` command; use as a context manager.
    Broker failures become errors.BrokerUnavailable (exit 69)."""

    def __init__(self, config: Config):
        self._config = config
        self._connection = None
        self._url = None

    def __enter__(self) -> "DeadLetterQueues":
        header_decoding.install()  # a dead letter's hostile header must not cost the connection
        self._connection, index = amqp.connect_any(self._config.broker, name="wqd dead")
        self._url = self._config.broker.urls[index]
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
        if isinstance(exc, (pika.exceptions.AMQPError, OSError)) and not isinstance(exc, BrokenPipeError):
            # (pika reports a lost broker socket as its own error: a broken pipe is stdout's reader gone)
            raise errors.BrokerUnavailable(amqp.describe_error(exc, self._url)) from None

    def browse(self, pool: PoolConfig, limit: Optional[int] = None) -> list:
        """Every message of the pool's dead-letter queue (the first ``limit``),
        in order; the queue is left as it was."""
        count = self._message_count(pool.dead_letter_queue)
        if limit is not None and count is not None:
            count = min(count, limit)
        channel = self._connection.channel()
        try:
            return [letter for _, letter in self._get(channel, pool, count)]
        finally:
            channel.close()  # the broker takes every message back, unacked

    def replay(self, pool: PoolConfig, select: Callable[[DeadLetter], bool], limit: Optional[int],
               now: Callable[[], float] = time.time) -> Iterator[Tuple[DeadLetter, Optional[Refusal]]]:
        """Copy the selected messages to the pool's work queue until ``limit`` of
        them moved; yield (letter, None) for each one moved, (letter, refusal)
        for each the broker did not take (it stays in the dead-letter queue)."""
        if self._message_count(pool.queue) is None:
            raise errors.WqdError(f"the work queue {pool.queue!r} does not exist; start wqd once to declare it")
        count = self._message_count(pool.dead_letter_queue)
        channel = self._connection.channel()
        channel.confirm_delivery()
        moved = 0
        try:
            for delivery_tag, letter in self._get(channel, pool, count if limit != 0 else 0):
                if not select(letter):
                    continue  # stays unacked: back in its place when the channel closes
                refusal = _publish_copy(channel, pool.queue, letter, now())
                if refusal is None:
                    channel.basic_ack(delivery_tag)  # only now: a queue holds the copy
                    moved += 1
                yield letter, refusal
                if limit is not None and moved >= limit:
                    break
        finally:
            if channel.is_open:
                channel.close()

    def delete(self, pool: PoolConfig, select: Callable[[DeadLetter], bool]) -> Iterator[DeadLetter]:
        """Remove the selected messages from the pool's dead-letter queue; yield each."""
        count = self._message_count(pool.dead_letter_queue)
        channel = self._connection.channel()
        try:
            for delivery_tag, letter in self._get(channel, pool, count):
                if select(letter):
                    channel.basic_ack(delivery_tag)
                    yield letter
        finally:
            if channel.is_open:
                channel.close()

    def _get(self, channel, pool: PoolConfig, count: Optional[int]):
        """(delivery tag, DeadLetter) of up to ``count`` messages, unacked, in
        queue order: letters that share an id are told apart by their rank."""
        seen = collections.Counter()
        for _ in range(count or 0):
            method, properties, body = channel.basic_get(pool.dead_letter_queue, auto_ack=False)
            if method is None:
                return
            letter = DeadLetter(pool.name, pool.dead_letter_queue, body, properties)
            seen[letter.id] += 1
            letter.occurrence = seen[letter.id]
            yield method.delivery_tag, letter

    def _message_count(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist."""
        found = queues.look_up(self._connection, queue)
        return None if found is None else found.message_count


def _publish_copy(channel, queue: str, letter: DeadLetter, now: float) -> Optional[Refusal]:
    """Publish the letter's copy (mandatory, confirmed); None once a queue holds it."""
    try:
        channel.basic_publish("", queue, letter.body, replay_properties(letter, now), mandatory=True)
    except pika.exceptions.UnroutableError as exc:
        returned = exc.messages[0].method
        return Refusal(False, f"the broker returned its copy ({returned.reply_code} {returned.reply_text}: "
                              f"does the work queue {queue!r} still exist?)")
    except pika.exceptions.NackError:
        return Refusal(True, f"the broker refused its copy (basic.nack: is the work queue {queue!r} full, "
                             f"with overflow reject-publish?)")
    return None


def replay_properties(letter: DeadLetter, now: float) -> pika.BasicProperties:
    """The replayed copy's properties: a first attempt again, saying when it was
    replayed and how often it has been (at most REPLAYS_MAX), with no value
    pika cannot encode again."""
    properties = letter.properties
    headers = {name: value for name, value in letter.headers.items() if not _reset(text(name))}
    headers[REPLAYS_HEADER] = min(letter.replays + 1, REPLAYS_MAX)
    headers[REPLAYED_AT_HEADER] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return encodable(pika.BasicProperties(
        content_type=properties.content_type, content_encoding=properties.content_encoding,
        headers=headers, delivery_mode=pika.DeliveryMode.Persistent.value, priority=properties.priority,
        correlation_id=properties.correlation_id, reply_to=properties.reply_to,
        message_id=properties.message_id, timestamp=properties.timestamp, type=properties.type,
        app_id=properties.app_id))  # not user_id: the broker refuses one that is not the replaying user


def _reset(name: str) -> bool:
    """A replayed copy keeps no x-wqd-* header (its attempt count starts again,
    and the failure they describe is the old one), nor any a copy drops."""
    return name.startswith(WQD_PREFIX) or not_copied(name)
