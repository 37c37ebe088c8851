"""``wqd publish``: persistent messages, publisher confirms, mandatory routing."""

import time
import uuid

import pika
import pika.exceptions

from wqd import amqp, backoff, errors

# A quorum queue nacks publishes while it has no leader (a node died, an
# election runs, usually under a second); the same channel may then go on
# nacking (RabbitMQ 3.10), so a nacked message is published again on a new
# channel, after 0.2, 0.4, 0.8, 1.6, 2, 2... s, at most this many times.
NACK_RETRIES = 8
NACK_RETRY_INITIAL = 0.2
NACK_RETRY_MAX = 2.0


def publish_lines(broker, queue: str, pool, bodies, headers: dict, persistent: bool = True):
    """Publish each body to ``queue``; yield it once the broker confirmed it.

    The queue is declared as the pool declares it (durable; its queue_type),
    so publishing first and starting wqd later loses nothing. Without a pool
    (``--url``), an existing queue is used as it is, or a durable classic one
    is created. With several broker URLs the first that answers is used.
    Raises errors.BrokerUnavailable when the broker cannot be reached or will
    not take a message, errors.ConfigError when the queue exists with other
    arguments than the pool's, errors.WqdError otherwise.
    """
    connection, index = amqp.connect_any(broker, name="wqd publish")
    try:
        channel = connection.channel()
        _declare(connection, channel, queue, pool)
        channel = connection.channel() if channel.is_closed else channel
        channel.confirm_delivery()
        delivery_mode = pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient
        for body in bodies:
            properties = pika.BasicProperties(delivery_mode=delivery_mode, message_id=uuid.uuid4().hex,
                                              headers=headers or None)
            nacks = 0
            while True:
                try:
                    channel.basic_publish("", queue, body.encode(), properties, mandatory=True)
                    break
                except pika.exceptions.UnroutableError:
                    raise errors.WqdError(f"message {body!r} could not be routed to queue {queue!r} "
                                          f"(does the queue exist?)") from None
                except pika.exceptions.NackError:
                    nacks += 1
                    if nacks > NACK_RETRIES:
                        raise errors.BrokerUnavailable(
                            f"the broker refused message {body!r} (nack, {nacks} times)") from None
                    time.sleep(backoff.exponential(nacks, NACK_RETRY_INITIAL, NACK_RETRY_MAX))
                    channel = connection.channel()
                    channel.confirm_delivery()
            yield body
    except (pika.exceptions.AMQPConnectionError, OSError) as exc:
        raise errors.BrokerUnavailable(amqp.describe_error(exc, broker.urls[index])) from None
    finally:
        if connection.is_open:
            connection.close()


def _declare(connection, channel, queue: str, pool) -> None:
    try:
        if pool is not None:
            channel.queue_declare(queue, durable=True, arguments=amqp.queue_arguments(pool.queue_type))
            return
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            connection.channel().queue_declare(queue, durable=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        # 406: the queue exists with other arguments than the pool declares.
        error = errors.ConfigError if exc.reply_code == 406 else errors.WqdError
        raise error(f"cannot use queue {queue!r}: the broker said {exc.reply_code} {exc.reply_text}") from None
