"""One worker's AMQP session and its tasks, run on the worker's consumer thread.

It connects, declares the queue, sets prefetch, consumes with manual acks,
and for each delivery runs the handler and then acks, retries or
dead-letters, on this one thread: the ack leaves the moment the handler
returns. While a handler runs, the ConnectionKeeper serves the connection.
A lost connection is reopened with backoff; since the thread that runs the
handler is the one that reconnects, a task is always settled (or counted
failed, the broker having requeued it) on the connection it came from.
"""

import collections
import functools
import hashlib
import logging
import os
import threading
import time

import pika
import pika.exceptions

from wqd import amqp, backoff, reporting, retry
from wqd.connection_keeper import ConnectionKeeper
from wqd.errors import ConfigError
from wqd.message import ATTEMPT_HEADER, LOST_HEADER, Message, Reject

log = logging.getLogger("wqd.worker")

RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0

# How long a redelivery waits for the master's count of its lost attempts.
LOST_QUERY_TIMEOUT = 2.0
# A retry or dead letter the broker refuses (nack, e.g. while a quorum queue
# elects a new leader) is published again after a backoff, the original held
# unacked meanwhile; after this many refusals the original goes back to the queue.
ROUTE_ATTEMPTS = 6
ROUTE_RETRY_INITIAL = 0.5
ROUTE_RETRY_MAX = 8.0
# Errors after which a fresh connection is the cure.
RECOVERABLE = (pika.exceptions.AMQPError, OSError)


class WorkerLost(Exception):
    """An attempt that ended with its worker, not with the handler's return or raise."""


class QueueMismatch(ConfigError):
    """The queue exists with other arguments: a configuration error, not a crash."""


class Task:
    __slots__ = ("delivery_tag", "message", "key", "lost_total", "duration", "error", "route_failures")

    def __init__(self, delivery_tag, message, key, lost_total=0):
        self.delivery_tag = delivery_tag
        self.message = message
        self.key = key  # message_id, or a hash of the body: identifies it across deliveries
        self.lost_total = lost_total  # the master's count of attempts lost with a worker
        self.duration = None  # seconds the handler ran; None when it did not run
        self.error = None
        self.route_failures = 0  # republishes (retry or dead letter) the broker refused


