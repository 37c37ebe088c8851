"""wqd: a supervised multi-process work-queue daemon for RabbitMQ."""

from wqd.message import Message, Reject
from wqd.publishing import Publisher, PublishError

__version__ = "0.1.0"
__all__ = ["Message", "PublishError", "Publisher", "Reject", "__version__"]
