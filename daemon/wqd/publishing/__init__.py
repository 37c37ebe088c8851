"""Publishing tasks from an application: wqd.Publisher (and wqd.AsyncPublisher).

    application threads --publish()--> Publisher --one connection per process--> broker
                                       (publisher.py; asynchronous.py: the same on aio-pika)
        confirms.py   a confirm-mode channel: send a batch, then await its confirms
        messages.py   body encoding, message id, persistent properties
        delays.py     delayed messages through binary delay levels
        outcomes.py   what the broker answered per message; the call's result or error
        republishing.py  the ids sent without a confirm: published again, they ask wqd to check for a duplicate
        tracing.py    a PRODUCER span per message, when OpenTelemetry is set up
        sizes.py      the largest message the broker takes
        errors.py     PublishError and its kinds
"""

from wqd.publishing.errors import BrokerUnreachable, PublishError, QueueNotFound
from wqd.publishing.publisher import Publisher

__all__ = ["BrokerUnreachable", "Publisher", "PublishError", "QueueNotFound"]
