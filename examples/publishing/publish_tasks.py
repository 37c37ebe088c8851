"""Publish tasks from an application with wqd.Publisher.

    wqd declare -c examples/publishing/wqd.yaml       # the pool's queues, once (or start wqd)
    wqd run -c examples/publishing/wqd.yaml &         # the workers
    python examples/publishing/publish_tasks.py -c examples/publishing/wqd.yaml

One Publisher per process, shared by its threads; in a web app made before
its server forks (gunicorn --preload), each worker process connects anew.
"""

import argparse
import sys

import wqd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="the wqd YAML (default: $WQD_CONFIG, else /etc/wqd/wqd.yaml)")
    parser.add_argument("--queue", default="task_queue")
    args = parser.parse_args()
    with wqd.Publisher.from_config(args.config, timeout=10) as publisher:
        try:
            # Returns once the broker confirmed the message (it is on disk): the id to log or store.
            first = publisher.publish(args.queue, "First message.")
            # An id of your own (an order number) makes a message you publish again recognisable.
            publisher.publish(args.queue, "Order 17...", message_id="order-17", headers={"tenant": "acme"})
            # Delivered no earlier than 5 s from now.
            publisher.publish(args.queue, "Later.", delay=5)
            # Many at once: sent together, confirmed together.
            ids = publisher.publish_many(args.queue, [f"Batch {n}." for n in range(10)])
        except wqd.PublishError as exc:
            # Not confirmed: it may or may not be in the queue. exc.unconfirmed are the ids to publish again.
            print(f"not sent: {exc}", file=sys.stderr)
            return 1
    print(f"sent {first}, order-17, a delayed one and {len(ids)} more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
