"""``wqd publish`` and ``wqd declare``: the commands' side of publishing (the
input, the messages' limits, the declares) over wqd.Publisher, which sends."""

import re

import pika
import pika.exceptions

from wqd import errors
from wqd.broker import amqp, queues
from wqd.publishing import BrokerUnreachable, Publisher, PublishError
from wqd.publishing.sizes import max_message_size

_NOT_SENT = "it was not sent, nor anything after it"
_SIZE_REFUSAL = re.compile(r"larger than (?:the )?(?:configured )?max(?:imum)? size (\d+)", re.IGNORECASE)


def declare_config(config):
    """`wqd declare`: every pool's queues, declared as the pool's workers will;
    yields (pool, the names declared). Raises QueueMismatch, or
    errors.BrokerUnavailable when the broker cannot be reached."""
    connection, index = amqp.connect_any(config.broker, name="wqd declare")
    try:
        version = amqp.server_version(connection)[1]
        for pool in config.pools:
            queues.declare_pool_queues(connection, pool, version)
            yield pool, [pool.queue] + ([pool.dead_letter_queue] if pool.dead_letter_queue else [])
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise errors.BrokerUnavailable(amqp.describe_error(exc, config.broker.urls[index])) from None
    finally:
        if connection.is_open:
            connection.close()


def publish_lines(broker, queue: str, pool, bodies, headers: dict, persistent: bool = True, delay=None,
                  tracer_provider=None):
    """Publish each body to ``queue`` through wqd.Publisher; yield it once the
    broker confirmed it.

    ``bodies`` is a list of bytes, or a binary stream whose lines (UTF-8
    text, the newline removed, empty ones skipped) are the bodies: read one at
    a time, never more than the broker takes. A body that cannot be sent
    stops the run: those before it were sent and confirmed, it and those after
    it are not sent.

    Unlike the library, the command declares the queue, as the pool declares
    it (durable; its queue_type), so publishing first and starting wqd later
    loses nothing. Without a pool (``--url``), an existing queue is used as it
    is, or a durable classic one is created. Every URL is tried once.
    Raises errors.BrokerUnavailable when the broker cannot be reached or will
    not take a message, errors.InputError for a body that is not UTF-8 or too
    large, errors.ConfigError when the queue exists with other arguments than
    the pool's, errors.WqdError otherwise. ``tracer_provider``: for a
    PRODUCER span per message (tracing enabled).
    """
    limit = []

    def prepare(connection) -> None:
        _declare(connection, queue, pool)
        limit[:] = max_message_size(connection)

    # The timeout a memory or disk alarm may hold a publish, and the longest a
    # nacked message (a quorum queue electing a leader) is sent again.
    publisher = Publisher._for_broker(broker, timeout=amqp.BLOCKED_CONNECTION_TIMEOUT, connect_timeout=0,
                                      on_connect=prepare, tracer_provider=tracer_provider)
    number, body = 0, b""
    try:
        publisher.connect()
        size, size_name = limit
        for number, body in enumerate(_read_lines(bodies, size, size_name) if hasattr(bodies, "readline") else bodies, 1):
            if len(body) > size:
                raise errors.InputError(f"{_message(number, body)} is larger than the broker takes: {size_name} "
                                        f"is {size} bytes; {_NOT_SENT}")
            publisher.publish(queue, body, headers=headers or None, delay=delay, persistent=persistent)
            yield body
    except BrokerUnreachable as exc:
        raise errors.BrokerUnavailable(_while(number, body) + exc.detail) from None
    except PublishError as exc:
        refused = _SIZE_REFUSAL.search(exc.detail)
        if refused:
            raise errors.InputError(f"the broker refused {_message(number, body)}: it takes at most "
                                    f"{refused.group(1)} bytes (its max_message_size); {_NOT_SENT}") from None
        error = errors.BrokerUnavailable if isinstance(exc, errors.BrokerUnavailable) else errors.WqdError
        raise error(_while(number, body) + exc.detail) from None
    finally:
        publisher.close()


def utf8_body(raw: bytes, where: str, outcome: str = _NOT_SENT) -> bytes:
    """``raw``, once it is known to be UTF-8 text; errors.InputError naming
    ``where`` and ``outcome`` if not."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InputError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
                                f"{outcome}") from None
    return raw


def _read_lines(stream, limit: int, limit_name: str):
    """The non-empty lines of a binary stream, without their newline, each
    checked to be UTF-8; a line is read only up to ``limit`` bytes (plus one,
    to see it is longer), so a huge one is refused without being held whole."""
    number = 0
    while True:
        line = stream.readline(limit + 2)
        if not line:
            return
        number += 1
        body = line[:-1] if line.endswith(b"\n") else line
        if len(body) > limit:
            raise errors.InputError(f"stdin line {number} is larger than the broker takes: {limit_name} "
                                    f"is {limit} bytes; {_NOT_SENT}")
        if body:
            yield utf8_body(body, f"stdin line {number}")


def _message(number: int, body: bytes) -> str:
    """"message 3 (12 bytes, 'hello world!')": a long body is not quoted whole."""
    preview = repr(body[:40].decode("utf-8", "replace")) + ("..." if len(body) > 40 else "")
    return f"message {number} ({len(body)} bytes, {preview})"


def _while(number: int, body: bytes) -> str:
    return f"while sending {_message(number, body)}: " if number else ""


def _declare(connection, queue: str, pool) -> None:
    try:
        if pool is not None:
            queues.declare_work_queue(connection, pool, amqp.server_version(connection)[1])
            return
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
            channel.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            connection.channel().queue_declare(queue, durable=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        # 406: the queue exists with other arguments than the pool declares.
        error, reply = errors.WqdError, exc.reply_text
        if exc.reply_code == 406:
            error = errors.ConfigError
            reply = queues.telling_reply(connection, pool, queue, reply) if pool is not None else reply
        raise error(f"cannot use queue {queue!r}: the broker said {exc.reply_code} {reply}") from None
