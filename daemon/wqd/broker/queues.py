"""The arguments wqd declares a pool's queues with, and the declare itself.

Every client that declares a pool's queue (the workers, ``wqd publish``)
must send the same arguments, or the broker refuses the second declare
(PRECONDITION_FAILED): so they are computed here only, from the pool alone,
the same on every broker version.

A quorum work queue gets an explicit delivery limit and the pool's
dead-letter queue as its dead-letter target. RabbitMQ 4.0 gives quorum
queues a default limit of 20 deliveries and drops a message past it when the
queue has no dead-letter target; wqd's own accounting gives a message up
after max_retries + 1 attempts that killed their worker (each one a
delivery), so the broker's limit is that plus a margin for deliveries lost
to connection failures, and a message past it lands in the dead-letter
queue with x-death reason "delivery_limit" instead of vanishing.

The work queue of a pool with a time_limit gets a consumer timeout that
covers it, so the broker's delivery-acknowledgement timeout never cuts a task
the worker itself would let finish. Up to RabbitMQ 4.2 it is the queue's
x-consumer-timeout (honoured from 3.11.15; older versions accept and ignore
it, and none compares it on a redeclare). RabbitMQ 4.3 moved consumer
timeouts into the queues: classic queues have none at all (and from 4.3.2
refuse the argument), so a classic pool's time_limit is wqd's alone; quorum
queues compare the argument on a redeclare, so wqd gives it per consumer
instead (basic.consume's x-consumer-timeout, which overrides the queue's),
and a quorum queue an older broker created with the argument is redeclared
with the value it has.
"""

import logging
import re
from typing import Optional

import pika.exceptions

from wqd.config.limits import DELIVERY_LIMIT_MARGIN, MAX_QUORUM_RETRIES  # noqa: F401 (queues.MAX_QUORUM_RETRIES)
from wqd.config.schema import arguments_wqd_sets
from wqd.errors import ConfigError

log = logging.getLogger("wqd.queues")


# The broker's delivery-acknowledgement timeout when its configuration does
# not set consumer_timeout (RabbitMQ 3.8.15 and later): 30 minutes.
DEFAULT_CONSUMER_TIMEOUT = 30 * 60.0
# Brokers from this version honour a queue's x-consumer-timeout; older ones
# accept the argument and ignore it (it takes effect once they are upgraded).
QUEUE_CONSUMER_TIMEOUT_SINCE = (3, 11, 15)
# From this version the queue types own consumer timeouts: classic queues have
# none, quorum queues take one per consumer (RabbitMQ 4.3.0 release notes).
QUEUE_TYPES_OWN_CONSUMER_TIMEOUT_SINCE = (4, 3, 0)
# The broker checks consumer timeouts once a minute, and a task cut at
# time_limit is requeued by its worker's death: the queue's timeout leaves
# this much on top of what the pool's tasks may take.
CONSUMER_TIMEOUT_MARGIN = 60.0
# x-consumer-timeout is a signed 32-bit number of milliseconds.
MAX_CONSUMER_TIMEOUT = (2 ** 31 - 1) / 1000

# Arguments a quorum queue cannot change once declared; wqd's quorum work queues need them.
QUORUM_PROTECTION = ("x-delivery-limit", "x-dead-letter-exchange", "x-dead-letter-routing-key",
                     "x-dead-letter-strategy", "x-overflow")


def delivery_limit(pool) -> int:
    """The quorum work queue's x-delivery-limit for ``pool``."""
    return pool.max_retries + 1 + DELIVERY_LIMIT_MARGIN


def work_queue_arguments(pool, version: tuple = ()) -> Optional[dict]:
    """Declare-time arguments of ``pool``'s work queue on a broker of
    ``version`` (() when unknown); None for a classic queue that needs none,
    matching a plain declare. Before RabbitMQ 4.3 the same on every version,
    so that a queue created before a broker upgrade has what the new version
    honours."""
    arguments = dict(pool.queue_arguments)  # an existing queue's own, named in the config
    if pool.queue_type == "quorum":
        arguments.update({"x-queue-type": "quorum", "x-delivery-limit": delivery_limit(pool)})
        if pool.dead_letter_queue:
            # at-least-once dead-lettering (which needs reject-publish; the queue
            # has no length limit, so nothing is ever rejected) removes a
            # message only once the dead-letter queue confirmed it.
            arguments.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": pool.dead_letter_queue,
                              "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    timeout = queue_consumer_timeout(pool)
    if timeout is not None and not queue_types_own_consumer_timeout(version):
        arguments["x-consumer-timeout"] = int(timeout * 1000)
    return arguments or None



def passive_warning(pool) -> Optional[str]:
    """What wqd cannot promise for a queue it uses as it is (declare: passive)."""
    if pool.declare != "passive":
        return None
    what = ("a message redelivered past the queue's delivery limit is dropped unless the queue has a "
            "dead-letter target, and with no limit one that kills its worker every time is given up only by wqd"
            if pool.queue_type == "quorum" else
            "a length limit, a message TTL or a dead-letter exchange of the queue acts on messages as the broker "
            "decides")
    return (f"pool {pool.name!r} uses queue {pool.queue!r} as it is (declare: passive): wqd does not know its "
            f"arguments, so it cannot promise what they decide ({what}).")


