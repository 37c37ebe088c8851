"""Where a failed message goes next: a delay queue, or the dead-letter queue.

A retry is republished to ``<queue>.delay.<ms>``, a durable queue with no
consumers whose messages expire (per-message TTL) and are dead-lettered back
to the work queue. One delay queue per delay keeps expiry FIFO-correct, and
``x-expires`` removes a delay queue nobody has used for a while.
"""

import random
import socket
import time
import traceback

from wqd.config import PoolConfig
from wqd.message import ATTEMPT_HEADER, LOST_HEADER

JITTER = 0.1  # a retry waits between 90% and 100% of its computed delay


def retry_delay(pool: PoolConfig, attempt: int) -> float:
    """Seconds before the retry that follows failed attempt ``attempt`` (1-based)."""
    delay = pool.retry_delay
    return min(delay.max, delay.initial * delay.factor ** (attempt - 1))


def delay_queue(pool: PoolConfig, delay: float):
    """Name and declare-arguments of the delay queue for ``delay`` seconds."""
    delay_ms = max(1, int(round(delay * 1000)))
    name = f"{pool.queue}.delay.{delay_ms}"
    arguments = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": pool.queue,
        "x-expires": delay_ms * 2 + 60_000,
    }
    if pool.queue_type == "quorum":
        # Replicated like the work queue, so that a retry survives the loss of
        # the node it waits on; at-least-once dead-lettering (which needs
        # reject-publish) removes it only once the work queue confirmed it.
        arguments.update({"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                          "x-overflow": "reject-publish"})
    return name, arguments, delay_ms


def jittered_expiration(delay_ms: int) -> str:
    return str(int(delay_ms * (1 - JITTER * random.random())))


def retry_headers(headers: dict, attempt: int, lost_total: int) -> dict:
    updated = dict(headers or {})
    updated[ATTEMPT_HEADER] = attempt + 1
    updated[LOST_HEADER] = lost_total
    return updated


def dead_letter_headers(headers: dict, pool: PoolConfig, attempts: int, exc: BaseException) -> dict:
    """The original headers plus why the message was given up on."""
    updated = dict(headers or {})
    updated.update({
        "x-wqd-exception": type(exc).__name__,
        "x-wqd-error": str(exc)[:1000],
        "x-wqd-traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
        "x-wqd-attempts": attempts,
        "x-wqd-pool": pool.name,
        "x-wqd-queue": pool.queue,
        "x-wqd-host": socket.gethostname(),
        "x-wqd-failed-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return updated
