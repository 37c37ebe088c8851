"""Publishing tasks from an application: wqd.Publisher (and wqd.AsyncPublisher).

    application thread(s) --publish()--> Publisher --one connection per process--> broker
        confirms.py   a confirm-mode channel: send a batch, then await its confirms
        messages.py   body encoding, message id, persistent properties
        delays.py     delayed messages through binary delay levels
        tracing.py    a PRODUCER span per message, when OpenTelemetry is set up
        errors.py     PublishError and its kinds
"""

from wqd.publishing.errors import BrokerUnreachable, PublishError, QueueNotFound
from wqd.publishing.publisher import Publisher

__all__ = ["BrokerUnreachable", "Publisher", "PublishError", "QueueNotFound"]
