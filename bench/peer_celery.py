"""The Celery app `make bench PEERS=1` runs (in .cache/bench-peers, with bench/ on
sys.path): one no-op task, settings equal to wqd's in the benchmark.

acks_late (ack after the task), worker_prefetch_multiplier 1 (the consumer's
prefetch is the pool's N: one per child), the prefork pool (bench/run.py
passes --concurrency N), no result backend. bench/peers.py publishes the
task messages itself (protocol 2, JSON), persistent, like every system's.
"""

import os

from celery import Celery
from latency_record import record

app = Celery("bench", broker=os.environ["WQD_BENCH_AMQP_URL"])
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(published=None):
    if published is not None:
        record(published)
