"""wqd: a supervised multi-process work-queue daemon for RabbitMQ."""

from wqd.message import Message, Reject

__version__ = "0.1.0"
__all__ = ["Message", "Reject", "__version__"]
