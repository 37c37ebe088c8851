"""wqd.AsyncPublisher: Publisher's API for asyncio applications (FastAPI, aiohttp), on aio-pika.

aio-pika (the wqd[asyncio] extra) because it is the maintained asyncio
client for RabbitMQ (on aiormq, a pure-Python AMQP 0-9-1 implementation):
its channels wait for publisher confirms without holding up other
publishes. The messages of publish_many, and of every publish made in the
same turn of the loop, are sent together and confirmed together
(confirm_batches.py). Connecting, the passive queue check,
the delay levels and the errors are the same as Publisher's; its connection
belongs to one event loop, and a forked child connects anew.
"""

import asyncio
import os
import socket
import time
from typing import Iterable, Optional

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions

from wqd import backoff
from wqd import config as config_module
from wqd.broker import amqp
from wqd.publishing import delays
from wqd.publishing.confirm_batches import ConfirmBatches
from wqd.publishing.errors import BrokerUnreachable, PublishError, QueueNotFound
from wqd.publishing.messages import outgoing, outgoing_batch
from wqd.publishing.outcomes import ACK, NACK, RETURNED, conclude
from wqd.publishing.publisher import (
    DEFAULT_TIMEOUT,
    NACK_RETRY_INITIAL,
    NACK_RETRY_MAX,
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    broker_config,
    prepare,
    seconds,
)
from wqd.publishing.republishing import Unconfirmed
from wqd.publishing.sizes import max_message_size_of

# The failures of a connection or channel (aiormq raises ConnectionError and OSError as they are).
BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)
PERMANENT = (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError,
             aiormq.exceptions.IncompatibleProtocolError)