class Consumer:
    def __init__(self, context, reporter: reporting.Reporter, lost_attempts: reporting.LostAttempts):
        """``context``: the worker's WorkerContext (worker.py)."""
        self.pool = context.pool
        self.broker = context.broker
        self.handler = context.handler
        self.worker_name = context.name
        self.reporter = reporter
        self.record = context.record  # the worker's shared-memory record, read by the master
        self.lost_attempts = lost_attempts  # message key -> attempts lost with their worker
        self.keeper = ConnectionKeeper()
        self._stop_reason = None
        self._wake = threading.Event()
        self._channel = None
        self._publish_channel = None
        self._consumer_tag = None
        # Workers spread over the broker URLs (cluster nodes) by slot, and
        # move on to the next URL when a connection fails.
        self._url_index = (context.slot - 1) % len(self.broker.urls)
        self._deliveries = collections.deque()  # received, not started (more than one at prefetch > 1)
        self._held = set()  # failed tasks whose republish the broker refused, to be tried again
        self._tasks_done = 0
        self._failures = 0  # consecutive connection failures, for the reconnect backoff

    @property
    def _connection(self):
        """The open connection, or None. The keeper holds it: it serves it too."""
        return self.keeper.connection

    # -- any thread --

    def request_stop(self, reason: str) -> None:
        """Stop consuming, finish the current task, ack it, close, return from run()."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.info("Stopping (%s): finishing the current task first.", reason)
        self._wake.set()
        self.keeper.interrupt()

    # -- consumer thread; it holds the connection's lock except while a handler runs --

    def run(self) -> None:
        """Consume until asked to stop. Raises QueueMismatch (a ConfigError)."""
        self.keeper.lock.acquire()
        self.keeper.start()
        while self._stop_reason is None:
            try:
                self._open()
                self._serve()
            except RECOVERABLE as exc:
                self._failures += 1
                delay = backoff.exponential(self._failures, RECONNECT_INITIAL, RECONNECT_MAX, jitter=0.5)
                reason = amqp.describe_error(exc, self.broker.urls[self._url_index])
                self._url_index = (self._url_index + 1) % len(self.broker.urls)
                log.warning("Broker connection lost or refused: %s; reconnecting in %.1f s.", reason, delay)
                self.reporter.send(reporting.DISCONNECTED, reason=reason)
                self._discard_connection()
                self._wake.wait(delay)
                self._wake.clear()
        self._discard_connection()

    def _open(self) -> None:
        self.keeper.connection = amqp.connect(
            self.broker, self.broker.urls[self._url_index], name=f"wqd worker {self.worker_name} pid {os.getpid()}")
        self._channel = self._connection.channel()
        self._declare(self._channel, self.pool.queue, amqp.queue_arguments(self.pool.queue_type))
        if self.pool.dead_letter_queue:
            self._declare(self._channel, self.pool.dead_letter_queue,
                          amqp.queue_arguments(self.pool.queue_type))
        self._channel.basic_qos(prefetch_count=self.pool.prefetch)
        self._channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        self._publish_channel = self._connection.channel()
        self._publish_channel.confirm_delivery()
        self.reporter.send(reporting.CONNECTED)

    def _declare(self, channel, queue: str, arguments) -> None:
        try:
            channel.queue_declare(queue=queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                raise QueueMismatch(
                    f"Configuration error in pool {self.pool.name!r}: queue {queue!r} already exists "
                    f"with other arguments than wqd declares (durable=True, queue_type="
                    f"{self.pool.queue_type}); the broker said: {exc.reply_text}. Change the pool's "
                    f"queue_type or queue name to match, or delete the queue. The pool is not restarted."
                ) from None
            raise

    def _serve(self) -> None:
        """Run deliveries and dispatch broker events until stopped (or the connection fails)."""
        while True:
            if self._stop_reason is not None:
                self._cancel_consumer()
                if not self._held:
                    break
            elif self._consumer_tag is None:
                self._consumer_tag = self._channel.basic_consume(
                    self.pool.queue, on_message_callback=self._on_delivery)
                self._failures = 0  # reset only once consuming works, as pika's examples do
                log.info("Consuming from %r (prefetch %d).", self.pool.queue, self.pool.prefetch)
                self.reporter.send(reporting.CONSUMING)
            if self._deliveries:
                self._handle(*self._deliveries.popleft())
            else:
                self._connection.process_data_events(time_limit=None)  # until an event is dispatched
        self._connection.close()
        self.keeper.connection = None

    def _on_cancelled_by_broker(self, method_frame) -> None:
        """The queue was deleted, or (RabbitMQ 4.3+) a delivery-ack timeout hit:
        start over with a fresh connection, which re-declares the queue."""
        raise pika.exceptions.ConsumerCancelled(
            f"the broker cancelled the consumer on {self.pool.queue!r} (queue deleted or ack timeout)")

    def _cancel_consumer(self) -> None:
        if self._consumer_tag is None:
            return
        self._channel.basic_cancel(self._consumer_tag)
        self._consumer_tag = None
        while self._deliveries:
            method, properties, body = self._deliveries.popleft()
            self._return_unstarted(method.delivery_tag, properties, body)

    def _discard_connection(self) -> None:
        """Forget a broken connection; its unacked deliveries are the broker's again."""
        connection, self.keeper.connection = self.keeper.connection, None
        self._consumer_tag = None
        self._deliveries.clear()
        self._held.clear()  # their republish timers went with the connection
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except RECOVERABLE:
                pass

    def _on_delivery(self, channel, method, properties, body) -> None:
        """Runs on whichever thread serves the connection: only queue the delivery."""
        self._deliveries.append((method, properties, body))

    def _handle(self, method, properties, body) -> None:
        task = self._task(method, properties, body)
        if task is None:
            return
        self.record.task_started(task.key)
        with self.keeper:  # the connection is the keeper's while the handler runs
            started = time.perf_counter()
            try:
                self.handler(task.message)
            except BaseException as exc:  # a handler's failure, whatever it raised, is the task's
                task.error = exc
            task.duration = time.perf_counter() - started
        self._settle(task)

    def _task(self, method, properties, body):
        """The Task for a delivery; None when it is not to run (returned, or lost too often)."""
        headers = properties.headers or {}
        key = properties.message_id or message_key(body)
        # Attempts that ended with their worker (crash, SIGKILL, time_limit):
        # quorum queues count them in x-delivery-count; for classic queues the
        # master counts deaths per message and tells every worker.
        # A retried copy carries in LOST_HEADER the master's count it already
        # folded into its attempt header.
        if "x-delivery-count" in headers:
            lost_total = lost = int(headers["x-delivery-count"])
        else:
            lost_total = self._lost_total(key, method.redelivered)
            lost = max(0, lost_total - int(headers.get(LOST_HEADER, 0)))
        attempt = int(headers.get(ATTEMPT_HEADER, 1)) + lost
        message = Message(body, properties, method.redelivered, attempt,
                          self.pool.queue, self.pool.name, self.worker_name)
        task = Task(method.delivery_tag, message, key, lost_total)
        if method.redelivered:
            self.record.redelivered()
        if self._stop_reason is not None:
            self._return_unstarted(method.delivery_tag, properties, body)
            return None
        if attempt > self.pool.max_retries + 1:
            # It killed its worker on every attempt so far: give up without
            # running it again, so a poison message cannot take the pool down.
            task.error = WorkerLost(f"the worker running this task died on each of its last {lost} attempts")
            log.warning("Task %s was lost with its worker %d times; dead-lettering it.",
                        message.message_id or key, lost)
            message.attempt -= 1  # the last attempt that ran
            self._settle(task)
            return None
        return task

    def _lost_total(self, key: str, redelivered: bool) -> int:
        if not redelivered:
            return self.lost_attempts.get(key)
        with self.keeper:  # the master's answer may take a while: the keeper serves the connection
            return self.lost_attempts.ask(key, self.reporter, LOST_QUERY_TIMEOUT)

    def _return_unstarted(self, delivery_tag, properties, body) -> None:
        """Give a delivery that never started back as it came, not as a redelivery
        (a redelivery would count as a failed attempt)."""
        self._publish_channel.basic_publish("", self.pool.queue, body, properties, mandatory=True)
        self._channel.basic_ack(delivery_tag)

    def _settle(self, task: Task) -> None:
        """Ack, retry or dead-letter a finished task."""
        try:
            error = self.keeper.take_error()
            if error is not None:  # the connection failed while the handler ran
                raise error
            outcome = self._ack_or_route(task)
        except RECOVERABLE:
            log.warning("Task %s finished after its connection was lost; not acking it: "
                        "the broker has requeued it.", task.message.message_id or task.delivery_tag)
            self.record.task_finished("failed", task.duration)
            raise
        if outcome is None:  # held until the republish is tried again
            return
        self.record.task_finished(outcome, task.duration)
        self._tasks_done += 1
        self._check_recycle()

    def _ack_or_route(self, task: Task):
        if task.error is None:
            self._channel.basic_ack(task.delivery_tag)
            return "succeeded"
        if not task.route_failures and task.duration is not None:  # the handler ran and failed
            log.warning("Task %s failed on attempt %d: %s: %s", task.message.message_id or "(no id)",
                        task.message.attempt, type(task.error).__name__, task.error)
        return self._route_failure(task)

    def _settle_held(self, task: Task) -> None:
        """A timer's callback: try a refused republish again."""
        self._held.discard(task)
        self._settle(task)

    def _route_failure(self, task: Task) -> str:
        """Send a failed attempt to a delay queue or the dead-letter queue (publisher
        confirms), then ack the original; return the outcome."""
        message, error = task.message, task.error
        final = isinstance(error, (Reject, WorkerLost)) or message.attempt > self.pool.max_retries
        properties = message.properties
        try:
            if not final:
                delay = retry.retry_delay(self.pool, message.attempt)
                queue, arguments, delay_ms = retry.delay_queue(self.pool, delay)
                self._publish_channel.queue_declare(queue=queue, durable=True, arguments=arguments)
                properties = _copy_properties(properties, retry.retry_headers(properties.headers, message.attempt, task.lost_total))
                properties.expiration = retry.jittered_expiration(delay_ms)
                properties.delivery_mode = pika.DeliveryMode.Persistent.value
                self._publish_channel.basic_publish("", queue, message.body, properties, mandatory=True)
                outcome = "retried"
            elif self.pool.dead_letter_queue:
                headers = retry.dead_letter_headers(properties.headers, self.pool, message.attempt, error)
                self._publish_channel.basic_publish("", self.pool.dead_letter_queue, message.body,
                                                    _copy_properties(properties, headers), mandatory=True)
                outcome = "dead_lettered"
            else:
                log.error("Task %s dropped after %d attempts (dead_letter_queue is null).",
                          message.message_id or "(no id)", message.attempt)
                outcome = "failed"
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            task.route_failures += 1
            if task.route_failures < ROUTE_ATTEMPTS:
                # Not a requeue: its redelivery would come at once, count as an
                # attempt, and fail the same way, burning every retry in a few ms.
                delay = backoff.exponential(task.route_failures, ROUTE_RETRY_INITIAL, ROUTE_RETRY_MAX)
                log.warning("Could not republish task %s (%s); trying again in %.1f s.",
                            message.message_id or "(no id)", exc, delay)
                self._reopen_publish_channel()
                self._held.add(task)
                self._connection.call_later(delay, functools.partial(self._settle_held, task))
                return None
            log.error("Could not republish task %s (%s); returning it to the queue.",
                      message.message_id or "(no id)", exc)
            self._channel.basic_nack(task.delivery_tag, requeue=True)
            return "failed"
        self._channel.basic_ack(task.delivery_tag)
        return outcome

    def _reopen_publish_channel(self) -> None:
        """A channel that a quorum queue nacked during a leader election may go
        on nacking every publish to it (RabbitMQ 3.10); a new channel does not."""
        try:
            self._publish_channel.close()
        except RECOVERABLE:
            pass
        self._publish_channel = self._connection.channel()
        self._publish_channel.confirm_delivery()

    def _check_recycle(self) -> None:
        limit = self.pool.max_tasks_per_child
        if limit and self._tasks_done >= limit:
            self._recycle(f"max_tasks_per_child={limit} reached")
        memory_limit = self.pool.max_memory_per_child
        if memory_limit and _rss_mib() > memory_limit:
            self._recycle(f"RSS above max_memory_per_child={memory_limit} MiB")

    def _recycle(self, reason: str) -> None:
        if self._stop_reason is None:
            self.reporter.send(reporting.RECYCLING, reason=reason)
            self.request_stop(f"recycling: {reason}")


def _copy_properties(properties, headers):
    """The same properties with new headers (the original object is left alone)."""
    return pika.BasicProperties(
        content_type=properties.content_type, content_encoding=properties.content_encoding,
        headers=headers, delivery_mode=properties.delivery_mode, priority=properties.priority,
        correlation_id=properties.correlation_id, reply_to=properties.reply_to,
        expiration=properties.expiration, message_id=properties.message_id,
        timestamp=properties.timestamp, type=properties.type, user_id=properties.user_id,
        app_id=properties.app_id, cluster_id=properties.cluster_id)


def message_key(body: bytes) -> str:
    """Identify a message without a message_id (for counting lost attempts)."""
    return "sha1:" + hashlib.sha1(body).hexdigest()


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
