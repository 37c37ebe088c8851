"""Retry delays on RabbitMQ 4.3: wqd's delay queues against the quorum queue's
native delayed retry (x-delayed-retry-*), measured side by side on one node.

For each delay, N persistent messages wait that long before they are
consumable again, both ways, alternated round by round:

- delay queues (what wqd does on every version): a copy published with
  confirms to ``<queue>.delay.<ms>`` (message TTL, dead-lettered back to the
  work queue), the original acked;
- native: the original rejected with requeue=true into a quorum queue declared
  with x-delayed-retry-type=all and x-delayed-retry-min = -max = the delay.

Lateness (each message's arrival minus its due time: its copy's confirm or
its reject, plus the delay) p50/p99/max is printed. A node of RabbitMQ 4.3 is needed: give the
root filesystem as for the tests (WQD_TEST_RABBITMQ_ROOT=.cache/rabbitmq-forky).

    WQD_TEST_RABBITMQ_ROOT=$PWD/.cache/rabbitmq-forky .venv/bin/python -m bench.delayed_retry [--messages 500]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pika

from tests.support.broker import BrokerNode


def delay_queue_round(connection, delay_ms: int, count: int) -> list:
    """Lateness (s) of each message retried through a delay queue."""
    channel = connection.channel()
    work = f"bench.dq.{delay_ms}"
    channel.queue_declare(work, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_declare(f"{work}.delay.{delay_ms}", durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": "", "x-dead-letter-routing-key": work,
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish", "x-message-ttl": delay_ms})
    channel.confirm_delivery()
    due = {}
    for number in range(count):
        body = str(number).encode()
        channel.basic_publish("", f"{work}.delay.{delay_ms}", body, pika.BasicProperties(delivery_mode=2))
        due[body] = time.monotonic() + delay_ms / 1000  # from its confirm: a retry is due once the copy is safe
    return _lateness(channel, work, due)


def native_round(connection, delay_ms: int, count: int) -> list:
    """Lateness (s) of each message returned into a queue with native delayed retry."""
    channel = connection.channel()
    work = f"bench.native.{delay_ms}"
    channel.queue_declare(work, durable=True, arguments={
        "x-queue-type": "quorum", "x-delayed-retry-type": "all",
        "x-delayed-retry-min": delay_ms, "x-delayed-retry-max": delay_ms})
    channel.confirm_delivery()
    for number in range(count):
        channel.basic_publish("", work, str(number).encode(), pika.BasicProperties(delivery_mode=2))
    channel.basic_qos(prefetch_count=count)
    tags = []
    channel.basic_consume(work, lambda ch, method, properties, body: tags.append(method.delivery_tag))
    deadline = time.monotonic() + 60
    while len(tags) < count and time.monotonic() < deadline:
        connection.process_data_events(0.1)
    channel.close()  # a clean slate: the consumer below sees only the returned messages
    channel = connection.channel()
    channel.basic_qos(prefetch_count=count)
    first = []
    channel.basic_consume(work, lambda ch, method, properties, body: first.append((method.delivery_tag, body)))
    deadline = time.monotonic() + 60
    while len(first) < count and time.monotonic() < deadline:
        connection.process_data_events(0.1)
    due = {}
    for tag, body in first:
        channel.basic_reject(tag, requeue=True)
        due[body] = time.monotonic() + delay_ms / 1000
    channel.close()
    return _lateness(connection.channel(), work, due)


def _lateness(channel, queue: str, due: dict) -> list:
    """Each message's arrival in ``queue`` minus its due time, in seconds."""
    arrivals = []

    def arrived(ch, method, properties, body):
        arrivals.append(time.monotonic() - due[body])
        ch.basic_ack(method.delivery_tag)

    channel.basic_qos(prefetch_count=100)
    channel.basic_consume(queue, arrived)
    deadline = max(due.values()) + 120
    while len(arrivals) < len(due) and time.monotonic() < deadline:
        channel.connection.process_data_events(0.05)
    channel.queue_delete(queue)
    return arrivals


def _summary(name: str, delay_ms: int, lateness: list, count: int) -> str:
    if len(lateness) < count:
        return f"{name:<14}{delay_ms:>8} ms  only {len(lateness)} of {count} arrived"
    ordered = sorted(lateness)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (f"{name:<14}{delay_ms:>8} ms  late p50 {statistics.median(ordered) * 1000:7.1f} ms  "
            f"p99 {p99 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--delays", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wqd-bench-delay-") as base:
        node = BrokerNode(Path(base))
        node.start()
        try:
            print(f"RabbitMQ {node.ctl('version').strip()}, {args.messages} messages per round")
            connection = pika.BlockingConnection(pika.URLParameters(node.url))
            for round_number in range(args.rounds):
                ways = [("delay queue", delay_queue_round), ("native", native_round)]
                for name, run in ways if round_number % 2 == 0 else reversed(ways):
                    for delay_ms in args.delays:
                        print(_summary(name, delay_ms, run(connection, delay_ms, args.messages), args.messages))
            connection.close()
        finally:
            node.stop()


if __name__ == "__main__":
    main()