def consumer_arguments(pool, version: tuple) -> Optional[dict]:
    """basic.consume's arguments: on RabbitMQ 4.3+, a quorum pool with a
    time_limit gives its consumer timeout here (it overrides the queue's)."""
    timeout = queue_consumer_timeout(pool)
    if timeout is None or pool.queue_type != "quorum" or not queue_types_own_consumer_timeout(version):
        return None
    return {"x-consumer-timeout": int(timeout * 1000)}


def queue_types_own_consumer_timeout(version: tuple) -> bool:
    return bool(version) and version >= QUEUE_TYPES_OWN_CONSUMER_TIMEOUT_SINCE


def dead_letter_queue_arguments(pool) -> Optional[dict]:
    """The dead-letter queue: of the pool's queue type, nothing more."""
    return {"x-queue-type": "quorum"} if pool.queue_type == "quorum" else None


def queue_consumer_timeout(pool) -> Optional[float]:
    """Seconds of x-consumer-timeout for the work queue of a pool with a
    time_limit; None (the broker's own consumer_timeout applies) without one.
    A worker holds up to ``prefetch`` deliveries and runs them one after the
    other, so the last one waits for the others."""
    if pool.time_limit is None:
        return None
    return min(MAX_CONSUMER_TIMEOUT, pool.time_limit * pool.prefetch + CONSUMER_TIMEOUT_MARGIN)


def consumer_timeout_warning(pool, version: tuple) -> Optional[str]:
    """One line when the broker (of ``version``, () when unknown) may cut
    ``pool``'s tasks short with its delivery-acknowledgement timeout; None
    when wqd's queue or consumer argument covers them, or (classic queues on
    RabbitMQ 4.3+) the queue has no consumer timeout."""
    if pool.queue_type == "classic" and queue_types_own_consumer_timeout(version):
        return None
    needed = None if pool.time_limit is None else pool.time_limit * pool.prefetch
    honours_argument = bool(version) and version >= QUEUE_CONSUMER_TIMEOUT_SINCE
    if needed is not None and honours_argument:
        if needed + CONSUMER_TIMEOUT_MARGIN <= MAX_CONSUMER_TIMEOUT:
            return None
        return (f"pool {pool.name!r}: time_limit {pool.time_limit:g} s x prefetch {pool.prefetch} exceeds the "
                f"longest consumer timeout a queue can have ({MAX_CONSUMER_TIMEOUT:.0f} s): the broker will "
                f"take back a delivery whose task runs longer (consumer_timeout); lower time_limit")
    if needed is not None and needed < DEFAULT_CONSUMER_TIMEOUT:
        return None  # within the broker's default, unless its configuration lowered it
    shown = ".".join(str(part) for part in version) or "of unknown version"
    if honours_argument:
        how = "set the pool's time_limit (wqd then gives its queue a consumer timeout that covers it)"
    else:
        how = (f"raise consumer_timeout in the broker's rabbitmq.conf (RabbitMQ {shown} has no per-queue "
               f"consumer timeout), or set a time_limit below it")
    what = ("has no time_limit" if needed is None else
            f"lets a delivery wait up to {needed:g} s (time_limit x prefetch)")
    return (f"pool {pool.name!r} {what}, but the broker takes back a delivery unacked longer than "
            f"its consumer_timeout (default {DEFAULT_CONSUMER_TIMEOUT:.0f} s): {how}.")


class QueueMismatch(ConfigError):
    """The queue exists with other arguments: a configuration error, not a crash."""


def declare_pool_queues(connection, pool, version: tuple) -> None:
    """Declare ``pool``'s work queue and dead-letter queue on a broker of
    ``version``, each on a channel of its own (a refused declare closes its
    channel). Raises QueueMismatch."""
    declare_work_queue(connection, pool, version)
    if pool.dead_letter_queue:
        _declare(connection, pool, pool.dead_letter_queue, dead_letter_queue_arguments(pool))


def declare_work_queue(connection, pool, version: tuple) -> None:
    """Declare ``pool``'s work queue as the pool's workers do (or, with
    declare: passive, check that it exists). Raises QueueMismatch."""
    if pool.declare == "passive":
        if not queue_exists(connection, pool.queue):
            raise QueueMismatch(f"Configuration error in pool {pool.name!r}: queue {pool.queue!r} does not exist, and "
                                f"a pool with declare: passive uses a queue as it is. To fix it: create the queue "
                                f"first, or set declare: true so that wqd declares it. The pool is not restarted.")
        return
    _declare(connection, pool, pool.queue, work_queue_arguments(pool, version))


def look_up(connection, queue: str):
    """The broker's Queue.DeclareOk for ``queue`` (its message and consumer
    counts), or None when it does not exist; a passive declare on a channel
    of its own, as the 404 closes it. Nothing is created."""
    channel = connection.channel()
    try:
        found = channel.queue_declare(queue=queue, passive=True).method
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return None
    channel.close()
    return found


