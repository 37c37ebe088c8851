#!/usr/bin/env python3
"""The RabbitMQ tutorial's worker.py ("Work queues"), as many applications
run it before moving to wqd: a durable queue, prefetch 1, an ack after the
work. docs/migrating.md moves it to wqd with no message lost and no pause;
tests/test_migration.py runs each step. The broker URL, queue and queue
arguments come from the environment so the test can point it at its own
broker (RABBITMQ_URL, QUEUE, QUEUE_ARGUMENTS as JSON)."""

import json
import os
import sys
import time

import pika


def main() -> None:
    connection = pika.BlockingConnection(pika.URLParameters(os.environ.get("RABBITMQ_URL", "amqp://localhost")))
    channel = connection.channel()
    queue = os.environ.get("QUEUE", "task_queue")
    channel.queue_declare(queue=queue, durable=True, arguments=json.loads(os.environ.get("QUEUE_ARGUMENTS", "null")))
    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)

    def callback(ch, method, properties, body):
        print(f" [x] Received {body.decode()}", flush=True)
        time.sleep(body.count(b"."))
        print(f" [x] Done {body.decode()}", flush=True)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=callback)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        connection.close()  # what it had not acked goes back to the queue
        sys.exit(0)


if __name__ == "__main__":
    main()
