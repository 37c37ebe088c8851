"""The properties of a copy wqd publishes of a delivery (a retry, a dead
letter, a delivery given back, a replay): what it keeps, what it drops, and
headers that pika could decode but cannot encode again."""

import copy
import logging

import pika
import pika.data

from wqd.redelivery.headers import DELIVERY_COUNT_HEADER

log = logging.getLogger("wqd.worker")

# Headers the broker owns (they describe the original's path; RabbitMQ 3.x
# would build on a copied x-death, and a stale x-delivery-count would count
# the copy's attempts wrong), and CC/BCC.
BROKER_HEADERS = ("CC", "BCC", DELIVERY_COUNT_HEADER, "x-death")
BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


def copy_properties(properties):
    """The properties of a retried or dead-lettered copy: persistent, and
    without ``expiration`` (a dead letter must stay; a retry gets its own)."""
    copied = republished_properties(properties)
    copied.delivery_mode = pika.DeliveryMode.Persistent.value
    copied.expiration = None
    return copied


def republished_properties(properties):
    """A copy of a delivery's properties (the handler's message keeps its own)
    that wqd may publish: without ``user_id`` (the broker refuses it unless it
    is wqd's own user, closing the channel), the CC/BCC headers (they would
    route the copy to other queues as well) and the headers the broker owns
    (x-delivery-count, x-death, x-first-death-*, x-last-death-*: they describe
    the original's path; RabbitMQ 3.x would build on a copied x-death, and a
    stale x-delivery-count would count the copy's attempts wrong)."""
    copied = copy.copy(properties)
    copied.user_id = None
    if isinstance(copied.headers, dict) and any(not_copied(name) for name in copied.headers):
        copied.headers = {name: value for name, value in copied.headers.items() if not not_copied(name)}
    return copied


def not_copied(name) -> bool:
    """Whether a copy wqd publishes drops header ``name``: CC and BCC (they would
    route the copy to other queues as well) and the headers the broker owns."""
    return name in BROKER_HEADERS or (isinstance(name, str) and name.startswith(BROKER_HEADER_PREFIXES))


def encodable(properties):
    """``properties``, or, when a header value cannot be encoded again (one pika
    decoded from another client's type), a copy without those values."""
    try:
        properties.encode()
        return properties
    except Exception:  # whatever pika's encoder raises: struct.error, TypeError, its own
        pass
    copied = copy.copy(properties)
    copied.headers = {}
    for name, value in (properties.headers or {}).items():
        try:
            pika.data.encode_value([], value)
        except Exception:
            log.warning("Dropping header %r from the copy of a message: it cannot be encoded again.", name)
            continue
        copied.headers[name] = value
    return copied
