"""Delayed messages without per-message TTL: binary delay levels.

A per-message TTL expires a message only at the head of its queue, so a 5 s
message behind a 1 h one would wait the hour (head-of-line blocking), and one
queue per distinct delay (what retries use: routing.delay_queue) would make
a queue for every delay an application asks for. Instead, as NServiceBus's
RabbitMQ delay infrastructure does, a delay of n whole seconds is split into
its binary digits, and each digit that is 1 is one stay in a queue whose
messages all have the same TTL::

    publish --> exchange wqd.delay.<h>   (h: the highest 1 bit of n)
    exchange wqd.delay.<l>  --bit l = 1-->  queue wqd.delay.<l>  (x-message-ttl 2^l s)
                            --bit l = 0-->  exchange wqd.delay.<l-1>  (or, for l = 0, queue wqd.delay.ready)
    queue wqd.delay.<l> (l > 0) --expired, dead-lettered--> exchange wqd.delay.<l-1>
    queue wqd.delay.0, wqd.delay.ready (x-message-ttl 0) --dead-lettered--> the default exchange --> the queue

The exchanges are headers exchanges matching a message's ``wqd-delay-<l>``
header ("1" or "0"); the routing key is the target queue's name from start
to end, so dead-lettering without a routing-key argument delivers it to that
queue through the default exchange: nothing is bound to, or declared on, the
work queue. Every queue holds messages of one TTL, so its head is always the
first to expire: no head-of-line blocking, on every RabbitMQ version.

The queues are quorum queues, so a cluster keeps the delayed messages of a
node it lost, dead-lettering at least once from level to level: a message
leaves a level only once the next one confirmed it, so a broker restart or
crash between two levels loses nothing. The last hop, into the work queue,
is at most once (queue_arguments() says why): a message whose work queue
was deleted meanwhile is dropped, as the queue's own messages were, and a
crash at the very moment of that hop can lose the message being moved.
"""

LEVELS = 21  # delays up to 2^21 - 1 s (24 days): a TTL is at most 2^32 - 1 ms
MAX_DELAY = 2 ** LEVELS - 1
PREFIX = "wqd.delay"
READY = f"{PREFIX}.ready"
BIT_HEADER = "wqd-delay-{}"


def exchange(level: int) -> str:
    return f"{PREFIX}.{level}"


def queue(level: int) -> str:
    return f"{PREFIX}.{level}"


def queue_arguments(ttl_ms: int, dead_letter_exchange: str) -> dict:
    """A level's quorum queue. Into the next level (one of wqd's exchanges,
    which always routes) at least once; into the work queue (the default
    exchange) at most once: a message whose work queue was deleted would
    otherwise stay at the head of the dead-letter worker's window (32
    messages) and hold up the last hop of every delayed message."""
    arguments = {"x-queue-type": "quorum", "x-message-ttl": ttl_ms, "x-dead-letter-exchange": dead_letter_exchange}
    if dead_letter_exchange:
        arguments.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    return arguments


def route(seconds: int):
    """(exchange, headers) to publish a message delayed by ``seconds`` (>= 1)
    to; raises ValueError past MAX_DELAY."""
    if seconds > MAX_DELAY:
        raise ValueError(f"delay must be at most {MAX_DELAY} s (about {MAX_DELAY // 86400} days), got {seconds} s")
    top = seconds.bit_length() - 1
    return exchange(top), {BIT_HEADER.format(level): str(seconds >> level & 1) for level in range(top + 1)}


def topology() -> list:
    """What to declare, in order (idempotent; wqd's own names and fixed
    arguments, so a redeclare never clashes): ("queue", name, arguments),
    ("exchange", name), ("bind queue" or "bind exchange", destination,
    source exchange, binding arguments)."""
    steps = [("queue", READY, queue_arguments(0, ""))]
    for level in range(LEVELS):
        below = exchange(level - 1) if level else ""
        header = BIT_HEADER.format(level)
        steps += [("exchange", exchange(level)),
                  ("queue", queue(level), queue_arguments(1000 << level, below)),
                  ("bind queue", queue(level), exchange(level), {"x-match": "all", header: "1"}),
                  ("bind exchange", below, exchange(level), {"x-match": "all", header: "0"}) if level else
                  ("bind queue", READY, exchange(level), {"x-match": "all", header: "0"})]
    return steps


def declare(channel) -> None:
    """Declare the topology on a pika BlockingChannel."""
    for kind, name, *rest in topology():
        if kind == "queue":
            channel.queue_declare(name, durable=True, arguments=rest[0])
        elif kind == "exchange":
            channel.exchange_declare(name, "headers", durable=True)
        elif kind == "bind queue":
            channel.queue_bind(name, rest[0], arguments=rest[1])
        else:
            channel.exchange_bind(name, rest[0], arguments=rest[1])
