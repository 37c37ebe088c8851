"""wqd.Publisher: publish tasks with publisher confirms, from any thread or fork."""

import math
import os
import socket
import ssl
import threading
import time
import weakref
from typing import Iterable, Optional

import pika
import pika.exceptions

from wqd import backoff
from wqd import config as config_module
from wqd.broker import amqp, pika_transport
from wqd.publishing import delays, tracing
from wqd.publishing.confirms import ChannelLost, ConfirmChannel, Timeout, is_broker_error
from wqd.publishing.errors import BrokerUnreachable, PublishError, QueueNotFound
from wqd.publishing.messages import outgoing, outgoing_batch
from wqd.publishing.outcomes import NACK, conclude
from wqd.publishing.republishing import Unconfirmed
from wqd.publishing.sizes import max_message_size

DEFAULT_TIMEOUT = 30.0  # seconds a publish may take, connecting included
# Connecting again after every URL failed: 0.1, 0.2, 0.4 ... 2 s apart, until the deadline.
RECONNECT_INITIAL = 0.1
RECONNECT_MAX = 2.0
# A nacked message is sent again on a new channel 0.2, 0.4, 0.8, 1.6, 2, 2... s later, until the deadline.
NACK_RETRY_INITIAL = 0.2
NACK_RETRY_MAX = 2.0
# A connection unused this long is polled before a publish, so that one the
# broker closed meanwhile (a restart, missed heartbeats) is replaced before
# anything is sent on it, rather than failing the publish; in a burst the
# poll would cost a third of the system calls of a publish.
IDLE_CHECK = 1.0

_live = weakref.WeakSet()  # every Publisher, for the fork hook


