"""The relay child ("wqd: outbox relay"): committed outbox rows to the broker.

Each round is one database transaction: lock up to ``batch`` waiting rows
(FOR UPDATE SKIP LOCKED: another host's relay takes other rows), publish them
with confirms through wqd.Publisher's connection, then, in the same
transaction, delete the confirmed rows and set aside the refused ones, and
commit. A crash anywhere before that commit leaves every row waiting, so it
is published again under the same id (with x-wqd-check-duplicate: a worker
acks a copy of an id this host finished without running it).

It wakes on the table's NOTIFY (sent at commit by the table's trigger), and
every STATS_INTERVAL anyway, when it counts the waiting rows for the master
(a notification is lost while the database restarts). A database or broker that cannot be reached is tried
again with a growing delay and reported to the master (relay_up 0), never a
crash loop. It reports to the master over a pipe, as the queue monitor does.
"""

import logging
import math
import re
import signal
import time

import pika.exceptions
from setproctitle import setproctitle

from wqd import logs
from wqd.backoff import exponential
from wqd.config import redact_url
from wqd.ipc import reporting
from wqd.outbox import database, schema
from wqd.publishing import delays, messages
from wqd.publishing.errors import PublishError, QueueNotFound
from wqd.publishing.outcomes import ACK, RETURNED
from wqd.publishing.publisher import Publisher
from wqd.publishing.sizes import max_message_size
from wqd.redelivery.headers import CHECK_DUPLICATE_HEADER

log = logging.getLogger("wqd.outbox")

STATS_INTERVAL = 1.0  # seconds between counts of the waiting rows (the master's gauges), and between rounds at least
PUBLISH_TIMEOUT = 30.0
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0
NACKED_PAUSE = 0.5  # before taking rows again after the broker nacked some (a quorum queue electing a leader)
_SIZE_REFUSAL = re.compile(r"larger than (?:the )?(?:configured )?max(?:imum)? size (\d+)", re.IGNORECASE)

# Events the child sends the master.
UP = "up"            # database, broker (passwords masked): connected to both
DOWN = "down"        # reason: not relaying until it reconnects
RELAYED = "relayed"  # relayed, refused: rows of one committed round
STATS = "stats"      # pending, oldest_age (seconds or None), set_aside


class Unavailable(Exception):
    """The database or the broker cannot be used now: try again later."""


class MasterGone(Exception):
    pass


def run(outbox, broker, report_fd: int) -> int:
    """The child's life: relay until SIGTERM (or the master is gone)."""
    setproctitle("wqd: outbox relay")
    logs.set_process_name("outbox relay")
    relay = Relay(outbox, broker, reporting.Reporter(report_fd))
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    failures = 0
    while not relay.stopping:
        try:
            relay.session()
        except MasterGone:
            return 0
        except Unavailable as exc:
            failures = 0 if relay.relayed_since_connect else failures + 1
            log.log(logging.WARNING if failures <= 1 else logging.DEBUG,
                    "Outbox relay: %s; not relaying until it can (next try in a few seconds).", exc)
            if not relay.reporter.send(DOWN, reason=str(exc)):
                return 0
        finally:
            relay.close()
        pause_until = time.monotonic() + exponential(max(failures, 1), RECONNECT_INITIAL, RECONNECT_MAX, jitter=0.5)
        while not relay.stopping and time.monotonic() < pause_until:
            time.sleep(0.1)
    return 0