class AsyncPublisher:
    """Publisher's API with ``async``: ``await publish(...)``, ``await publish_many(...)``,
    ``async with``. Concurrent publishes share one connection and channel."""

    def __init__(self, url_or_urls, *, timeout: float = DEFAULT_TIMEOUT, connect_timeout: Optional[float] = None,
                 tracer_provider=None):
        """As Publisher's."""
        self._setup(broker_config(url_or_urls), timeout, connect_timeout, None, tracer_provider)

    @classmethod
    def from_config(cls, path: Optional[str] = None, *, timeout: float = DEFAULT_TIMEOUT,
                    connect_timeout: Optional[float] = None, tracer_provider=None) -> "AsyncPublisher":
        """As Publisher.from_config."""
        config = config_module.load(path or config_module.default_path())
        publisher = cls.__new__(cls)
        publisher._setup(config.broker, timeout, connect_timeout, config, tracer_provider)
        return publisher

    def _setup(self, broker, timeout: float, connect_timeout: Optional[float], config, tracer_provider) -> None:
        self.broker, self.config = broker, config
        self.timeout = seconds("timeout", timeout, zero=False)
        self.connect_timeout = self.timeout if connect_timeout is None else seconds("connect_timeout",
                                                                                    connect_timeout, zero=True)
        self._tracer_provider = tracer_provider
        self._url_index = 0
        self._checked = set()
        self._delays_declared = False
        self._unconfirmed = Unconfirmed()  # ids to publish again with the check-duplicate header
        self._closed = False
        self._pid = os.getpid()
        self._connection = self._channel = self._batches = None
        self._lock = None  # an asyncio.Lock, made in the loop that uses it

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        await self._disconnect()

    async def connect(self, timeout: Optional[float] = None) -> None:
        """Connect now rather than at the first publish. Raises BrokerUnreachable."""
        async with self._guard():
            await self._ready(None, False, time.monotonic() + (self.timeout if timeout is None else timeout))

    async def publish(self, queue: str, body, *, message_id: Optional[str] = None, headers: Optional[dict] = None,
                      delay=None, content_type: Optional[str] = None, timeout: Optional[float] = None,
                      persistent: bool = True) -> str:
        """As Publisher.publish."""
        message = outgoing(body, message_id, headers, delay, content_type, persistent)
        return (await self._send(queue, [message], timeout))[0]

    async def publish_many(self, queue: str, bodies: Iterable, *, message_ids: Optional[Iterable[str]] = None,
                           headers: Optional[dict] = None, delay=None, content_type: Optional[str] = None,
                           timeout: Optional[float] = None, persistent: bool = True) -> list:
        """As Publisher.publish_many: every publish in flight at once, their confirms awaited together."""
        messages = outgoing_batch(bodies, message_ids, headers, delay, content_type, persistent)
        return await self._send(queue, messages, timeout) if messages else []

    # -- sending

    def _guard(self) -> asyncio.Lock:
        """The lock that serialises connecting (and, after a fork, a fresh start)."""
        if self._pid != os.getpid():  # forked: the parent's connection is the parent's; never touched here
            self._pid, self._connection, self._channel, self._batches, self._lock = os.getpid(), None, None, None, None
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _is_ready(self, queue: str, delayed: bool) -> bool:
        """Whether _ready() would do nothing: connected in this process, the queue checked, the channel open."""
        return (self._pid == os.getpid() and queue in self._checked and (self._delays_declared or not delayed)
                and _usable(self._connection) and self._batches is not None and not self._batches.channel.is_closed)

    async def _send(self, queue: str, messages: list, timeout: Optional[float]) -> list:
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        timeout = self.timeout if timeout is None else seconds("timeout", timeout, zero=False)
        deadline = time.monotonic() + timeout
        if self._closed:
            raise PublishError("this AsyncPublisher is closed; nothing was sent")
        delayed = any(message.delay for message in messages)
        if not self._is_ready(queue, delayed):  # most calls: ready, without taking the lock
            async with self._guard():
                await self._ready(queue, delayed, deadline)
        batches, limit = self._batches, self._limit
        for message in messages:
            if len(message.body) > limit[0]:
                raise ValueError(f"message {message.message_id} is {len(message.body)} bytes, larger than the "
                                 f"broker takes ({limit[1]}); nothing was sent")
        spans = [prepare(queue, message, self._unconfirmed, self._tracer_provider) for message in messages]
        outcomes, todo, nacks, reason, lost = {}, list(range(len(messages))), 0, None, False
        while todo:
            sent = await self._publish_all(batches, [messages[index] for index in todo], deadline, timeout)
            outcomes.update((index, outcome) for index, (outcome, _) in zip(todo, sent))
            failures = [why for outcome, why in sent if outcome is None]
            if failures:
                reason, lost = failures[0], True
                if _blocked(self._connection):
                    reason = (f"the broker at {config_module.redact_url(self._url)} blocked publishing (a memory or "
                              f"disk alarm: see `rabbitmq-diagnostics alarms`) until the timeout ({timeout:g} s) ran out")
                else:  # no answer: another connection (another node) for the next call
                    await self._disconnect()
            todo = [index for index in todo if outcomes[index] == NACK]
            if not todo or lost:
                break
            nacks += 1
            pause = backoff.exponential(nacks, NACK_RETRY_INITIAL, NACK_RETRY_MAX)
            if time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)  # then on a new channel: the one a quorum queue nacked may go on nacking
            try:
                async with self._guard():
                    await self._reopen_channel()
                    batches = self._batches
            except BROKER_ERRORS:  # the nacked stay nacked: the error says so
                await self._disconnect()
                break
        return conclude(messages, spans, outcomes, queue, reason, lost, self._unconfirmed)

    async def _publish_all(self, batches: ConfirmBatches, messages: list, deadline: float, timeout: float) -> list:
        """(outcome, why not confirmed) of each message: sent with whatever
        else is published in this turn of the loop, awaited until ``deadline``."""
        confirmations = batches.send(messages)
        await asyncio.wait(confirmations, timeout=max(0.0, deadline - time.monotonic()))
        return [self._outcome(confirmation, timeout) for confirmation in confirmations]

    def _outcome(self, confirmation, timeout: float):
        """(outcome, why not confirmed) of one message's confirmation future."""
        if not confirmation.done():
            confirmation.cancel()  # a late confirm is ignored
            return None, f"no confirm came within the timeout ({timeout:g} s)"
        if confirmation.cancelled():
            return None, "the connection was lost"
        error = confirmation.exception()
        if error is None:
            return ACK, None
        if isinstance(error, aiormq.exceptions.PublishError):  # basic.return: no queue took it
            return RETURNED, None
        if isinstance(error, aiormq.exceptions.DeliveryError):
            return NACK, None
        return None, f"the connection was lost: {_describe(error, self._url)}"

    # -- the connection

    @property
    def _url(self) -> str:
        return self.broker.urls[self._url_index]

    async def _ready(self, queue: Optional[str], delayed: bool, deadline: float) -> None:
        """As Publisher._ready: connect, check, declare, open the channel; tried
        again for up to connect_timeout while the broker cannot be reached."""
        give_up = min(deadline, time.monotonic() + self.connect_timeout)
        failures = 0
        while True:
            try:
                if not _usable(self._connection):
                    await self._disconnect()
                    await self._connect(deadline)
                if queue is not None and queue not in self._checked:
                    await self._check_queue(queue)
                if delayed and not self._delays_declared:
                    await self._declare_delays()
                if self._channel is None or self._channel.is_closed:
                    await self._reopen_channel()
                return
            except _Unreachable as exc:
                last, permanent = str(exc), exc.permanent
            except BROKER_ERRORS as exc:
                last, permanent = _describe(exc, self._url), False
                await self._disconnect()
            failures += 1
            pause = backoff.exponential(failures, RECONNECT_INITIAL, RECONNECT_MAX)
            if permanent or time.monotonic() + pause >= give_up:
                where = f"to queue {queue!r}" if queue else "at all"
                raise BrokerUnreachable(f"could not publish {where}: {last}; nothing was sent", detail=last)
            await asyncio.sleep(pause)

    async def _connect(self, deadline: float) -> None:
        failures = []
        for offset in range(len(self.broker.urls)):
            index = (self._url_index + offset) % len(self.broker.urls)
            url = self.broker.urls[index]
            params = amqp.parameters(self.broker, url)
            tls = amqp.tls_context(self.broker.tls) if params.ssl_options is not None else None
            try:
                connection = await aio_pika.connect(
                    url, ssl_context=tls, timeout=max(0.1, min(amqp.CONNECT_TIMEOUT, deadline - time.monotonic())),
                    client_properties={"connection_name": f"wqd async publisher {socket.gethostname()} "
                                                          f"pid {os.getpid()}"})
            except (*BROKER_ERRORS, amqp.TLSFileError) as exc:
                failures.append((url, exc))
                continue
            self._url_index, self._connection = index, connection
            self._limit = max_message_size_of(*amqp.announced_version(connection.transport.connection.server_properties))
            return
        raise _Unreachable(failures)

    async def _reopen_channel(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._batches = ConfirmBatches(await self._channel.get_underlay_channel())  # on aiormq's channel

    async def _check_queue(self, queue: str) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            config = self.config.path if self.config else "CONFIG"
            raise QueueNotFound(f"queue {queue!r} does not exist: start wqd, or declare it as wqd does: "
                                f"`wqd declare -c {config}`; nothing was sent") from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise PublishError(f"cannot publish to queue {queue!r}: the broker said {exc}; nothing was sent") from None
        await channel.close()
        self._checked.add(queue)

    async def _declare_delays(self) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        raw = await channel.get_underlay_channel()  # aiormq's: one call per AMQP method
        try:
            for kind, name, *rest in delays.topology():
                if kind == "queue":
                    await raw.queue_declare(name, durable=True, arguments=rest[0])
                elif kind == "exchange":
                    await raw.exchange_declare(name, exchange_type="headers", durable=True)
                elif kind == "bind queue":
                    await raw.queue_bind(name, rest[0], arguments=rest[1])
                else:
                    await raw.exchange_bind(name, rest[0], arguments=rest[1])
        except aiormq.exceptions.AMQPChannelError as exc:
            raise PublishError(f"cannot declare wqd's delay queues and exchanges ({delays.PREFIX}.*): the broker "
                               f"said {exc}; nothing was sent") from None
        await channel.close()
        self._delays_declared = True

    async def _disconnect(self) -> None:
        connection, self._connection, self._channel, self._batches = self._connection, None, None, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), amqp.CONNECT_TIMEOUT)
            except (*BROKER_ERRORS, asyncio.TimeoutError):
                pass  # gone either way


