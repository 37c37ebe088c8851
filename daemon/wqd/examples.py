"""Example handlers; ``sleep_dots`` is the RabbitMQ tutorial's worker.py."""

import time

from wqd.message import Message


def sleep_dots(message: Message) -> None:
    """Pretend to work: one second per dot in the body, like the tutorial."""
    print(f"{message.worker}  [x] Received {message.text!r}", flush=True)
    time.sleep(message.body.count(b"."))
    print(f"{message.worker}  [x] Done", flush=True)


def noop(message: Message) -> None:
    """Do nothing: for benchmarks that measure wqd's own overhead."""
