"""What a handler receives, and how it refuses a message for good."""

import codecs
import json as _json
import re
from typing import Any, Optional


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
        """The body decoded by the charset of its content type (``text/plain;
        charset=latin-1``), else by a content encoding that names a character
        set (some clients put it there), else as UTF-8. A content encoding
        that is not one (gzip, deflate, kombu's binary) says how the body was
        packed, not how to read it, and is left to the handler."""
        return self.body.decode(_charset(self.properties.content_type) or _charset_name(
            self.properties.content_encoding) or "utf-8")

    def json(self) -> Any:
        return _json.loads(self.body)

    @property
    def message_id(self) -> str:
        return self.properties.message_id or ""

    def __repr__(self) -> str:
        return f"<Message {self.queue} attempt={self.attempt} {self.body[:40]!r}>"


def _charset(content_type) -> Optional[str]:
    """The charset parameter of a content type, if it names a character set."""
    found = re.search(r";\s*charset=\"?([\w.:-]+)", content_type) if isinstance(content_type, str) else None
    return _charset_name(found.group(1)) if found else None


def _charset_name(name) -> Optional[str]:
    """``name`` when Python knows it as a character set (not gzip, rot13 or base64)."""
    if not isinstance(name, str):
        return None
    try:
        return name if codecs.lookup(name)._is_text_encoding else None
    except LookupError:
        return None