def _blocked(connection) -> bool:
    """Whether the broker blocked the connection (connection.blocked): aiormq
    keeps it in a private event, which it waits on before every publish."""
    unblocked = getattr(getattr(connection and connection.transport, "connection", None),
                        "_Connection__connection_unblocked", None)
    return unblocked is not None and not unblocked.is_set()


def _usable(connection) -> bool:
    """aio-pika marks a connection closed a loop turn after aiormq's is: ask both."""
    return (connection is not None and not connection.is_closed and connection.transport is not None
            and not connection.transport.connection.is_closed)


class _Unreachable(Exception):
    """No URL answered; str() says why, per URL."""

    def __init__(self, failures: list):
        super().__init__("; ".join(_describe(exc, url) for url, exc in failures))
        self.permanent = all(isinstance(exc, (*PERMANENT, amqp.TLSFileError)) for _, exc in failures)


def _describe(exc: BaseException, url: str) -> str:
    where = config_module.redact_url(url)
    if isinstance(exc, (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError)):
        return f"the broker at {where} refused the credentials (check the user name and password)"
    if isinstance(exc, (OSError, amqp.TLSFileError)) and not isinstance(exc, ConnectionError):
        return amqp.describe_error(exc, url)
    return f"cannot reach the broker at {where}: {exc or type(exc).__name__}"