class Relay:
    def __init__(self, outbox, broker, reporter):
        self.outbox, self.broker, self.reporter = outbox, broker, reporter
        self.table = outbox.table
        self.stopping = False
        self.db = self.publisher = None
        self.relayed_since_connect = False
        self._pause = 0.0

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        for closable in (self.publisher, self.db):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # noqa: BLE001 - a connection already broken
                    pass
        self.db = self.publisher = None

    # -- one connected session

    def session(self) -> None:
        """Connect to both, then relay until stopped; raises Unavailable."""
        psycopg = database.psycopg()
        self.relayed_since_connect = False
        try:
            self.db = psycopg.connect(self.outbox.dsn, autocommit=True, connect_timeout=database.CONNECT_TIMEOUT,
                                      **database.DEAD_PEER_SETTINGS)
            comment, exists = self.db.execute(schema.version_sql(), (self.table, self.table)).fetchone()
            problem = schema.version_problem(self.table, comment, exists)
            if problem:
                raise Unavailable(problem)
            self.db.execute(f"LISTEN {schema.channel(self.table)}")
        except psycopg.Error as exc:
            raise Unavailable(f"the outbox database {database.redact_dsn(self.outbox.dsn)}: "
                              f"{database.describe(exc)}") from None
        self.publisher = Publisher._for_broker(self.broker, timeout=PUBLISH_TIMEOUT, connect_timeout=0)
        try:
            self.publisher.connect()
        except PublishError as exc:
            raise Unavailable(str(exc)) from None
        url = redact_url(self.publisher._url)
        log.info("Outbox relay: relaying table %s to %s.", self.table, url)
        self._send(UP, database=database.redact_dsn(self.outbox.dsn), broker=url)
        last_stats = 0.0
        while not self.stopping:
            try:
                taken = self._round()
                if time.monotonic() - last_stats >= STATS_INTERVAL:
                    self._report_stats()
                    last_stats = time.monotonic()
                if self._pause:
                    time.sleep(self._pause)
                    self._pause = 0.0
                elif taken < self.outbox.batch:
                    # A NOTIFY that came during the round is kept, and ends this wait at once.
                    wait = max(0.05, STATS_INTERVAL - (time.monotonic() - last_stats))
                    for _ in self.db.notifies(timeout=wait, stop_after=1):
                        pass
            except psycopg.Error as exc:
                raise Unavailable(f"the outbox database: {database.describe(exc)}") from None
            except (pika.exceptions.AMQPError, OSError) as exc:
                raise Unavailable(f"the broker: {exc!r}") from None

    def _send(self, event: str, **fields) -> None:
        if not self.reporter.send(event, **fields):
            raise MasterGone()

    def _report_stats(self) -> None:
        pending, oldest, set_aside = self.db.execute(
            f"SELECT count(*) FILTER (WHERE refused_at IS NULL), "
            f"extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE refused_at IS NULL)), "
            f"count(*) FILTER (WHERE refused_at IS NOT NULL) FROM {self.table}").fetchone()
        self._send(STATS, pending=pending, oldest_age=None if oldest is None else float(oldest), set_aside=set_aside)
        with self.publisher._lock:  # pika answers the broker's heartbeats only while it is called
            if self.publisher._connection is not None:
                self.publisher._connection.process_data_events(0)

    # -- one round: a transaction

    def _round(self) -> int:
        """Relay one batch; return how many rows it took."""
        with self.db.transaction():
            rows = self.db.execute(
                f"SELECT id, message_id, queue, body, content_type, headers, delay_seconds, "
                f"extract(epoch FROM clock_timestamp() - created_at) FROM {self.table} "
                f"WHERE refused_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.outbox.batch,)).fetchall()
            if not rows:
                return 0
            done, refused, problem = self._publish(rows)
            if done:
                self.db.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (done,))
            if refused:
                with self.db.cursor() as cursor:
                    cursor.executemany(f"UPDATE {self.table} SET refused_at = clock_timestamp(), "
                                       f"refused_reason = %s WHERE id = %s", [(why, row) for row, why in refused])
        if done:
            self.relayed_since_connect = True
        for row_id, why in refused:
            log.warning("Outbox relay: row %d set aside (not published): %s", row_id, why)
        if done or refused:
            self._send(RELAYED, relayed=len(done), refused=len(refused))
        if problem:
            raise Unavailable(problem)
        return len(rows)

    def _publish(self, rows: list):
        """Publish the rows; return (ids of confirmed rows, [(id, why refused)],
        why the connection was lost or None). Rows in neither list stay waiting."""
        publisher = self.publisher
        deadline = time.monotonic() + PUBLISH_TIMEOUT
        refused, ready = [], []
        with publisher._lock:
            missing = set()
            for queue in dict.fromkeys(row[2] for row in rows):
                delayed = any(row[6] for row in rows if row[2] == queue)
                try:
                    publisher._ready(queue, delayed, deadline)
                except QueueNotFound:
                    missing.add(queue)
                except PublishError as exc:
                    raise Unavailable(str(exc)) from None
            try:
                publisher._ready(None, False, deadline)  # the confirm channel (a missing queue's check closed one)
            except PublishError as exc:
                raise Unavailable(str(exc)) from None
            limit, limit_name = max_message_size(publisher._connection)
            for row in rows:
                row_id, queue, body = row[0], row[2], bytes(row[3])
                if queue in missing:
                    refused.append((row_id, f"queue {queue!r} does not exist"))
                elif len(body) > limit:
                    refused.append((row_id, f"{len(body)} bytes, larger than the broker takes ({limit_name})"))
                else:
                    try:
                        ready.append((row, _message(row, body)))
                    except (TypeError, ValueError) as exc:
                        refused.append((row_id, f"cannot be sent: {exc}"))
            if not ready:
                return [], refused, None
            sent = [message for _, message in ready]
            outcomes, reason, lost = publisher._send_once(sent, deadline, PUBLISH_TIMEOUT)
        done = []
        too_large = _SIZE_REFUSAL.search(reason or "")
        for (row, message), outcome in zip(ready, outcomes):
            if outcome == ACK:
                done.append(row[0])
            elif outcome == RETURNED:
                refused.append((row[0], f"no queue took it: queue {row[2]!r} was deleted or is not bound"))
                publisher._checked.discard(row[2])
            elif outcome is None and too_large and len(message.body) > int(too_large.group(1)):
                refused.append((row[0], f"the broker refused it: {reason}"))
            else:
                self._pause = NACKED_PAUSE  # nacked, or unanswered: taken again in the next round
        return done, refused, reason if lost else None


def _message(row, body: bytes):
    """The message of one row, checked as Publisher.publish checks one, addressed to its queue."""
    row_id, message_id, queue, _, content_type, headers, delay_seconds, age = row
    if headers is not None and not isinstance(headers, dict):
        raise TypeError(f"headers must be a JSON object, got {type(headers).__name__}")
    remaining = max(0, math.ceil(delay_seconds - float(age))) if delay_seconds else 0
    # The header asks the worker to look the id up in its master's finished
    # ledger, as for a redelivery: a row published again after a crash runs once.
    message = messages.outgoing(body, message_id, {**(headers or {}), CHECK_DUPLICATE_HEADER: 1}, remaining,
                                content_type)
    message.routing_key = queue
    if message.delay:
        message.exchange, bits = delays.route(message.delay)
        message.properties.headers.update(bits)
    return message
