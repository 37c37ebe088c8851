"""One worker's AMQP session and its tasks, run on the worker's consumer thread.

It connects, declares the queue, sets prefetch, consumes with manual acks,
and for each delivery runs the handler and then acks, retries or
dead-letters it (routing.py), on this one thread: the ack leaves the moment
the handler returns. While a handler runs, the ConnectionKeeper serves the
connection.
A lost connection is reopened with backoff; since the thread that runs the
handler is the one that reconnects, a task is always settled (or counted
failed, the broker having requeued it) on the connection it came from.
"""

import collections
import inspect
import logging
import os
import threading
from time import perf_counter

from wqd import backoff
from wqd.broker import amqp, header_decoding, pika_transport, queues
from wqd.broker.amqp import RECOVERABLE
from wqd.config import redact_url
from wqd.ipc import reporting
from wqd.ipc.task_stats import Outcome
from wqd.ipc.worker_record import SETTLE_TIMEOUT
from wqd.message import Message
from wqd.redelivery.accounting import WorkerAccounts
from wqd.redelivery.lost_attempts import WorkerLost
from wqd.worker.connection_keeper import ConnectionKeeper
from wqd.worker.refused_copies import MAX_PARKED
from wqd.worker.routing import Router, Task

log = logging.getLogger("wqd.worker")

RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0


