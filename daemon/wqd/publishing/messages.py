"""A message as the publisher sends it: body encoding, properties, delay."""

import datetime
import json
import math
import os
import random
from typing import Any, Iterable, Optional

import pika

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
# An AMQP shortstr (message_id, content_type) holds at most 255 bytes.
SHORTSTR = 255

# Message ids are random (version 4) UUIDs, drawn from a generator of
# their own, seeded from os.urandom at import and again in a forked child
# (so two processes never share a sequence): uuid.uuid4() costs a getrandom
# system call per message, where the rest of a publish makes three. An
# application's random.seed() does not touch it.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_message_id() -> str:
    """A random UUID, as 32 hex digits (uuid.uuid4().hex's form)."""
    return f"{_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


class Outgoing:
    """One message ready to send: its id, encoded body, properties, delay
    (whole seconds, 0 for none), and where it goes (set when it is sent)."""
    __slots__ = ("message_id", "body", "properties", "delay", "exchange", "routing_key")

    def __init__(self, message_id: str, body: bytes, properties: pika.BasicProperties, delay: int):
        self.message_id, self.body, self.properties, self.delay = message_id, body, properties, delay
        self.exchange, self.routing_key = "", ""


def encode_body(body: Any):
    """(bytes, content type) for a body: bytes as they are, str as UTF-8 text,
    anything else as JSON. Raises TypeError naming what cannot be encoded."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), None
    if isinstance(body, str):
        return body.encode("utf-8"), TEXT
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8"), JSON
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a message body must be bytes, str or a JSON-serialisable value; "
                        f"{type(body).__name__} is not ({exc})") from None


def delay_seconds(delay) -> int:
    """Whole seconds for ``delay`` (seconds or a timedelta), rounded up so a
    message never arrives early; 0 for None. Raises ValueError/TypeError."""
    if delay is None:
        return 0
    if isinstance(delay, datetime.timedelta):
        delay = delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"delay must be a number of seconds or a timedelta, not {type(delay).__name__}")
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return math.ceil(delay)


def outgoing(body, message_id: Optional[str], headers: Optional[dict], delay, content_type: Optional[str],
             persistent: bool = True) -> Outgoing:
    """Check and encode one message; raises TypeError or ValueError, before anything is sent."""
    data, default_type = encode_body(body)
    if message_id is None:
        message_id = new_message_id()
    elif not isinstance(message_id, str) or not message_id or len(message_id.encode("utf-8")) > SHORTSTR:
        raise ValueError(f"message_id must be a non-empty str of at most {SHORTSTR} bytes, got {message_id!r}")
    if headers is not None and (not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers)):
        raise TypeError(f"headers must be a dict with str keys, got {headers!r}")
    content_type = content_type or default_type
    if content_type is not None and (not isinstance(content_type, str) or len(content_type) > SHORTSTR):
        raise ValueError(f"content_type must be a str of at most {SHORTSTR} characters, got {content_type!r}")
    mode = pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient
    properties = pika.BasicProperties(delivery_mode=mode.value, message_id=message_id,
                                      content_type=content_type, headers=dict(headers) if headers else None)
    if headers:  # the other properties are checked above
        try:
            properties.encode()
        except Exception as exc:  # whatever pika's encoder raises for a header value it cannot send
            raise ValueError(f"headers cannot be sent as AMQP field values: {exc!r}") from None
    return Outgoing(message_id, data, properties, delay_seconds(delay))


def outgoing_batch(bodies: Iterable, message_ids: Optional[Iterable[str]], headers: Optional[dict], delay,
                   content_type: Optional[str], persistent: bool = True) -> list:
    """``outgoing()`` for each body (publish_many), its id from ``message_ids`` when given."""
    bodies = list(bodies)
    ids = [None] * len(bodies) if message_ids is None else list(message_ids)
    if len(ids) != len(bodies):
        raise ValueError(f"publish_many: {len(ids)} message_ids for {len(bodies)} bodies")
    return [outgoing(body, message_id, headers, delay, content_type, persistent)
            for body, message_id in zip(bodies, ids)]