class Publisher:
    """Publishes persistent, mandatory messages and returns once the broker
    confirmed them. Thread-safe (calls are serialised on one connection) and
    fork-safe: a forked child never touches the parent's socket, it connects
    anew. Connects lazily, reconnects, and tries a cluster's URLs in turn."""

    def __init__(self, url_or_urls, *, timeout: float = DEFAULT_TIMEOUT, connect_timeout: Optional[float] = None,
                 tracer_provider=None):
        """``url_or_urls``: an amqp:// or amqps:// URL, a comma-separated list
        or a list of them (a cluster's nodes). ``timeout``: seconds a publish
        may take, connecting included; ``connect_timeout``: how long of it a
        broker that cannot be reached is tried again (default: all of it; 0:
        each URL once). ``tracer_provider``: OpenTelemetry's, for the
        messages' PRODUCER spans (default: the global one, if any)."""
        self._setup(broker_config(url_or_urls), timeout, connect_timeout, None, None, tracer_provider)

    @classmethod
    def from_config(cls, path: Optional[str] = None, *, timeout: float = DEFAULT_TIMEOUT,
                    connect_timeout: Optional[float] = None, tracer_provider=None) -> "Publisher":
        """A publisher for the broker of a wqd YAML config (default: $WQD_CONFIG,
        else /etc/wqd/wqd.yaml, as `wqd run` finds it), TLS settings included.
        Raises wqd's ConfigError."""
        config = config_module.load(path or config_module.default_path())
        return cls._for_broker(config.broker, timeout=timeout, connect_timeout=connect_timeout, config=config,
                               tracer_provider=tracer_provider)

    @classmethod
    def _for_broker(cls, broker, *, timeout: float, connect_timeout: Optional[float], config=None,
                    on_connect=None, tracer_provider=None) -> "Publisher":
        """A publisher for a BrokerConfig; `wqd publish` gives ``on_connect(connection)``,
        run on every new connection before anything is published (it declares the queue)."""
        publisher = cls.__new__(cls)
        publisher._setup(broker, timeout, connect_timeout, config, on_connect, tracer_provider)
        return publisher

    def _setup(self, broker, timeout: float, connect_timeout: Optional[float], config, on_connect,
               tracer_provider) -> None:
        self.broker = broker
        self.timeout = seconds("timeout", timeout, zero=False)
        self.connect_timeout = self.timeout if connect_timeout is None else seconds("connect_timeout",
                                                                                     connect_timeout, zero=True)
        self.config = config
        self._on_connect = on_connect
        self._tracer_provider = tracer_provider
        self._closed = False
        self._url_index = 0
        self._checked = set()  # queues known to exist (checked passively once each)
        self._delays_declared = False
        self._unconfirmed = Unconfirmed()  # ids to publish again with the check-duplicate header
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """No connection (and, after a fork, a lock no other thread can hold)."""
        self._lock = threading.Lock()
        self._connection = None
        self._channel = None
        self._blocked_since = None
        self._healthy = False  # the connection answered the last call: close it politely
        self._used_at = 0.0  # when a publish last got its answers (time.monotonic())

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (politely when the broker answers). Idempotent."""
        with self._lock:
            self._closed = True
            self._disconnect(polite=self._healthy)

    # -- the API

    def publish(self, queue: str, body, *, message_id: Optional[str] = None, headers: Optional[dict] = None,
                delay=None, content_type: Optional[str] = None, timeout: Optional[float] = None,
                persistent: bool = True) -> str:
        """Send one message; return its id once the broker confirmed it.
        Raises PublishError (not confirmed: publishing again with the same id
        is safe), QueueNotFound, BrokerUnreachable; TypeError or ValueError
        for a message that cannot be sent (then nothing was). ``persistent``
        False makes a message a broker restart drops (`wqd publish --transient`)."""
        message = outgoing(body, message_id, headers, delay, content_type, persistent)
        return self._send(queue, [message], timeout)[0]

    def publish_many(self, queue: str, bodies: Iterable, *, message_ids: Optional[Iterable[str]] = None,
                     headers: Optional[dict] = None, delay=None, content_type: Optional[str] = None,
                     timeout: Optional[float] = None, persistent: bool = True) -> list:
        """Send every body, then wait for all their confirms (pipelined);
        return their ids. On PublishError, its ``unconfirmed`` ids are the
        ones to publish again; ``timeout`` covers the whole batch."""
        messages = outgoing_batch(bodies, message_ids, headers, delay, content_type, persistent)
        return self._send(queue, messages, timeout) if messages else []

    # -- sending

    def _send(self, queue: str, messages: list, timeout: Optional[float]) -> list:
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        timeout = self.timeout if timeout is None else seconds("timeout", timeout, zero=False)
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise PublishError("this Publisher is closed; nothing was sent")
            delayed = any(message.delay for message in messages)
            self._ready(queue, delayed, deadline)
            limit, limit_name = self._limit
            for message in messages:
                if len(message.body) > limit:
                    raise ValueError(f"message {message.message_id} is {len(message.body)} bytes, larger than the "
                                     f"broker takes ({limit_name}); nothing was sent")
            spans = [prepare(queue, message, self._unconfirmed, self._tracer_provider) for message in messages]
            outcomes, reason, lost = self._send_until_taken(queue, messages, delayed, deadline, timeout)
            return conclude(messages, spans, outcomes, queue, reason, lost, self._unconfirmed)

    def _send_until_taken(self, queue: str, messages: list, delayed: bool, deadline: float, timeout: float):
        """Send, and send again on a new channel what the broker nacked (a
        quorum queue electing a leader nacks, and the same channel may go on
        nacking: RabbitMQ 3.10), until the deadline. Returns ({index in
        ``messages``: outcome}, why the rest was not confirmed, whether the
        connection failed)."""
        outcomes, nacks = {}, 0
        todo = list(range(len(messages)))
        while True:
            sent, reason, lost = self._send_once([messages[index] for index in todo], deadline, timeout)
            outcomes.update(zip(todo, sent))
            todo = [index for index, outcome in zip(todo, sent) if outcome == NACK]
            if not todo or lost:
                return outcomes, reason, lost
            nacks += 1
            pause = backoff.exponential(nacks, NACK_RETRY_INITIAL, NACK_RETRY_MAX)
            if time.monotonic() + pause >= deadline:
                return outcomes, reason, lost
            time.sleep(pause)
            try:
                self._channel.close()
                self._channel = None
                self._ready(queue, delayed, deadline)
            except (PublishError, pika.exceptions.AMQPError, OSError) as exc:
                self._disconnect(polite=False)
                return outcomes, f"{reason}; sending it again failed: {exc}", True

    def _send_once(self, messages: list, deadline: float, timeout: float):
        """Publish the batch on the confirm channel and await its confirms;
        return (their outcomes in order, None where none came, why, lost)."""
        channel = self._channel
        tags = range(channel.next_tag, channel.next_tag + len(messages))
        reason, lost = None, False
        try:
            for message in messages:
                channel.publish(message.exchange, message.routing_key, message)
            outcomes = channel.await_confirms(list(tags), deadline)
        except Timeout:
            outcomes = channel.outcomes(tags)
            channel.forget(tags)
            reason, lost = self._timeout_reason(timeout), True
            if self._blocked_since is None:  # no answer: another connection (another node) for the next call
                self._disconnect(polite=False)
        except ChannelLost as exc:
            outcomes = channel.outcomes(tags)
            self._channel = None
            reason = f"the broker closed the channel: {_refusal(exc.reason)}"
        except Exception as exc:
            if not is_broker_error(exc):
                raise
            outcomes = channel.outcomes(tags)
            reason = f"the connection was lost: {amqp.describe_error(exc, self._url)}"
            lost = True
            self._disconnect(polite=False)
        else:
            self._healthy, self._used_at = True, time.monotonic()
        return [outcomes.get(tag) for tag in tags], reason, lost

    def _timeout_reason(self, timeout: float) -> str:
        if self._blocked_since is not None:
            return (f"the broker at {config_module.redact_url(self._url)} blocked publishing (a memory or disk "
                    f"alarm: see `rabbitmq-diagnostics alarms`) until the timeout ({timeout:g} s) ran out")
        return f"no confirm came within the timeout ({timeout:g} s)"

    # -- the connection

    def connect(self, timeout: Optional[float] = None) -> None:
        """Connect now rather than at the first publish (a broker that cannot be
        reached then shows at start-up). Raises BrokerUnreachable."""
        with self._lock:
            self._ready(None, False, time.monotonic() + (self.timeout if timeout is None else timeout))

    def _ready(self, queue: Optional[str], delayed: bool, deadline: float) -> None:
        """Connect (again) if need be, check the queue and the delay
        infrastructure, open the confirm channel: tried again for up to
        connect_timeout (within ``deadline``) while the broker cannot be
        reached, for nothing was sent yet."""
        give_up = min(deadline, time.monotonic() + self.connect_timeout)
        failures = 0
        while True:
            try:
                if self._connection is None or not self._connection.is_open:
                    self._connect()
                    if self._on_connect is not None:
                        self._on_connect(self._connection)
                if time.monotonic() - self._used_at > IDLE_CHECK:
                    self._connection.process_data_events(0)  # notices a connection lost while idle
                if queue is not None and queue not in self._checked:
                    self._check_queue(queue)
                if delayed and not self._delays_declared:
                    self._declare_delays()
                if self._channel is None or not self._channel.is_open:
                    self._channel = ConfirmChannel(self._connection, deadline)
                return
            except amqp.BrokerUnavailable as exc:
                last, permanent = str(exc), all(_permanent(error) for _, error in exc.errors)
            except Timeout:
                last, permanent = f"the broker at {config_module.redact_url(self._url)} did not answer", False
                self._disconnect(polite=False)
            except Exception as exc:
                if not is_broker_error(exc):
                    raise
                last, permanent = amqp.describe_error(exc, self._url), False
                self._disconnect(polite=False)
            failures += 1
            pause = backoff.exponential(failures, RECONNECT_INITIAL, RECONNECT_MAX)
            if permanent or time.monotonic() + pause >= give_up:
                where = f"to queue {queue!r}" if queue else "at all"
                raise BrokerUnreachable(f"could not publish {where}: {last}; nothing was sent", detail=last)
            time.sleep(pause)

    @property
    def _url(self) -> str:
        return self.broker.urls[self._url_index]

    def _connect(self) -> None:
        """Connect to the first URL that answers, from the one used last."""
        self._disconnect(polite=False)
        failures = []
        for offset in range(len(self.broker.urls)):
            index = (self._url_index + offset) % len(self.broker.urls)
            params = amqp.parameters(self.broker, self.broker.urls[index])
            params.socket_timeout = params.stack_timeout = min(amqp.CONNECT_TIMEOUT, self.timeout)
            params.blocked_connection_timeout = None  # a blocked publish ends at its own timeout
            params.client_properties = {"connection_name": f"wqd publisher {socket.gethostname()} pid {os.getpid()}"}
            try:
                connection = amqp.open_connection(params)
            except (pika.exceptions.AMQPError, OSError) as exc:
                failures.append((self.broker.urls[index], exc))
                continue
            self._url_index = index
            self._connection = connection
            pika_transport.install(connection)  # a publish leaves in one send, its confirm is one recv
            # On pika's asynchronous connection: called from within ConfirmChannel.wait's I/O loop.
            connection._impl.add_on_connection_blocked_callback(self._on_blocked)
            connection._impl.add_on_connection_unblocked_callback(self._on_unblocked)
            self._limit = max_message_size(connection)
            return
        raise amqp.BrokerUnavailable(failures)

    def _on_blocked(self, _connection, _frame) -> None:
        self._blocked_since = time.monotonic()

    def _on_unblocked(self, _connection, _frame) -> None:
        self._blocked_since = None

    def _check_queue(self, queue: str) -> None:
        """A passive declare: never a declare with arguments that could clash
        with the pool's (nor one that creates a queue the pool cannot use)."""
        channel = self._connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                config = self.config.path if self.config else "CONFIG"
                raise QueueNotFound(f"queue {queue!r} does not exist: start wqd, or declare it as wqd does: "
                                    f"`wqd declare -c {config}`; nothing was sent", [], []) from None
            raise PublishError(f"cannot publish to queue {queue!r}: the broker said {exc.reply_code} "
                               f"{exc.reply_text}; nothing was sent") from None
        channel.close()
        self._checked.add(queue)

    def _declare_delays(self) -> None:
        channel = self._connection.channel()
        try:
            delays.declare(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise PublishError(f"cannot declare wqd's delay queues and exchanges ({delays.PREFIX}.*): the broker "
                               f"said {exc.reply_code} {exc.reply_text}; nothing was sent") from None
        channel.close()
        self._delays_declared = True

    def _disconnect(self, polite: bool) -> None:
        """Close the connection: with the closing handshake when ``polite``,
        else by dropping the socket (a broker that does not answer, or blocks
        the connection, would hold close() for minutes)."""
        connection, self._connection, self._channel = self._connection, None, None
        self._blocked_since, self._healthy = None, False
        if connection is None or not connection.is_open:
            return
        try:
            if polite:
                connection.close()
            else:
                connection._impl._terminate_stream(pika.exceptions.AMQPConnectionError("dropped by the publisher"))
                connection.process_data_events(0)
        except (pika.exceptions.AMQPError, OSError):
            pass  # gone either way


def broker_config(url_or_urls) -> config_module.BrokerConfig:
    """The BrokerConfig of a URL, a comma-separated list or a list of them; ValueError naming what is wrong."""
    urls = config_module.split_urls(url_or_urls) if isinstance(url_or_urls, str) else list(url_or_urls)
    try:
        return config_module.BrokerConfig(urls=config_module.broker_urls(urls))
    except ValueError as exc:
        raise ValueError(f"Publisher: broker URL: {exc}") from None


def seconds(name: str, value, zero: bool) -> float:
    """``value`` as seconds (> 0, or >= 0 with ``zero``); ValueError naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (value == 0 and not zero)):
        raise ValueError(f"Publisher: {name} must be a number of seconds {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)


def _permanent(exc: BaseException) -> bool:
    """A refusal that trying again will not change: credentials, access, TLS, not an AMQP listener."""
    return isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
                            pika.exceptions.ProbableAccessDeniedError, pika.exceptions.IncompatibleProtocolError,
                            amqp.TLSFileError, ssl.SSLError)) or isinstance(amqp.root_error(exc), ssl.SSLError)


def _refusal(reason) -> str:
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        return f"{reason.reply_code} {reason.reply_text}"
    return str(reason)


def _after_fork_in_child() -> None:
    for publisher in list(_live):
        publisher._reset()  # the parent's connection stays the parent's: dropped here, never closed


os.register_at_fork(after_in_child=_after_fork_in_child)


def prepare(queue: str, message, unconfirmed, tracer_provider):
    """Address the message (the default exchange, or the first delay level:
    delays.py), note it with the ids to flag when published again
    (republishing.py) and start its span; return the span. Publisher's and
    AsyncPublisher's."""
    properties = message.properties
    message.routing_key = queue
    if message.delay:
        message.exchange, bits = delays.route(message.delay)
        properties.headers = {**(properties.headers or {}), **bits}
    unconfirmed.mark(message)
    span, properties.headers = tracing.start(queue, message.message_id, properties.headers, tracer_provider)
    return span
