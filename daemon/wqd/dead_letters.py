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
loses a message; one killed between a confirm and its ack leaves that one
message in both queues.
"""

import dataclasses
import datetime
import hashlib
import time
from typing import Callable, Iterator, Optional, Tuple

import pika
import pika.exceptions

from wqd import amqp, errors, header_decoding, lost_attempts
from wqd.config import Config, PoolConfig

# Headers a replayed copy does not keep: its attempt count starts again, and
# the failure they describe is the old one.
_RESET_PREFIXES = ("x-wqd-",)
_BROKER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                   "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
                   lost_attempts.DELIVERY_COUNT_HEADER)
REPLAYS_HEADER = "x-wqd-replays"
REPLAYED_AT_HEADER = "x-wqd-replayed-at"
_SHORT_KEY = len("sha1:") + 12  # a message without an id is named by its body's hash, this long


@dataclasses.dataclass
class DeadLetter:
    pool: str
    queue: str  # the dead-letter queue it is in
    body: bytes
    properties: pika.BasicProperties

    @property
    def headers(self) -> dict:
        return self.properties.headers or {}

    @property
    def id(self) -> str:
        """The message id, or (none given) a prefix of its body's hash."""
        return self.properties.message_id or ("sha1:" + hashlib.sha1(self.body).hexdigest())[:_SHORT_KEY]

    def header(self, name: str):
        value = self.headers.get(name)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    @property
    def exception(self) -> str:
        """The handler's exception type; for a message the broker dead-lettered
        (e.g. a quorum queue's delivery limit), its reason."""
        if self.header("x-wqd-exception"):
            return str(self.header("x-wqd-exception"))
        death = self._first_death()
        return f"(broker: {_text(death.get('reason'))})" if death.get("reason") else "(unknown)"

    @property
    def error(self) -> str:
        return str(self.header("x-wqd-error") or "")

    @property
    def attempts(self) -> Optional[int]:
        value = self.header("x-wqd-attempts")
        if value is None and self._first_death():
            value = self._first_death().get("count")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def failed_at(self) -> Optional[float]:
        """When it was given up on (epoch seconds): wqd's header, the broker's
        dead-lettering time, else the time it was published; None if unknown."""
        text = self.header("x-wqd-failed-at")
        if text:
            try:
                return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
            except ValueError:
                pass
        death = self._first_death()
        stamp = death.get("time") if death else None
        if isinstance(stamp, datetime.datetime):
            return stamp.replace(tzinfo=stamp.tzinfo or datetime.timezone.utc).timestamp()
        if self.properties.timestamp:
            return float(self.properties.timestamp)
        return None

    def age(self, now: float) -> Optional[float]:
        failed = self.failed_at
        return None if failed is None else max(0.0, now - failed)

    def matches(self, ids, exception: Optional[str]) -> bool:
        """Named by one of ``ids`` (any when empty) and, when given, of the exception type."""
        if ids and not any(self.id == wanted or (self.properties.message_id is None and len(wanted) >= 9
                                                 and self.id.startswith(wanted)) for wanted in ids):
            return False
        return exception is None or self.exception == exception

    def summary(self, now: float) -> dict:
        """What `wqd dead list --json` prints of it."""
        failed_at = self.header("x-wqd-failed-at")
        return {"pool": self.pool, "dead_letter_queue": self.queue, "id": self.id,
                "message_id": self.properties.message_id, "age_seconds": _round(self.age(now)),
                "failed_at": None if failed_at is None else str(failed_at), "attempts": self.attempts,
                "exception": self.exception, "error": self.error, "body_bytes": len(self.body),
                "replays": self.replays}

    @property
    def replays(self) -> int:
        """How often it was replayed before (0 when the header is missing or not a number)."""
        try:
            return int(self.headers.get(REPLAYS_HEADER, 0))
        except (TypeError, ValueError):
            return 0

    def _first_death(self) -> dict:
        deaths = self.headers.get("x-death")
        return deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}


@dataclasses.dataclass
class Refusal:
    """Why the broker did not take a replayed copy."""
    nacked: bool  # else returned: no queue took it
    reason: str


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _round(value):
    return None if value is None else round(value, 1)


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
        if isinstance(exc, (pika.exceptions.AMQPError, OSError)):
            raise errors.BrokerUnavailable(amqp.describe_error(exc, self._url)) from None

    def browse(self, pool: PoolConfig) -> list:
        """Every message of the pool's dead-letter queue, in order; the queue is
        left as it was."""
        count = self._message_count(pool.dead_letter_queue)
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
        """(delivery tag, DeadLetter) of up to ``count`` messages, unacked."""
        for _ in range(count or 0):
            method, properties, body = channel.basic_get(pool.dead_letter_queue, auto_ack=False)
            if method is None:
                return
            yield method.delivery_tag, DeadLetter(pool.name, pool.dead_letter_queue, body, properties)

    def _message_count(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist."""
        channel = self._connection.channel()
        try:
            count = channel.queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
        channel.close()
        return count


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
    replayed and how often it has been."""
    properties, old = letter.properties, letter.headers
    headers = {key: value for key, value in old.items()
               if not key.startswith(_RESET_PREFIXES) and key not in _BROKER_HEADERS}
    headers[REPLAYS_HEADER] = letter.replays + 1
    headers[REPLAYED_AT_HEADER] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return pika.BasicProperties(
        content_type=properties.content_type, content_encoding=properties.content_encoding,
        headers=headers, delivery_mode=pika.DeliveryMode.Persistent.value, priority=properties.priority,
        correlation_id=properties.correlation_id, reply_to=properties.reply_to,
        message_id=properties.message_id, timestamp=properties.timestamp, type=properties.type,
        app_id=properties.app_id)  # not user_id: the broker refuses one that is not the replaying user
