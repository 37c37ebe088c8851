"""Where a finished task's delivery goes: acked, or a failed attempt republished
to a delay queue (a retry) or to the dead-letter queue, then acked.

A retry is republished to ``<queue>.delay.<ms>``, a durable queue with no
consumers whose messages expire (per-message TTL) and are dead-lettered back
to the work queue. One delay queue per delay keeps expiry FIFO-correct, and
``x-expires`` removes a delay queue nobody has used for a while.

Republishes go through a channel of their own with publisher confirms, and the
original is acked only once the broker confirmed the copy. A copy the broker
refuses (nack, e.g. while a quorum queue elects a new leader) is published
again after a backoff, the original held unacked meanwhile; after
ROUTE_ATTEMPTS refusals the original goes back to the queue. A refusal that
closes the publishing channel (a copy larger than the broker's
max_message_size, a delay queue the user may not declare) counts the same:
the original is never acked without its copy.
"""

import copy
import functools
import logging
import random
import socket
import time
import traceback

import pika
import pika.data
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from wqd import backoff, lost_attempts
from wqd.config import PoolConfig
from wqd.message import Reject
from wqd.task_stats import Outcome

log = logging.getLogger("wqd.worker")

JITTER = 0.1  # a retry waits between 90% and 100% of its computed delay
ROUTE_ATTEMPTS = 6
ROUTE_RETRY_INITIAL = 0.5
ROUTE_RETRY_MAX = 8.0
# Errors after which a fresh connection is the cure. pika raises the
# connection workflow's errors (a broker that accepts TCP and never answers:
# AMQPConnectorStackTimeout) outside its AMQPError hierarchy.
RECOVERABLE = (pika.exceptions.AMQPError, OSError, AMQPConnectorException)
# Looked up once, as every successful task returns it: reading an enum member
# off its class costs about 90 ns on Python 3.11, a module global about 10 ns.
_SUCCEEDED = Outcome.SUCCEEDED


class Task:
    __slots__ = ("delivery_tag", "message", "key", "lost", "duration", "error", "route_failures")

    def __init__(self, delivery_tag, message, key, lost=0):
        self.delivery_tag = delivery_tag
        self.message = message
        self.key = key  # message_id, or a hash of the body: identifies it across deliveries
        self.lost = lost  # attempts of this delivery's lineage lost with a worker
        self.duration = None  # seconds the handler ran; None when it did not run
        self.error = None
        self.route_failures = 0  # republishes (retry or dead letter) the broker refused


class Router:
    """Settles tasks on one connection; opened again with every new connection."""

    def __init__(self, pool: PoolConfig, settle_again, finished=None):
        """``settle_again(task)``: the consumer's settling of a held task, called
        from a connection timer when its republish is to be tried again.
        ``finished(properties)``: records a failed attempt whose copy the
        broker confirmed (or that was dropped), before the original's ack
        (deduplication.py); None when the pool does not deduplicate."""
        self.pool = pool
        self._settle_again = settle_again
        self._finished = finished
        self._connection = None
        self._channel = None  # the consuming channel: acks and nacks go on it
        self._publish_channel = None
        self.held = set()  # failed tasks whose republish the broker refused, to be tried again

    def open(self, connection, channel) -> None:
        self._connection = connection
        self._channel = channel
        self._publish_channel = connection.channel()
        self._publish_channel.confirm_delivery()

    def forget(self) -> None:
        """The connection is gone: its unacked deliveries, and the held tasks'
        republish timers, went with it."""
        self._connection = self._channel = self._publish_channel = None
        self.held.clear()

    def return_unstarted(self, delivery_tag, properties, body) -> None:
        """Give a delivery that never started back as it came, not as a redelivery
        (a redelivery would count as a failed attempt)."""
        self._publish_channel.basic_publish("", self.pool.queue, body,
                                            encodable(republished_properties(properties)), mandatory=True)
        self._channel.basic_ack(delivery_tag)

    def settle(self, task: Task):
        """Ack, retry or dead-letter a finished task; return its Outcome, or None
        while it is held for another republish."""
        if task.error is None:
            self._channel.basic_ack(task.delivery_tag)
            return _SUCCEEDED
        if not task.route_failures and task.duration is not None:  # the handler ran and failed
            log.warning("Task %s failed on attempt %d: %s: %s", task.message.message_id or "(no id)",
                        task.message.attempt, type(task.error).__name__, task.error)
        return self._route_failure(task)

    def _route_failure(self, task: Task):
        """Send a failed attempt to a delay queue or the dead-letter queue (publisher
        confirms), then ack the original; return the outcome."""
        message, error = task.message, task.error
        final = isinstance(error, (Reject, lost_attempts.WorkerLost)) or message.attempt > self.pool.max_retries
        properties = copy_properties(message.properties)
        try:
            if not final:
                delay = retry_delay(self.pool, message.attempt)
                queue, arguments, delay_ms = delay_queue(self.pool, delay)
                self._publish_channel.queue_declare(queue=queue, durable=True, arguments=arguments)
                properties.headers = lost_attempts.retry_headers(properties.headers, message.attempt)
                properties.expiration = jittered_expiration(delay_ms)
                self._publish_channel.basic_publish("", queue, message.body, encodable(properties), mandatory=True)
                outcome = Outcome.RETRIED
            elif self.pool.dead_letter_queue:
                properties.headers = dead_letter_headers(properties.headers, self.pool, message.attempt, error)
                self._publish_channel.basic_publish("", self.pool.dead_letter_queue, message.body,
                                                    encodable(properties), mandatory=True)
                outcome = Outcome.DEAD_LETTERED
            else:
                log.error("Task %s dropped after %d attempts (dead_letter_queue is null).",
                          message.message_id or "(no id)", message.attempt)
                outcome = Outcome.FAILED
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError,
                pika.exceptions.ChannelClosedByBroker) as exc:  # a copy refused (e.g. larger than max_message_size)
            task.route_failures += 1
            if task.route_failures < ROUTE_ATTEMPTS:
                # Not a requeue: its redelivery would come at once, count as an
                # attempt, and fail the same way, burning every retry in a few ms.
                delay = backoff.exponential(task.route_failures, ROUTE_RETRY_INITIAL, ROUTE_RETRY_MAX)
                log.warning("Could not republish task %s (%s); trying again in %.1f s.",
                            message.message_id or "(no id)", exc, delay)
                self._reopen_publish_channel()
                self.held.add(task)
                self._connection.call_later(delay, functools.partial(self._retry_held, task))
                return None
            log.error("Could not republish task %s (%s); returning it to the queue.",
                      message.message_id or "(no id)", exc)
            self._channel.basic_reject(task.delivery_tag, requeue=True)  # counts toward a quorum delivery limit on 4.3 (a nack does not)
            return Outcome.FAILED
        if self._finished:  # its redelivery must not make a second copy
            self._finished(message.properties)
        self._channel.basic_ack(task.delivery_tag)
        return outcome

    def _retry_held(self, task: Task) -> None:
        """A timer's callback: try a refused republish again, unless the task was
        forgotten with its channel meanwhile."""
        if task in self.held:
            self.held.discard(task)
            self._settle_again(task)

    def _reopen_publish_channel(self) -> None:
        """A channel that a quorum queue nacked during a leader election may go
        on nacking every publish to it (RabbitMQ 3.10); a new channel does not."""
        try:
            self._publish_channel.close()
        except RECOVERABLE:
            pass
        self._publish_channel = self._connection.channel()
        self._publish_channel.confirm_delivery()


