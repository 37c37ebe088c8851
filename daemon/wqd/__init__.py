"""wqd: a supervised multi-process work-queue daemon for RabbitMQ.

The processes and what runs between them (docs/design.md says why)::

    wqd run: the master (master.py), one loop, never waits on the broker
     |   signals -> wakeup fd; reaps children; /metrics /healthz /readyz /status (http_endpoint.py)
     |
     |-- fork --> worker pool[slot], one per slot (worker.py, consumer.py, routing.py)
     |              report pipe    worker -> master   connected, consuming, lost attempts  (reporting.py)
     |              command pipe   master -> worker   answers about lost attempts          (lost_attempts.py)
     |              shared memory  worker -> master   running task, totals, alive stamp    (worker_record.py)
     |              shared memory  worker -> master   messages finished, before each ack   (deduplication.py)
     |              quiet switch   master -> worker   stop consuming / consume again        (quiet.py)
     |              AMQP           worker <-> broker  one connection, prefetch, acks, copies
     |                |
     |                `-- fork --> exec command (exec_handler.py): stdin/stdout, one per task or per worker
     |
     |-- fork --> queue monitor (queue_monitor.py): AMQP -> queue depths -> report pipe -> master
     |
     `-- fork --> reload (reloading.py), on SIGHUP: YAML + handler code from disk -> pickle pipe -> master

    wqd publish / status / dead / check --broker / declare (cli.py): one process, its own AMQP connection
    wqd.Publisher, wqd.AsyncPublisher (publishing/): in the application's processes
"""

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
