"""The transactional outbox: enqueue a task in the application's own
PostgreSQL transaction; wqd's relay publishes it once that commits.

    application ──INSERT (its transaction)──> outbox table ──NOTIFY at commit──┐
    wqd master ── relay child (outbox/relay.py): SELECT … FOR UPDATE SKIP LOCKED <┘
                  ──publish with confirms──> RabbitMQ ──confirmed──> DELETE the rows

A row is deleted only after the broker confirmed its message, in the same
database transaction that locked it, so a relay that dies in between
publishes the row again under the same message id; the copy carries
``x-wqd-check-duplicate``, so a worker acks it without running it when this
host's master already saw that id finish. (psycopg 3 is needed only here: the
wqd[outbox] extra.)
"""

from wqd.outbox.enqueue import enqueue, enqueue_many

__all__ = ["enqueue", "enqueue_many"]
