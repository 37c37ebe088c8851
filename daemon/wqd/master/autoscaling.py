"""Autoscaling a pool between its bounds (``workers: {min, max, idle_timeout}``).

The decisions use only what the master has at hand, so that it never waits on
the broker: the queue monitor's last count of messages ready (its child polls
the broker every few seconds) and each worker's shared-memory record (busy or
not, tasks finished), looked at once per STEP_INTERVAL.

Grow by one worker per STEP_INTERVAL while messages are ready and every worker
worked since the last look (busy now, or finished a task meanwhile), up to
max. A new worker has to start and take a task before the next step, so the
pool grows no faster than its workers get to work.

Shrink only by retiring workers that did nothing (not busy, no task finished)
for idle_timeout, highest slot first, never below min. A busy worker is never
chosen; one that takes a task between the look and its SIGTERM finishes it
before it exits, as at any graceful stop.
"""

import logging

log = logging.getLogger("wqd.master")

STEP_INTERVAL = 1.0


class Activity:
    """One worker's activity as the autoscaler's looks at its record saw it."""

    def __init__(self, now: float):
        self.idle_since = now  # None while busy
        self.worked = False    # busy at the last look, or finished a task since the look before
        self._finished = 0

    def look(self, busy: bool, finished: int, now: float) -> None:
        """``finished``: the tasks the worker finished so far."""
        self.worked = busy or finished != self._finished
        self._finished = finished
        if busy:
            self.idle_since = None
        elif self.worked or self.idle_since is None:
            self.idle_since = now

    def idle_for(self, now: float) -> float:
        return 0.0 if self.idle_since is None else now - self.idle_since


def should_grow(bounds, desired: int, workers: list, messages_ready) -> bool:
    """One worker more? Asked once per STEP_INTERVAL. ``workers``: the pool's
    running workers (each with an ``activity``); ``messages_ready``: the queue
    monitor's count, None when unknown."""
    return (bounds.autoscaled and desired < bounds.max and bool(messages_ready)
            and len(workers) >= desired and all(proc.activity.worked for proc in workers))


def idle_to_retire(bounds, desired: int, workers: list, now: float) -> list:
    """The workers to retire now: idle for idle_timeout, highest slot first,
    as many as keep the pool at min or above."""
    if not bounds.autoscaled:
        return []
    idle = [proc for proc in workers if proc.activity.idle_for(now) >= bounds.idle_timeout]
    idle.sort(key=lambda proc: proc.slot, reverse=True)
    return idle[:max(0, desired - bounds.min)]


def step(pools, workers, messages_ready, quiet: bool, now: float) -> list:
    """One look at every autoscaled pool: grow one by a worker, or shrink it
    (its idle workers leave its slots). ``messages_ready(pool_name)``: the
    queue monitor's count. Returns the workers to retire."""
    retire = []
    for pool in pools:
        bounds = pool.config.workers
        if not bounds.autoscaled or pool.failed:
            continue
        running = [proc for proc in workers if proc.pool is pool and not proc.retiring]
        for proc in running:
            record = proc.record.read()
            proc.activity.look(record.busy_since is not None, sum(record.outcomes.values()), now)
        ready = messages_ready(pool.config.name)
        if not quiet and should_grow(bounds, pool.desired, running, ready):
            pool.scale_to(pool.desired + 1)
            log.info("Pool %r: %d messages ready and every worker busy; one worker more (%d, max %d).",
                     pool.config.name, ready, pool.desired, bounds.max)
            continue
        for proc in idle_to_retire(bounds, pool.desired, running, now):
            pool.slots.discard(proc.slot)
            log.info("Pool %r: worker %s idle for %.0f s; retiring it (%d left, min %d).",
                     pool.config.name, proc.name, proc.activity.idle_for(now), pool.desired, bounds.min)
            retire.append(proc)
    return retire
