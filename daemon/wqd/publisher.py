"""``wqd publish``: persistent messages, publisher confirms, mandatory routing."""

import re
import time
import uuid

import pika
import pika.exceptions

from wqd import amqp, backoff, errors, queues
from wqd.publishing.sizes import max_message_size

# A quorum queue nacks publishes while it has no leader (a node died, an
# election runs, usually under a second); the same channel may then go on
# nacking (RabbitMQ 3.10), so a nacked message is published again on a new
# channel, after 0.2, 0.4, 0.8, 1.6, 2, 2... s, at most this many times.
NACK_RETRIES = 8
NACK_RETRY_INITIAL = 0.2
NACK_RETRY_MAX = 2.0

_NOT_SENT = "it was not sent, nor anything after it"
_SIZE_REFUSAL = re.compile(r"larger than (?:the )?(?:configured )?max(?:imum)? size (\d+)", re.IGNORECASE)


def publish_lines(broker, queue: str, pool, bodies, headers: dict, persistent: bool = True, tracing=None):
    """Publish each body to ``queue``; yield it once the broker confirmed it.

    ``bodies`` is a list of bytes, or a binary stream whose lines (UTF-8
    text, the newline removed, empty ones skipped) are the bodies: read one at
    a time, never more than the broker takes. A body that cannot be sent
    stops the run: those before it were sent and confirmed, it and those after
    it are not sent.

    The queue is declared as the pool declares it (durable; its queue_type),
    so publishing first and starting wqd later loses nothing. Without a pool
    (``--url``), an existing queue is used as it is, or a durable classic one
    is created. With several broker URLs the first that answers is used.
    Raises errors.BrokerUnavailable when the broker cannot be reached or will
    not take a message, errors.InputError for a body that is not UTF-8 or too
    large, errors.ConfigError when the queue exists with other arguments than
    the pool's, errors.WqdError otherwise.

    ``tracing`` (a tracing.PublishTracing, when tracing is enabled) gives
    each message a PRODUCER span, whose context its headers carry.
    """
    connection, index = amqp.connect_any(broker, name="wqd publish")
    url = broker.urls[index]
    number, body = 0, b""
    try:
        limit, limit_name = max_message_size(connection)
        channel = connection.channel()
        _declare(connection, channel, queue, pool)
        channel = connection.channel() if channel.is_closed else channel
        channel.confirm_delivery()
        delivery_mode = pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient
        for number, body in enumerate(_read_lines(bodies, limit, limit_name) if hasattr(bodies, "readline") else bodies, 1):
            if len(body) > limit:
                raise errors.InputError(f"{_message(number, body)} is larger than the broker takes: {limit_name} "
                                        f"is {limit} bytes; {_NOT_SENT}")
            message_id = uuid.uuid4().hex
            span, message_headers = tracing.start(message_id, headers) if tracing else (None, headers)
            properties = pika.BasicProperties(delivery_mode=delivery_mode, message_id=message_id,
                                              headers=message_headers or None)
            try:
                channel = _publish(connection, channel, queue, number, body, properties)
            except BaseException as exc:
                if span is not None:
                    tracing.end(span, exc)
                raise
            if span is not None:
                tracing.end(span)
            yield body
    except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as exc:
        refused = _SIZE_REFUSAL.search(exc.reply_text or "")
        if refused:
            raise errors.InputError(f"the broker refused {_message(number, body)}: it takes at most "
                                    f"{refused.group(1)} bytes (its max_message_size); {_NOT_SENT}") from None
        error = errors.BrokerUnavailable if isinstance(exc, pika.exceptions.AMQPConnectionError) else errors.WqdError
        raise error(_while(number, body) + amqp.describe_error(exc, url)) from None
    except (pika.exceptions.AMQPConnectionError, OSError) as exc:
        raise errors.BrokerUnavailable(_while(number, body) + amqp.describe_error(exc, url)) from None
    except pika.exceptions.AMQPChannelError as exc:
        raise errors.WqdError(_while(number, body) + amqp.describe_error(exc, url)) from None
    finally:
        if connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass  # the error that ended the run says it all


def _publish(connection, channel, queue: str, number: int, body: bytes, properties):
    """Publish one message until the broker confirms it; return the channel
    to go on with (a new one after a nack)."""
    nacks = 0
    while True:
        try:
            channel.basic_publish("", queue, body, properties, mandatory=True)
            return channel
        except pika.exceptions.UnroutableError:
            raise errors.WqdError(f"{_message(number, body)} could not be routed to queue {queue!r} "
                                  f"(does the queue exist?)") from None
        except pika.exceptions.NackError:
            nacks += 1
            if nacks > NACK_RETRIES:
                raise errors.BrokerUnavailable(
                    f"the broker refused {_message(number, body)} (nack, {nacks} times)") from None
            time.sleep(backoff.exponential(nacks, NACK_RETRY_INITIAL, NACK_RETRY_MAX))
            channel = connection.channel()
            channel.confirm_delivery()


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


def _declare(connection, channel, queue: str, pool) -> None:
    try:
        if pool is not None:
            queues.declare_work_queue(connection, pool, amqp.server_version(connection)[1])
            return
        try:
            channel.queue_declare(queue, passive=True)
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