def queue_exists(connection, queue: str) -> bool:
    return look_up(connection, queue) is not None


def compare_pool_queues(connection, pool, version: tuple) -> list:
    """`wqd check --broker`: one line per queue of ``pool`` as the broker has
    it against what wqd would declare; nothing is created. (line, differs)."""
    found = []
    for queue, arguments in [(pool.queue, work_queue_arguments(pool, version)),
                             (pool.dead_letter_queue, dead_letter_queue_arguments(pool))]:
        if queue is None:
            continue
        passive = queue == pool.queue and pool.declare == "passive"
        if not queue_exists(connection, queue):
            missing = "missing: declare: passive needs it" if passive else "does not exist yet: wqd declares it at start"
            found.append((f"pool {pool.name!r}: queue {queue!r} {missing}", passive))
            continue
        if passive:
            found.append((f"pool {pool.name!r}: queue {queue!r} exists (used as it is: declare: passive)", False))
            continue
        try:  # the queue exists: a declare with the same arguments changes nothing
            _declare(connection, pool, queue, arguments)
        except QueueMismatch as exc:
            found.append((str(exc), True))
        else:
            found.append((f"pool {pool.name!r}: queue {queue!r} matches what wqd declares", False))
    return found


def _declare(connection, pool, queue: str, arguments) -> None:
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        kept = kept_consumer_timeout(exc.reply_text)
        if kept is not None and (arguments or {}).get("x-consumer-timeout") != kept:
            log.info("Queue %r has the consumer timeout an older broker or wqd gave it (x-consumer-timeout %d ms), "
                     "which RabbitMQ 4.3 compares on a redeclare: declared with it (a quorum pool's consumers "
                     "give their own timeout).", queue, kept)
            return _declare(connection, pool, queue, {**(arguments or {}), "x-consumer-timeout": kept})
        reply = telling_reply(connection, pool, queue, exc.reply_text)
        raise QueueMismatch(describe_mismatch(pool, queue, reply)) from None
    channel.close()


def kept_consumer_timeout(reply_text: str) -> Optional[int]:
    """The x-consumer-timeout an existing quorum queue has, from a RabbitMQ
    4.3 redeclare refusal that names it ("inequivalent arg
    'x-consumer-timeout' ... current is the value '120000' ..."), else None."""
    found = re.search(r"inequivalent arg 'x-consumer-timeout'.* current is (?:the value )?'(\d+)'", reply_text)
    return int(found.group(1)) if found else None


def telling_reply(connection, pool, queue: str, reply_text: str) -> str:
    """The broker names the first argument that differs in its own order:
    a classic queue declared as a quorum one differs in x-dead-letter-exchange
    before x-queue-type. A declare with the type alone says whether the type
    differs; that reply, if so, else ``reply_text``."""
    if "'x-queue-type'" in reply_text:
        return reply_text
    arguments = {"x-queue-type": "quorum"} if pool.queue_type == "quorum" else None
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_text if exc.reply_code == 406 else reply_text
    channel.close()
    return reply_text


def describe_mismatch(pool, queue: str, reply_text: str) -> str:
    """The one-paragraph error for a queue the broker has with other arguments
    than wqd declares (PRECONDITION_FAILED), naming the argument and the fix
    that fits the pool's queue type."""
    found = re.search(r"inequivalent arg '([^']+)'", reply_text)
    argument = found.group(1) if found else None
    current = re.search(r"current is (?:the value )?'([^']*)'", reply_text)
    if argument == "x-queue-type":
        fix = (f"the queue is of another type than the pool's queue_type ({pool.queue_type}): set queue_type to "
               f"the queue's type, or use another queue name")
    elif argument in QUORUM_PROTECTION and pool.queue_type == "quorum" and argument in arguments_wqd_sets(pool):
        fix = ("wqd declares a quorum work queue with a delivery limit and its dead-letter queue as "
               "dead-letter target, so that a message redelivered too often is dead-lettered, not dropped; "
               "a quorum queue's arguments cannot be changed: re-create the queue (see \"Migrating a quorum "
               "queue\" in docs/clusters.md), use it as it is with declare: passive, or use another queue name")
    elif argument and queue == pool.queue and argument not in arguments_wqd_sets(pool):
        value = current.group(1) if current else "<its value>"
        fix = (f"the queue has {argument} and wqd does not declare it: name it in the pool's queue_arguments "
               f"(queue_arguments: {{{argument}: {value}}}) if the queue has it, or use the queue as it is with "
               f"declare: passive")
    else:
        fix = "declare the queue as the pool says, use it as it is with declare: passive, or delete the queue"
    differs = f" (argument {argument})" if argument else ""
    return (f"Configuration error in pool {pool.name!r}: queue {queue!r} already exists with other arguments "
            f"than wqd declares{differs}; the broker said: {reply_text}. To fix it: {fix}. The pool is not "
            f"restarted.")
