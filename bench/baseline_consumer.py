"""The benchmark's baseline: the least a pika work-queue consumer can do.

The RabbitMQ tutorial's worker.py without the work: a BlockingConnection,
prefetch 1, manual ack in the delivery callback, start_consuming. It declares
the queue as wqd does (durable, no arguments), so either may come first.

    python bench/baseline_consumer.py AMQP_URL QUEUE [--latency] [--processes N]

--latency: the body is a publish time; record the pickup latency first
(bench/latency_record.py), as the other systems' latency handlers do.

SIGTERM ends it (default action: the broker requeues an unacked delivery).

--processes N: start N such consumers as children and wait for them (SIGTERM
is passed on), so that the N consumers share one session, as a wqd pool's
workers (and Celery's and Dramatiq's) do. This matters on a busy Linux
machine: with autogroup scheduling (kernel.sched_autogroup_enabled = 1) CPU
is shared fairly between sessions first, so N consumers in N sessions of
their own would get N shares against the other load, a pool one.
"""

import signal
import subprocess
import sys

import pika
from latency_record import record


def main(url: str, queue: str, latency: bool = False) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    channel.basic_qos(prefetch_count=1)

    def on_message(channel, method, properties, body):
        channel.basic_ack(delivery_tag=method.delivery_tag)

    def on_message_recorded(channel, method, properties, body):
        record(body)
        channel.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_consume(queue=queue, on_message_callback=on_message_recorded if latency else on_message)
    channel.start_consuming()


def run_pool(argv: list[str], processes: int) -> None:
    children = [subprocess.Popen([sys.executable, __file__, *argv]) for _ in range(processes)]

    def stop(signum, frame):
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.wait()


if __name__ == "__main__":
    if "--processes" in sys.argv:
        at = sys.argv.index("--processes")
        run_pool(sys.argv[1:at] + sys.argv[at + 2:], int(sys.argv[at + 1]))
    else:
        main(sys.argv[1], sys.argv[2], latency="--latency" in sys.argv[3:])
