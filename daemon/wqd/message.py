"""What a handler receives, and how it refuses a message for good."""

import json as _json
from typing import Any


class Reject(Exception):
    """Raise from a handler to dead-letter the message at once, without retries."""


class Message:
    """One delivery, as handed to ``handle(message)``.

    ``attempt`` is 1 on the first delivery and counts retries and redeliveries
    as far as the broker lets wqd know (see docs/delivery-guarantees.md).
    """

    __slots__ = ("body", "properties", "redelivered", "attempt", "queue", "pool", "worker")

    def __init__(self, body, properties, redelivered, attempt, queue, pool, worker):
        self.body: bytes = body
        self.properties = properties
        self.redelivered: bool = redelivered
        self.attempt: int = attempt
        self.queue: str = queue
        self.pool: str = pool
        self.worker: str = worker

    @property
    def headers(self) -> dict:
        return self.properties.headers or {}

    @property
    def text(self) -> str:
        return self.body.decode(self.properties.content_encoding or "utf-8")

    def json(self) -> Any:
        return _json.loads(self.body)

    @property
    def message_id(self) -> str:
        return self.properties.message_id or ""

    def __repr__(self) -> str:
        return f"<Message {self.queue} attempt={self.attempt} {self.body[:40]!r}>"
