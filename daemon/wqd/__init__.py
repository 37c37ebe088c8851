"""wqd: a supervised multi-process work-queue daemon for RabbitMQ.

The processes and what runs between them (docs/design.md says why)::

    wqd run: the master (master/arbiter.py), one loop, never waits on the broker
     |   signals -> wakeup fd; reaps children; /metrics /healthz /readyz /status (master/http_endpoint.py)
     |   the operator's console at / (console/app.py): pages from the master's memory, actions by token
     |
     |-- fork --> worker pool[slot], one per slot (worker/main.py, worker/consumer.py, worker/routing.py)
     |              report pipe    worker -> master   connected, consuming, questions     (ipc/reporting.py)
     |              command pipe   master -> worker   lost attempts and answers           (redelivery/lost_attempts.py)
     |              shared memory  worker -> master   running task, totals, alive stamp   (ipc/worker_record.py)
     |              shared memory  worker -> master   messages finished, before each ack  (redelivery/deduplication.py)
     |              quiet switch   master -> worker   stop consuming / consume again       (ipc/quiet.py)
     |              AMQP           worker <-> broker  one connection, prefetch, acks, copies (broker/)
     |                |
     |                `-- spawn --> exec command (handlers/exec_handler.py): stdin/stdout, per task or per worker
     |
     |-- fork --> queue monitor (master/queue_monitor.py): AMQP -> queue depths -> report pipe -> master
     |
     |-- fork --> outbox relay (outbox/relay.py), with an outbox section: PostgreSQL rows -> AMQP -> delete
     |              report pipe    relay -> master    up/down, rows relayed and refused, rows waiting (master/outbox_relay.py)
     |
     |-- fork --> console job (console/dead_work.py), one at a time: read, replay or purge dead letters -> pipe
     |
     `-- fork --> reload (master/reloading.py), on SIGHUP: YAML + handler code from disk -> pickle pipe -> master

    wqd publish / status / dead / check --broker / declare (cli/): one process, its own AMQP connection
    wqd.Publisher, wqd.AsyncPublisher (publishing/): in the application's processes
    wqd.outbox.enqueue (outbox/): in the application's processes, inside its database transaction

    imports go one way:  cli/ -> master/ -> worker/ -> publishing/, outbox/, tracing.py -> broker/, handlers/
                         -> ipc/, redelivery/ -> config/ -> errors.py, exits.py, logs.py, message.py
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
