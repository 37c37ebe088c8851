"""Putting letters into a dead-letter queue as any publisher could: names, ids
and properties of any bytes, and header values given as their AMQP encoding
(RawValue), which pika's encoder does not write (a double, a NaN, a timestamp
past year 9999, an array nested 1,500 deep)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import pika
import pika.data


class RawValue(bytes):
    """A header value as it goes on the wire: its type octet, then its payload."""


def publish_letters(broker, dlq: str, letters: Iterable[tuple[bytes, pika.BasicProperties]]) -> None:
    """Publish (body, properties) pairs as they are to ``dlq`` (declared
    durable), mandatory and confirmed."""
    with broker.connection() as connection, _raw_values_encoded():
        channel = connection.channel()
        channel.queue_declare(dlq, durable=True)
        channel.confirm_delivery()
        for body, properties in letters:
            channel.basic_publish("", dlq, body, properties, mandatory=True)


@contextlib.contextmanager
def _raw_values_encoded():
    """pika.data.encode_value writing a RawValue as it is, while the block runs
    (pika's tables and arrays call it by its module name). Only then: the
    wrapper doubles the stack an encoding takes per level of nesting, which
    other tests measure against Python's recursion limit."""
    encode_value = pika.data.encode_value

    def encode_raw_or_value(pieces, value):
        if isinstance(value, RawValue):
            pieces.append(bytes(value))
            return len(value)
        return encode_value(pieces, value)

    pika.data.encode_value = encode_raw_or_value
    try:
        yield
    finally:
        pika.data.encode_value = encode_value
