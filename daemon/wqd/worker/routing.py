"""Where a finished task's delivery goes: acked, or a failed attempt republished
to a delay queue (a retry) or to the dead-letter queue, then acked.

A retry is republished to ``<queue>.delay.<ms>``, a durable queue with no
consumers whose messages expire (per-message TTL) and are dead-lettered back
to the work queue. One delay queue per delay keeps expiry FIFO-correct, and
``x-expires`` removes a delay queue nobody has used for a while.

Republishes go through a channel of their own with publisher confirms, and the
original is acked only once the broker confirmed the copy. A copy the broker
refuses for now (a nack, e.g. while a quorum queue elects a new leader) is
published again after a backoff, the original held unacked meanwhile. A copy
it refuses for good, or ROUTE_ATTEMPTS times, is dealt with in
refused_copies.py: the queue declared again, the message dead-lettered
instead of retried, or the original parked and returned to its queue. The
original is never acked without its copy.
"""

import functools
import logging
import random
import socket
import time
import traceback

import pika
import pika.data
import pika.exceptions

from wqd import backoff
from wqd.broker import queues
from wqd.broker.amqp import RECOVERABLE
from wqd.broker.copies import copy_properties, encodable, republished_properties
from wqd.config import PoolConfig
from wqd.ipc.task_stats import Outcome
from wqd.message import Reject
from wqd.redelivery import headers, lost_attempts
from wqd.worker import refused_copies
from wqd.worker.refused_copies import RetryImpossible, Uncopyable

log = logging.getLogger("wqd.worker")

JITTER = 0.1  # a retry waits between 90% and 100% of its computed delay
ROUTE_ATTEMPTS = 6
ROUTE_RETRY_INITIAL = 0.5
ROUTE_RETRY_MAX = 8.0
# How the broker refuses a copy: a nack, a return (no such queue), a closed channel.
REFUSALS = (pika.exceptions.UnroutableError, pika.exceptions.NackError, pika.exceptions.ChannelClosedByBroker)
# Looked up once, as every successful task returns it: reading an enum member
# off its class costs about 90 ns on Python 3.11, a module global about 10 ns.
_SUCCEEDED = Outcome.SUCCEEDED


class Task:
    __slots__ = ("delivery_tag", "message", "key", "lost", "duration", "error", "route_failures", "retry_refused",
                 "parked")

    def __init__(self, delivery_tag, message, key, lost=0):
        self.delivery_tag = delivery_tag
        self.message = message
        self.key = key  # message_id, or a hash of the body: identifies it across deliveries
        self.lost = lost  # attempts of this delivery's lineage lost with a worker
        self.duration = None  # seconds the handler ran; None when it did not run
        self.error = None
        self.route_failures = 0  # republishes (retry or dead letter) the broker refused
        self.retry_refused = None  # why no retry copy can be made: dead-lettered instead
        self.parked = False  # no copy could be made: held, then returned to its queue