def retry_delay(pool: PoolConfig, attempt: int) -> float:
    """Seconds before the retry that follows failed attempt ``attempt`` (1-based)."""
    delay = pool.retry_delay
    # The exponent is capped: factor ** 64 already exceeds any max (factor >= 2), and
    # a huge attempt count (max_retries is the operator's) must not overflow a float.
    return min(delay.max, delay.initial * delay.factor ** min(attempt - 1, 64))


def delay_queue(pool: PoolConfig, delay: float):
    """Name and declare-arguments of the delay queue for ``delay`` seconds."""
    delay_ms = max(1, int(round(delay * 1000)))
    name = f"{pool.queue}.delay.{delay_ms}"
    arguments = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": pool.queue,
        "x-expires": delay_ms * 2 + 60_000,
    }
    if pool.queue_type == "quorum":
        # Replicated like the work queue, so that a retry survives the loss of
        # the node it waits on; at-least-once dead-lettering (which needs
        # reject-publish) removes it only once the work queue confirmed it.
        arguments.update({"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                          "x-overflow": "reject-publish"})
    return name, arguments, delay_ms


def jittered_expiration(delay_ms: int) -> str:
    return str(int(delay_ms * (1 - JITTER * random.random())))


def copy_properties(properties):
    """The properties of a retried or dead-lettered copy: persistent, and
    without ``expiration`` (a dead letter must stay; a retry gets its own)."""
    copied = republished_properties(properties)
    copied.delivery_mode = pika.DeliveryMode.Persistent.value
    copied.expiration = None
    return copied


def republished_properties(properties):
    """A copy of a delivery's properties (the handler's message keeps its own)
    that wqd may publish: without ``user_id`` (the broker refuses it unless it
    is wqd's own user, closing the channel), the CC/BCC headers (they would
    route the copy to other queues as well) and the headers the broker owns
    (x-delivery-count, x-death, x-first-death-*, x-last-death-*: they describe
    the original's path; RabbitMQ 3.x would build on a copied x-death, and a
    stale x-delivery-count would count the copy's attempts wrong)."""
    copied = copy.copy(properties)
    copied.user_id = None
    if isinstance(copied.headers, dict) and any(_not_copied(name) for name in copied.headers):
        copied.headers = {name: value for name, value in copied.headers.items() if not _not_copied(name)}
    return copied


def _not_copied(name) -> bool:
    return name in ("CC", "BCC", "x-delivery-count", "x-death") or (
        isinstance(name, str) and name.startswith(("x-first-death-", "x-last-death-")))


def encodable(properties):
    """``properties``, or, when a header value cannot be encoded again (one pika
    decoded from another client's type), a copy without those values."""
    try:
        properties.encode()
        return properties
    except Exception:  # whatever pika's encoder raises: struct.error, TypeError, its own
        pass
    copied = copy.copy(properties)
    copied.headers = {}
    for name, value in (properties.headers or {}).items():
        try:
            pika.data.encode_value([], value)
        except Exception:
            log.warning("Dropping header %r from the copy of a message: it cannot be encoded again.", name)
            continue
        copied.headers[name] = value
    return copied


def dead_letter_headers(headers: dict, pool: PoolConfig, attempts: int, exc: BaseException) -> dict:
    """The original headers plus why the message was given up on; without the
    counts of its last lineage, so a copy shovelled back starts over."""
    updated = lost_attempts.without_lineage(headers)
    updated.update({
        "x-wqd-exception": type(exc).__name__,
        "x-wqd-error": str(exc)[:1000],
        "x-wqd-traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
        "x-wqd-attempts": attempts,
        "x-wqd-pool": pool.name,
        "x-wqd-queue": pool.queue,
        "x-wqd-host": socket.gethostname(),
        "x-wqd-failed-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return updated
