"""enqueue() and enqueue_many(): rows of the outbox table, written in the caller's transaction.

They take any DB-API connection whose driver uses the %s paramstyle and
talks to PostgreSQL: a psycopg 3 connection (what wqd tests), Django's
``django.db.connection``, or the driver connection under an SQLAlchemy session
(docs/outbox.md). Nothing is committed here: the row is published only if, and
once, the caller's transaction commits. The message is checked by the same
code as Publisher.publish (publishing/messages.py), so a message that could
not be published is refused here, before it is in the table.
"""

import json
from typing import Iterable, Optional

from wqd.config.outbox import outbox_table
from wqd.publishing import delays, messages
from wqd.publishing.sizes import HARD_MAX_MESSAGE_SIZE

DEFAULT_TABLE = "wqd_outbox"


def enqueue(connection, queue: str, body, *, message_id: Optional[str] = None, headers: Optional[dict] = None,
            delay=None, content_type: Optional[str] = None, table: str = DEFAULT_TABLE) -> str:
    """Write one task to the outbox in ``connection``'s current transaction;
    return its message id (the one its message will carry). Raises TypeError
    or ValueError for a message that could not be sent (then nothing was
    written), and the driver's errors as they are."""
    ids = None if message_id is None else [message_id]
    return enqueue_many(connection, queue, [body], message_ids=ids, headers=headers, delay=delay,
                        content_type=content_type, table=table)[0]


def enqueue_many(connection, queue: str, bodies: Iterable, *, message_ids: Optional[Iterable[str]] = None,
                 headers: Optional[dict] = None, delay=None, content_type: Optional[str] = None,
                 table: str = DEFAULT_TABLE) -> list:
    """enqueue() for each body (one statement per row, in one transaction); return their ids."""
    rows = _rows(queue, messages.outgoing_batch(bodies, message_ids, headers, delay, content_type))
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(insert_sql(_checked_table(table)), rows)
    return [row[0] for row in rows]


def insert_sql(table: str) -> str:
    """The INSERT enqueue runs (the one docs/outbox.md gives for other languages)."""
    return (f"INSERT INTO {table} (message_id, queue, body, content_type, headers, delay_seconds) "
            f"VALUES (%s, %s, %s, %s, %s::jsonb, %s)")


def _rows(queue: str, outgoing: list) -> list:
    if not isinstance(queue, str) or not queue or len(queue.encode("utf-8")) > messages.SHORTSTR:
        raise ValueError(f"queue must be a non-empty str of at most {messages.SHORTSTR} bytes, got {queue!r}")
    rows = []
    for message in outgoing:
        if len(message.body) > HARD_MAX_MESSAGE_SIZE:
            raise ValueError(f"message {message.message_id} is {len(message.body)} bytes, larger than RabbitMQ "
                             f"takes at all ({HARD_MAX_MESSAGE_SIZE} bytes); nothing was written")
        if message.delay:
            delays.route(message.delay)  # raises past the longest delay
        headers = message.properties.headers
        try:
            headers_json = json.dumps(headers, allow_nan=False) if headers else None
        except (TypeError, ValueError) as exc:
            raise TypeError(f"outbox headers are stored as JSON, so their values must be JSON values "
                            f"(str, number, bool, None, list, dict): {exc}") from None
        rows.append((message.message_id, queue, message.body, message.properties.content_type, headers_json,
                     message.delay))
    return rows


def _checked_table(table: str) -> str:
    """The outbox.table key's rule: the name is written into the statement."""
    try:
        return outbox_table(table)
    except ValueError as exc:
        raise ValueError(f"table: {exc}, got {table!r}") from None