class Consumer:
    def __init__(self, context, reporter: reporting.Reporter):
        """``context``: the worker's WorkerContext (worker.py)."""
        header_decoding.install()  # a header pika cannot decode must not cost the connection
        self.pool = context.pool
        self.broker = context.broker
        self.handler = context.handler
        self.worker_name = context.name
        self.reporter = reporter
        self.record = context.record  # the worker's shared-memory record, read by the master
        self.keeper = ConnectionKeeper()
        # "Been here before?": asked once per delivery; while it waits for the
        # master, the keeper serves the connection.
        self.accounts = WorkerAccounts(context, reporter, while_waiting=self.keeper)
        self.router = Router(self.pool, self.accounts, self.record)
        self._stop_reason = None
        self._quiet = False  # the master's quiet switch, as last seen: no consumer, connection kept
        self._wake = threading.Event()
        self._channel = None
        self._consumer_tag = None
        self._broker_version = ()  # of the broker connected to, e.g. (4, 3, 6)
        self._cancelled_by_broker = False  # the consumer was cancelled: the channel is to be replaced
        # Workers spread over the broker URLs (cluster nodes) by slot, and
        # move on to the next URL when a connection fails.
        self._url_index = (context.slot - 1) % len(self.broker.urls)
        self._slot = context.slot
        self._timeout_checked = False  # the consumer-timeout warning: the pool's first worker, once
        self._deliveries = collections.deque()  # received, not started (more than one at prefetch > 1)
        self._tasks_done = 0
        self._recycles = bool(self.pool.max_tasks_per_child or self.pool.max_memory_per_child)
        # A handler that ran longer than this leaves less than SETTLE_TIMEOUT of
        # its time_limit for the ack or the copy: the record says it is settling.
        self._settling_after = None if self.pool.time_limit is None else self.pool.time_limit - SETTLE_TIMEOUT
        self._failures = 0  # consecutive connection failures, for the reconnect backoff
        self.tracing = None  # tracing: enabled: a TaskTracing (tracing.py, imported only then)
        if context.tracing:
            from wqd import tracing
            self.tracing = tracing.TaskTracing(self.pool, self.worker_name)

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

    def set_quiet(self, quiet: bool) -> None:
        """Quiet: cancel the consumer once the current task is settled, keep the
        connection; not quiet: consume again."""
        if quiet != self._quiet:
            self._quiet = quiet
            self.keeper.interrupt()

    # -- consumer thread; it holds the connection's lock except while a handler runs --

    def run(self) -> None:
        """Consume until asked to stop. Raises queues.QueueMismatch (a ConfigError)."""
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
        if self.tracing is not None:  # the spans of the last tasks
            self.tracing.shutdown()

    def _open(self) -> None:
        self.keeper.connection = amqp.connect(
            self.broker, self.broker.urls[self._url_index], name=f"wqd worker {self.worker_name} pid {os.getpid()}")
        pika_transport.install(self._connection)  # an ack leaves in basic_ack itself; a delivery costs one recv
        self._broker_version = amqp.server_version(self._connection)[1]
        notes = "; ".join(amqp.server_notes(self._broker_version))
        log.info("Connected to %s at %s%s.", amqp.describe_server(self._connection),
                 redact_url(self.broker.urls[self._url_index]), f" ({notes})" if notes else "")
        if self._slot == 1 and not self._timeout_checked:  # one line per pool, at its first connection
            self._timeout_checked = True
            for warning in (queues.consumer_timeout_warning(self.pool, self._broker_version),
                            queues.passive_warning(self.pool)):
                if warning:
                    log.warning("%s", warning)
        queues.declare_pool_queues(self._connection, self.pool, self._broker_version)
        self._open_channel()
        self.reporter.send(reporting.CONNECTED)

    def _open_channel(self) -> None:
        self._channel = self._connection.channel()
        self._channel.basic_qos(prefetch_count=self.pool.prefetch)
        self._channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        self.router.open(self._connection, self._channel)

    def _serve(self) -> None:
        """Run deliveries and dispatch broker events until stopped (or the connection fails)."""
        while True:
            if self._cancelled_by_broker:
                self._renew_channel()
            if self._stop_reason is not None:
                self._cancel_consumer()
                if not self.router.held:
                    break
            elif self._quiet:
                if self._consumer_tag is not None:
                    self._cancel_consumer()
                    log.info("Quiet: consumer cancelled; connected, consuming nothing until SIGCONT.")
                    self.reporter.send(reporting.CONNECTED)
            elif self._consumer_tag is None:
                self._consumer_tag = self._channel.basic_consume(
                    self.pool.queue, on_message_callback=self._on_delivery,
                    arguments=queues.consumer_arguments(self.pool, self._broker_version))
                self._failures = 0  # reset only once consuming works, as pika's examples do
                log.info("Consuming from %r (prefetch %d).", self.pool.queue, self.pool.prefetch)
                self.reporter.send(reporting.CONSUMING)
            if self.router.parked_news and not self._deliveries:
                self._parked()
            if self._recycles and self.router.settled != self._tasks_done:
                self._check_recycle()
            if self._deliveries:
                self._handle(*self._deliveries.popleft())
            else:
                self._connection.process_data_events(time_limit=None)  # until an event is dispatched
        self._connection.close()
        self.keeper.connection = None

    def _on_cancelled_by_broker(self, method_frame) -> None:
        """The queue was deleted, or (RabbitMQ 4.3+, quorum queues) a delivery
        outlived its consumer timeout. 4.3 then returns the delivery to the
        queue but keeps the consumer suspended on the channel: an ack of it is
        not honoured, and it sends the delivery again to the consumer it
        cancelled. So the channel is only marked here (on whichever thread
        serves the connection); nothing more is settled on it, and the
        consumer thread replaces it (_renew_channel)."""
        self._cancelled_by_broker = True

    def _renew_channel(self) -> None:
        """A new channel and consumer after the broker cancelled ours, the
        queues declared again (one may have been deleted). Closing the old
        channel gives its deliveries, started or not, back to the broker."""
        self._cancelled_by_broker = False
        self._deliveries.clear()
        self.router.forget()
        old, self._channel, self._consumer_tag = self._channel, None, None
        old.close()
        queues.declare_pool_queues(self._connection, self.pool, self._broker_version)
        self._open_channel()
        log.warning("The broker cancelled the consumer on %r (the queue was deleted, or a delivery outlived its "
                    "consumer timeout: %s); consuming again on a new channel.",
                    self.pool.queue, amqp.CONSUMER_TIMEOUT_ADVICE)

    def _cancel_consumer(self) -> None:
        if self._consumer_tag is None:
            return
        self._channel.basic_cancel(self._consumer_tag)
        self._consumer_tag = None
        while self._deliveries:
            method, properties, body = self._deliveries.popleft()
            self.router.return_unstarted(method.delivery_tag, properties, body)

    def _discard_connection(self) -> None:
        """Forget a broken connection; its unacked deliveries are the broker's again."""
        connection, self.keeper.connection = self.keeper.connection, None
        self._consumer_tag = None
        self._deliveries.clear()
        self.router.forget()
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
        if self.tracing is not None:
            self.tracing.run(method, task, self._run)
        else:
            self._run(task)

    def _run(self, task: Task):
        """Run the handler, then settle the task; return its outcome (None while held)."""
        self.record.task_started(task.key)
        with self.keeper:  # the connection is the keeper's while the handler runs
            started = perf_counter()
            try:
                result = self.handler(task.message)
                if result is not None:  # the one check a plain handler's None costs
                    task.error = handler_result_error(result)
            except BaseException as exc:  # a handler's failure, whatever it raised, is the task's
                task.error = exc
            task.duration = perf_counter() - started
        if self._settling_after is not None and task.duration > self._settling_after:
            self.record.task_settling()  # else the master's time_limit could kill the worker mid-ack
        return self._settle(task)

    def _task(self, method, properties, body):
        """The Task for a delivery; None when it is not to run (returned, or lost too often)."""
        seen = self.accounts.assess(method.redelivered, properties, body)
        max_attempts = self.accounts.max_attempts
        message = Message(body, properties, method.redelivered, seen.attempt,
                          self.pool.queue, self.pool.name, self.worker_name)
        task = Task(method.delivery_tag, message, seen.key, seen.lost)
        if method.redelivered:
            self.record.redelivered()
        if seen.duplicate:  # its ack was lost, or it was published twice: not run again
            log.info("Task %s already finished here; acking its %s without running it (duplicate).",
                     message.message_id, "redelivery" if method.redelivered else "copy published again")
            self._channel.basic_ack(method.delivery_tag)
            self.record.task_finished(Outcome.DUPLICATE)
            return None
        if self._stop_reason is not None:
            self.router.return_unstarted(method.delivery_tag, properties, body)
            return None
        if seen.attempt > max_attempts:
            # It was lost (or parked: its copies refused, said once) on every
            # attempt so far: give up without running it again, so a poison
            # message cannot take the pool down.
            task.error = self.router.parking.refused(seen.key)
            if task.error is None:
                task.error = WorkerLost(_lost_reason(self.pool.queue_type, seen.lost))
                log.warning("Task %s given up without running it again: %s.", message.message_id or seen.key,
                            task.error)
            message.attempt = max_attempts  # the last attempt that ran
            self._settle(task)
            return None
        return task

    def _settle(self, task: Task):
        """Ack, retry or dead-letter a finished task (routing.py); return its
        outcome (None while held: the router retries it and books it)."""
        if task.error is None:  # the handler returned: recorded before anything can lose the ack
            self.accounts.finishing(task.message.properties)
        if self._cancelled_by_broker:  # while the handler ran
            return self._leave_to_broker(task)
        try:
            if self.keeper.error is not None or self._channel.is_closed:  # while the handler ran
                error = self.keeper.take_error() or amqp.broker_closed(self._channel)
                if error is not None:  # the connection failed, or the broker closed the channel
                    raise error
            return self.router.settle(task)
        except RECOVERABLE:
            log.warning("Task %s finished after its connection was lost; not acking it: "
                        "the broker has requeued it.", task.message.message_id or task.delivery_tag)
            self.record.task_finished(Outcome.FAILED, task.duration)
            raise

    def _leave_to_broker(self, task: Task):
        """A task whose consumer the broker cancelled while it ran: its delivery
        is the broker's again, so it is not settled here. A success was
        recorded as finished, so its redelivery is acked as a duplicate
        (where duplicate suppression knows it: a message id)."""
        log.warning("Task %s finished after the broker cancelled its consumer; not settling it: the broker has "
                    "requeued it%s.", task.message.message_id or task.delivery_tag,
                    "" if task.error is not None else ", and duplicate suppression acks its redelivery")
        outcome = Outcome.SUCCEEDED if task.error is None else Outcome.FAILED
        self.record.task_finished(outcome, task.duration)
        return outcome
    def _parked(self) -> None:
        """A task was parked (no copy of it could be made, refused_copies.py):
        the consumer is cancelled; _serve consumes anew, and a new consumer
        has a prefetch window of its own, as the parked delivery keeps its
        slot until its hold ends and the next messages must not wait. Only
        once no delivery waits here: giving them back would republish them."""
        self.router.parked_news = False
        if len(self.router.parking) <= MAX_PARKED:
            self._cancel_consumer()

    def _check_recycle(self) -> None:
        """After a task was settled (the router counts them)."""
        self._tasks_done = self.router.settled
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


class HandlerResultNotRun(Exception):
    """The handler returned a coroutine, generator or other awaitable: its body
    never ran, so the task must not count as done."""


def handler_result_error(result):
    """The error for a handler's return value, or None when it is a plain
    value (ignored, as it always was). An unrun body is closed, so Python
    does not warn that a coroutine was never awaited."""
    if not (inspect.isawaitable(result) or inspect.isgenerator(result) or inspect.isasyncgen(result)):
        return None
    close = getattr(result, "close", None)
    if callable(close):
        close()
    return HandlerResultNotRun(
        f"the handler returned a {type(result).__name__} instead of running: its body never ran "
        f"(wqd calls handlers synchronously: an async def or generator handler must be a plain function)")


def _lost_reason(queue_type: str, lost: int) -> str:
    """Why a task is given up on without running, in words true to what is known."""
    if queue_type == "quorum":
        # The broker counts deliveries that were not settled: a worker's death
        # and a dropped connection look the same to it.
        return (f"the task was delivered {lost} times without being settled: its worker died "
                f"or lost its broker connection each time")
    return f"the worker running the task died on each of its last {lost} attempts"


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
