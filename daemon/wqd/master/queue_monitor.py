"""Queue depth as the master sees it, polled by a small child process.

The master holds no broker connection for task traffic, and its loop must
never wait on the network: a SIGSTOPped or partitioned broker accepts TCP
connections and then answers nothing, and pika's blocking calls have no
per-call timeout. So the monitoring connection lives in a child process of its
own (title "wqd: queue monitor"): every POLL_INTERVAL seconds it declares each
pool's queue and dead-letter queue passively and reports the counts over a
pipe, one line per poll, as workers report their events. The master only ever
reads that pipe when select() says it is readable, and serves the last counts
as gauges. Counts that are not fresh (the broker is unreachable, the poll
hangs) are dropped, not shown as current: an absent series means "unknown".
"""

import logging
import os
import time

import pika.exceptions
from prometheus_client.core import GaugeMetricFamily
from setproctitle import setproctitle

from wqd import logs
from wqd.backoff import exponential
from wqd.broker import amqp
from wqd.broker.amqp import RECOVERABLE
from wqd.config import redact_url
from wqd.ipc import reporting
from wqd.master.service_child import ServiceChild

log = logging.getLogger("wqd.queue_monitor")

POLL_INTERVAL = 5.0
# Counts older than this are dropped: the monitor is stuck or the broker hangs.
STALE_AFTER = 3 * POLL_INTERVAL
# The monitor's AMQP heartbeat (at most; the broker's setting if lower), so a
# hung broker is noticed within about two of these and the child reconnects.
MONITOR_HEARTBEAT = 10
RECONNECT_INITIAL = 1.0
RECONNECT_MAX = 30.0

# Events the child sends.
POLLED = "polled"            # counts: [[pool, queue, kind, messages, consumers], ...]; kind = queue|dead_letter
UNAVAILABLE = "unavailable"  # reason
BROKER = "broker"            # server ("RabbitMQ 4.0.5"), url (password masked): at each connect

# pika raises its connection workflow's errors (a broker that accepts TCP and
# never answers) outside AMQPError.


def _targets(pools) -> tuple:
    """(pool, queue, kind) of every queue to poll."""
    targets = []
    for pool in pools:
        targets.append((pool.name, pool.queue, "queue"))
        if pool.dead_letter_queue:
            targets.append((pool.name, pool.dead_letter_queue, "dead_letter"))
    return tuple(targets)


class QueueMonitor(ServiceChild):
    """Master side: starts the child, reads its reports, serves the gauges.

    Also a prometheus_client collector (register it with the master's registry).
    Every method returns at once; none touches the network.
    """

    title = "Queue monitor"
    logger = log

    def __init__(self, broker, pools, interval: float = POLL_INTERVAL, stale_after: float = STALE_AFTER):
        super().__init__()
        self.interval = interval
        self.stale_after = stale_after
        self._broker = broker
        self._targets = _targets(pools)
        self._counts = []
        # {server, url} of the broker the monitor is connected to (for /status), None while it is not.
        self.broker = None
        self._polled_at = None  # monotonic time of the last complete poll

    def child_main(self, report_fd: int) -> int:
        return _run(self._broker, self._targets, report_fd, self.interval)

    def on_report(self, event: str, fields: dict) -> None:
        if self._replacing:
            return  # counts of the queues before the reload
        if event == POLLED:
            self._counts = fields["counts"]
            self._polled_at = time.monotonic()
        elif event == BROKER:
            self.broker = {"server": fields["server"], "url": fields["url"]}
        elif event == UNAVAILABLE:
            self.forget()

    def forget(self) -> None:
        self._counts, self._polled_at, self.broker = [], None, None

    def messages_ready(self, pool: str):
        """The last fresh count of messages ready in ``pool``'s queue; None when unknown."""
        return next((messages for name, _, kind, messages, _ in self.fresh_counts()
                     if name == pool and kind == "queue"), None)

    def fresh_counts(self) -> list:
        """[pool, queue, kind, messages, consumers] of the last poll, if fresh; else []."""
        if self._polled_at is None or time.monotonic() - self._polled_at > self.stale_after:
            return []
        return self._counts

    def configure(self, broker, pools) -> None:
        """After a reload: a new broker or other queues mean a new child."""
        targets = _targets(pools)
        if broker == self._broker and targets == self._targets:
            return
        self._broker, self._targets = broker, targets
        self.replace()

    # -- the collector --

    def describe(self):
        return []

    def collect(self):
        ready = GaugeMetricFamily("wqd_queue_messages_ready",
                                  "Messages ready in the pool's queue (polled by the master's queue monitor; "
                                  "absent when unknown).", labels=["pool", "queue"])
        consumers = GaugeMetricFamily("wqd_queue_consumers",
                                      "Consumers of the pool's queue, as the broker counts them (any client).",
                                      labels=["pool", "queue"])
        dead = GaugeMetricFamily("wqd_dead_letter_messages",
                                 "Messages in the pool's dead-letter queue (absent when unknown).",
                                 labels=["pool", "queue"])
        for pool, queue, kind, messages, consumer_count in self.fresh_counts():
            if kind == "queue":
                ready.add_metric([pool, queue], messages)
                consumers.add_metric([pool, queue], consumer_count)
            else:
                dead.add_metric([pool, queue], messages)
        yield ready
        yield consumers
        yield dead


def _run(broker, targets, report_fd: int, interval: float) -> int:
    setproctitle("wqd: queue monitor")
    logs.set_process_name("queue monitor")
    reporter = reporting.Reporter(report_fd)
    failures = 0
    url_index = 0
    while True:
        connection = None
        try:
            connection = _connect(broker, broker.urls[url_index])
            failures = 0
            if not reporter.send(BROKER, server=amqp.describe_server(connection),
                                 url=redact_url(broker.urls[url_index])):
                return 0
            while True:
                started = time.monotonic()
                if not reporter.send(POLLED, counts=_poll(connection, targets)):
                    return 0  # the master is gone
                # sleep() keeps serving heartbeats, unlike time.sleep().
                connection.sleep(max(0.0, interval - (time.monotonic() - started)))
        except RECOVERABLE as exc:
            failures += 1
            reason = amqp.describe_error(exc, broker.urls[url_index])
            url_index = (url_index + 1) % len(broker.urls)  # next time the next node, as workers do
            # The workers report an unreachable broker loudly; once is enough here.
            log.log(logging.INFO if failures == 1 else logging.DEBUG,
                    "Queue monitor: %s; queue depth is unknown until it reconnects.", reason)
            if not reporter.send(UNAVAILABLE, reason=reason):
                return 0
        finally:
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except RECOVERABLE:
                    pass
        time.sleep(exponential(failures, RECONNECT_INITIAL, RECONNECT_MAX, jitter=0.5))


def _connect(broker, url):
    params = amqp.parameters(broker, url)
    params.heartbeat = min(broker.heartbeat, MONITOR_HEARTBEAT) if broker.heartbeat else MONITOR_HEARTBEAT
    params.client_properties = {"connection_name": f"wqd queue monitor pid {os.getpid()}"}
    return amqp.open_connection(params)


def _poll(connection, targets) -> list:
    """[pool, queue, kind, messages, consumers] of each queue that exists."""
    counts = []
    channel = connection.channel()
    for pool, queue, kind in targets:
        try:
            declared = channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            channel = connection.channel()  # a missing queue closes the channel
            continue
        counts.append([pool, queue, kind, declared.method.message_count, declared.method.consumer_count])
    channel.close()
    return counts
