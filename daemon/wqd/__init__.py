"""wqd: a supervised multi-process work-queue daemon for RabbitMQ."""

from wqd.message import Message, Reject
from wqd.publishing import Publisher, PublishError

__version__ = "0.1.0"
__all__ = ["AsyncPublisher", "Message", "PublishError", "Publisher", "Reject", "__version__"]


def __getattr__(name):
    """wqd.AsyncPublisher, imported on first use: importing wqd loads neither aio-pika nor its asyncio code."""
    if name == "AsyncPublisher":
        from wqd.publishing.asynchronous import AsyncPublisher
        return AsyncPublisher
    raise AttributeError(f"module 'wqd' has no attribute {name!r}")
