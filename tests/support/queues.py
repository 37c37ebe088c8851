"""Waiting on a queue's counts without loading the machine: ready messages and
consumers over AMQP (a passive queue.declare, one short connection) every
0.2 s; unacknowledged messages, which only rabbitmqctl reports, every 0.5 s
(each rabbitmqctl call boots an Erlang VM for about 0.3 s)."""

from __future__ import annotations

from typing import Callable

import pika.exceptions

from tests.support.broker import BrokerNode
from tests.support.waiting import wait_for

AMQP_POLL_INTERVAL = 0.2
CTL_POLL_INTERVAL = 0.5


def queue_counts(node: BrokerNode, queue: str) -> dict | None:
    """{messages_ready, consumers} of ``queue`` over AMQP, None if there is no such queue."""
    with node.connection() as connection:
        try:
            method = connection.channel().queue_declare(queue, passive=True).method
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
    return {"messages_ready": method.message_count, "consumers": method.consumer_count}


def wait_queue(node: BrokerNode, queue: str, timeout: float, message: str | Callable[[], str] = "",
               **expected: int) -> dict:
    """Wait until ``queue`` exists and its counts (keywords messages_ready,
    consumers, messages_unacknowledged) equal ``expected``; return the counts.
    ``message`` (or what it returns, if callable) explains a timeout."""
    if "messages_unacknowledged" in expected:
        read, interval = node.queue_stats, CTL_POLL_INTERVAL
    else:
        read, interval = (lambda name: queue_counts(node, name)), AMQP_POLL_INTERVAL

    def reached():
        counts = read(queue)
        return counts if counts is not None and all(counts[k] == v for k, v in expected.items()) else None

    return wait_for(reached, timeout, interval=interval,
                    message=lambda: f"{queue} to have {expected}: {message() if callable(message) else message}")