class Router:
    """Settles tasks on one connection; opened again with every new connection."""

    def __init__(self, pool: PoolConfig, accounts, record):
        """``accounts``: the worker's redelivery accounting (accounting.py),
        told of a failed attempt whose copy the broker confirmed (or that was
        dropped) before the original's ack, and of every settled task;
        ``record``: the worker's WorkerRecord, where each outcome is counted."""
        self.pool = pool
        self._accounts = accounts
        self._record = record
        self.settled = 0  # tasks settled so far (the consumer's max_tasks_per_child)
        self.parked_news = False  # a task was parked since the consumer last looked
        self._connection = None
        self._channel = None  # the consuming channel: acks and nacks go on it
        self._publish_channel = None
        self.held = set()  # failed tasks whose republish the broker refused, to be tried again
        self.parking = refused_copies.Parking()  # originals no copy of which could be made
        self._frame_max = None  # the connection's, as negotiated: a copy's header block must fit one frame

    def open(self, connection, channel) -> None:
        self._connection = connection
        self._channel = channel
        self._publish_channel = connection.channel()
        self._publish_channel.confirm_delivery()
        self._frame_max = connection._impl.params.frame_max  # pika stores the negotiated value only there

    def forget(self) -> None:
        """The connection is gone: its unacked deliveries, and the held tasks'
        republish timers, went with it."""
        self._connection = self._channel = self._publish_channel = None
        self.held.clear()
        self.parking.forget()

    def return_unstarted(self, delivery_tag, properties, body) -> None:
        """Give a delivery that never started back as it came, not as a redelivery
        (a redelivery would count as a failed attempt). One the broker refuses
        as a copy (a body over max_message_size) goes back as a redelivery."""
        try:
            self._publish_channel.basic_publish("", self.pool.queue, body,
                                                encodable(republished_properties(properties)), mandatory=True)
        except REFUSALS as exc:
            log.warning("Could not give back delivery %s as it came (%s); returning it as a redelivery.",
                        properties.message_id or delivery_tag, refused_copies.describe(exc))
            self._reopen_publish_channel()
            self._channel.basic_reject(delivery_tag, requeue=True)
            return
        self._channel.basic_ack(delivery_tag)

    def settle(self, task: Task):
        """Ack, retry or dead-letter a finished task; return its Outcome, or None
        while it is held for another republish."""
        if task.error is None:
            self._channel.basic_ack(task.delivery_tag)
            return self._booked(task, _SUCCEEDED)
        if not task.route_failures and task.duration is not None:  # the handler ran and failed
            log.warning("Task %s failed on attempt %d: %s: %s", task.message.message_id or "(no id)",
                        task.message.attempt, type(task.error).__name__, task.error)
        return self._booked(task, self._route_failure(task))

    def _booked(self, task: Task, outcome):
        """A task's end, told to the accounting and counted in the record; None (held) is no end yet."""
        if outcome is None:
            return None
        self._accounts.settled(task.key, task.lost, task.parked)
        if task.parked:
            self._record.copy_refused()
            self.parked_news = True
        self._record.task_finished(outcome, task.duration)
        self.settled += 1
        return outcome

    def _route_failure(self, task: Task):
        """Send a failed attempt to a delay queue or the dead-letter queue (publisher
        confirms), then ack the original; return the outcome."""
        message, error = task.message, task.error
        final = (task.retry_refused is not None or isinstance(error, (Reject, lost_attempts.WorkerLost))
                 or message.attempt > self.pool.max_retries)
        try:
            if not final:
                self._retry(task)
                outcome = Outcome.RETRIED
            elif self.pool.dead_letter_queue:
                self._dead_letter(task)
                log.warning("Task %s dead-lettered to %r after %d attempt%s: %s.", message.message_id or "(no id)",
                            self.pool.dead_letter_queue, message.attempt, "s" if message.attempt != 1 else "",
                            self._why_final(task))
                outcome = Outcome.DEAD_LETTERED
            elif task.retry_refused is not None:  # dropping it before its retries would lose it
                raise Uncopyable(f"no retry copy can be made ({task.retry_refused}) and dead_letter_queue is null")
            else:
                log.error("Task %s dropped after %d attempts (dead_letter_queue is null).",
                          message.message_id or "(no id)", message.attempt)
                outcome = Outcome.FAILED
        except RetryImpossible as exc:
            return self._instead_of_retry(task, str(exc))
        except Uncopyable as exc:
            return self._park(task, str(exc))
        except REFUSALS as exc:
            return self._refused(task, final, exc)
        self._accounts.finishing(message.properties)  # its redelivery must not make a second copy
        self._channel.basic_ack(task.delivery_tag)
        return outcome

    def _why_final(self, task: Task) -> str:
        """Why a failed attempt is its message's last, in words."""
        if task.retry_refused is not None:
            return f"no retry copy can be made ({task.retry_refused})"
        if isinstance(task.error, Reject):
            return "its handler rejected it (wqd.Reject)"
        if isinstance(task.error, lost_attempts.WorkerLost):
            return str(task.error)
        return f"its retries are used up (max_retries {self.pool.max_retries})"

    def _retry(self, task: Task) -> None:
        """Publish the retry copy to its delay queue; RetryImpossible when it cannot be made."""
        message = task.message
        delay = retry_delay(self.pool, message.attempt)
        queue, arguments, delay_ms = delay_queue(self.pool, delay)
        properties = copy_properties(message.properties)
        properties.headers = headers.retry_headers(properties.headers, message.attempt)
        properties.expiration = jittered_expiration(delay_ms)
        properties = encodable(properties)
        refused_copies.check_retry_fits(properties, self._frame_max)
        try:
            self._publish_channel.queue_declare(queue=queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:  # it exists with other arguments, or is not ours
            self._reopen_publish_channel()
            raise RetryImpossible(f"its delay queue {queue!r} cannot be declared: {exc.reply_code} "
                                  f"{exc.reply_text}") from None
        self._publish(queue, arguments, message.body, properties)

    def _dead_letter(self, task: Task) -> None:
        """Publish the dead letter, wqd's headers shortened to fit a frame; Uncopyable when they cannot."""
        message = task.message
        properties = copy_properties(message.properties)
        properties.headers = dead_letter_headers(properties.headers, self.pool, message.attempt, task.error,
                                                 task.retry_refused)
        properties = refused_copies.fit_dead_letter(encodable(properties), self._frame_max)
        self._publish(self.pool.dead_letter_queue, queues.dead_letter_queue_arguments(self.pool), message.body,
                      properties)

    def _publish(self, queue: str, arguments, body: bytes, properties) -> None:
        """Publish a copy, confirmed. A queue deleted since wqd declared it (the
        copy comes back unroutable) is declared again as wqd declares it, and
        the copy published once more."""
        try:
            self._publish_channel.basic_publish("", queue, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            log.warning("Queue %r is gone; declaring it again.", queue)
            self._publish_channel.queue_declare(queue=queue, durable=True, arguments=arguments)
            self._publish_channel.basic_publish("", queue, body, properties, mandatory=True)

    def _refused(self, task: Task, final: bool, exc):
        """The broker refused a copy: try again later, dead-letter instead of
        retrying, or park the original; return the outcome (None while held)."""
        task.route_failures += 1
        message = task.message
        self._reopen_publish_channel()
        if refused_copies.for_good(exc):
            if not final:
                return self._instead_of_retry(task, f"its retry copy was refused: {refused_copies.describe(exc)}")
            return self._park(task, refused_copies.describe(exc))
        if task.route_failures >= ROUTE_ATTEMPTS:
            return self._park(task, f"{refused_copies.describe(exc)}, {task.route_failures} times")
        # Not a requeue: its redelivery would come at once and fail the same way.
        delay = backoff.exponential(task.route_failures, ROUTE_RETRY_INITIAL, ROUTE_RETRY_MAX)
        log.warning("Could not republish task %s (%s); trying again in %.1f s.",
                    message.message_id or "(no id)", refused_copies.describe(exc), delay)
        self.held.add(task)
        self._connection.call_later(delay, functools.partial(self._retry_held, task))
        return None

    def _instead_of_retry(self, task: Task, reason: str):
        """No retry copy can be made: dead-letter the message now, saying why."""
        log.warning("Task %s cannot be retried (%s); trying the dead-letter queue instead.",
                    task.message.message_id or "(no id)", reason)
        task.retry_refused = reason
        return self._route_failure(task)

    def _park(self, task: Task, reason: str):
        """No copy can be made: hold the original, then return it to its queue (refused_copies.py)."""
        hold = refused_copies.hold_seconds(retry_delay(self.pool, task.message.attempt), ran=task.duration is not None)
        self.parking.park(self._connection, self._channel, task, reason, hold)
        task.parked = True
        return Outcome.FAILED

    def _retry_held(self, task: Task) -> None:
        """A timer's callback: try a refused republish again, unless the task was
        forgotten with its channel meanwhile."""
        if task in self.held:
            self.held.discard(task)
            self._booked(task, self._route_failure(task))

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










def dead_letter_headers(original: dict, pool: PoolConfig, attempts: int, exc: BaseException, reason=None) -> dict:
    """The original headers plus why the message was given up on (``reason``:
    why before its last attempt); without the counts of its last lineage, so a
    copy shovelled back starts over."""
    updated = headers.without_lineage(original)
    updated.update({
        headers.EXCEPTION_HEADER: type(exc).__name__,
        headers.ERROR_HEADER: str(exc)[:1000],
        headers.TRACEBACK_HEADER: "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
        headers.ATTEMPTS_HEADER: attempts,
        headers.POOL_HEADER: pool.name,
        headers.QUEUE_HEADER: pool.queue,
        headers.HOST_HEADER: socket.gethostname(),
        headers.FAILED_AT_HEADER: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    if reason is not None:
        updated[headers.REASON_HEADER] = reason[:1000]
    return updated
