"""wqd: a supervised multi-process work-queue daemon for RabbitMQ."""

from wqd.message import Message, Reject

__version__ = "0.1.0"
__all__ = ["AsyncPublisher", "Message", "PublishError", "Publisher", "Reject", "__version__"]

# Imported on first use: a handler's `import wqd` stays as light as it was
# (no pika, no YAML), and AsyncPublisher needs aio-pika (the wqd[asyncio] extra).
_LAZY = {"Publisher": "wqd.publishing", "PublishError": "wqd.publishing", "AsyncPublisher": "wqd.publishing.asynchronous"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wqd' has no attribute {name!r}")
