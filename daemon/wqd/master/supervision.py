"""Supervision: the master's handle on each worker, its pools, and the restart policy.

A worker's life as the master sees it has two sides that change independently:
its ``State`` (what the master expects of it: run, recycle, die of its
time_limit, retire) and its ``Connection`` (what it last reported about the
broker). ``wqd status`` shows both, e.g. "busy, stopping". When a worker
exits, ``classify_exit`` names the restart from its wait status and its state,
and ``RespawnBackoff`` delays the slot's next start if it keeps dying early.
Nothing here forks or kills: the master does.
"""

import enum
import logging
import os
import signal
import time
from typing import Optional

from wqd import exits
from wqd.backoff import exponential
from wqd.master.autoscaling import Activity

log = logging.getLogger("wqd.master")

# A worker that dies sooner than this after its start died "early"; a slot that
# keeps dying early is restarted with a growing delay instead of at once.
EARLY_DEATH_SECONDS = 5.0
RESPAWN_BACKOFF_INITIAL = 1.0
RESPAWN_BACKOFF_MAX = 60.0

# Restart reasons (the label of wqd_worker_restarts_total).
CRASHED = "crashed"        # exited with an error, or during a task, or killed by a signal other than SIGKILL
KILLED = "killed"          # ended from outside wqd: SIGKILL (an operator, the OOM killer), or a clean exit unasked
TIME_LIMIT = "time_limit"  # the master SIGKILLed it: its task ran longer than time_limit
STALLED = "stalled"        # the master SIGKILLed it: it had stopped running (stalls.py)
RECYCLED = "recycled"      # exited 0 after max_tasks_per_child or max_memory_per_child
RESTART_REASONS = (CRASHED, KILLED, TIME_LIMIT, STALLED, RECYCLED)  # wqd_worker_restarts_total{reason}


class State(enum.Enum):
    """What the master expects of a worker; it decides what its exit means."""

    RUNNING = "running"      # working (or trying to reach the broker): replaced if it exits
    RECYCLING = "recycling"  # said it exits after its task (max_tasks/max_memory): replaced
    TIMED_OUT = "timed_out"  # SIGKILLed by the master over its time_limit: replaced
    STALLED = "stalled"      # SIGKILLed by the master: it had stopped running (stalls.py): replaced
    RETIRING = "retiring"    # asked to stop (TERM, or QUIT in a fast stop): not replaced


class Connection(enum.Enum):
    """What the worker last reported about its broker connection."""

    STARTING = "starting"          # forked; not connected yet
    CONNECTED = "connected"        # connected, its queue declared; not consuming yet
    CONSUMING = "consuming"
    DISCONNECTED = "disconnected"  # lost or refused; the worker reconnects by itself


class RespawnBackoff:
    """When a slot may start again after its process exited.

    An exit within ``healthy_after`` seconds of the start is an early death.
    The first ``immediate`` early deaths in a row are restarted at once (one
    crash is not yet a crash loop); each further one doubles the delay from
    ``initial`` up to ``maximum``. An exit after a healthy run resets the slot.
    A process that has no slots (the queue monitor) uses the default slot.
    """

    def __init__(self, healthy_after: float, initial: float = RESPAWN_BACKOFF_INITIAL,
                 maximum: float = RESPAWN_BACKOFF_MAX, immediate: int = 0):
        self.healthy_after = healthy_after
        self.initial = initial
        self.maximum = maximum
        self.immediate = immediate
        self._early_deaths = {}  # slot -> consecutive early deaths
        self._not_before = {}    # slot -> monotonic time before which it must not start

    def exited(self, ran_for: float, now: float, slot=0) -> float:
        """Count an exit after ``ran_for`` seconds; return the delay before the next start."""
        if ran_for >= self.healthy_after:
            self.reset(slot)
            return 0.0
        deaths = self._early_deaths.get(slot, 0) + 1
        self._early_deaths[slot] = deaths
        delay = exponential(deaths - self.immediate, self.initial, self.maximum)
        if delay:
            self._not_before[slot] = now + delay
        return delay

    def reset(self, slot=0) -> None:
        """A planned exit (recycling) or a healthy run: the slot starts afresh."""
        self._early_deaths.pop(slot, None)
        self._not_before.pop(slot, None)

    def early_deaths(self, slot=0) -> int:
        return self._early_deaths.get(slot, 0)

    def may_start(self, now: float, slot=0) -> bool:
        return now >= self._not_before.get(slot, 0.0)

    def next_start(self, now: float) -> Optional[float]:
        """The earliest start still ahead, for the loop's timeout; None when none is."""
        return min((when for when in self._not_before.values() if when > now), default=None)


def classify_exit(status: int, state: State, busy: bool) -> Optional[str]:
    """The restart reason for a worker that exited with wait ``status`` in
    ``state`` (``busy``: during a task); None when its exit was expected and
    it is not replaced."""
    if state is State.RETIRING:
        return None
    if state is State.TIMED_OUT:
        return TIME_LIMIT
    if state is State.STALLED:
        return STALLED
    if busy:
        # Not SIGKILLed from outside, it ended during a task, however cleanly
        # (a handler's os._exit(0)): a worker asked to stop finishes its task first.
        return KILLED if _killed_by(status, signal.SIGKILL) else CRASHED
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        # Between tasks, a worker exits 0 by itself only to recycle; otherwise a
        # SIGTERM wqd did not send stopped it (an operator's, or its handler's own).
        return RECYCLED if state is State.RECYCLING else KILLED
    if _killed_by(status, signal.SIGKILL):
        return KILLED  # by an operator, or the kernel's OOM killer
    return CRASHED


def explain_exit(status: int, state: State, busy: bool) -> str:
    """What the log line adds to exits.describe() and the reason, to say what
    the exit code alone does not; "" when there is nothing to add."""
    reason = classify_exit(status, state, busy)
    if reason is None:
        return "; it was stopping, so it is not replaced"
    if reason == CRASHED and busy:
        return ": it exited on its own while running a task" if os.WIFEXITED(status) else \
            ": it died while running a task"
    if reason == KILLED and os.WIFEXITED(status):
        return (": wqd did not ask it to stop (a SIGTERM from elsewhere, an operator's or its handler's, "
                "or an exit in its code)")
    return ""


def may_be_out_of_memory(status: int, state: State, busy: bool) -> bool:
    """A SIGKILL that wqd did not send: the kernel's OOM killer is the usual suspect."""
    return classify_exit(status, state, busy) == KILLED and _killed_by(status, signal.SIGKILL)


def _killed_by(status: int, signum: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signum



class Pool:
    """A pool's running state; replaced (not mutated) when its settings change.

    It keeps a worker in each of its ``slots``. A slot names a worker (its
    process title, its respawn backoff, its broker URL), so a replacement takes
    its predecessor's slot; scaling up takes the lowest free slots, scaling down
    drops the highest, and the autoscaler drops the slot of the idle worker it retires.
    """

    def __init__(self, config, handler):
        self.config = config
        # The handler the master imported at its start; None for a pool from a
        # reload: the master imports nothing after its start, its workers do.
        self.handler = handler
        self.slots = set(range(1, config.workers.min + 1))
        self.respawn = RespawnBackoff(EARLY_DEATH_SECONDS, immediate=1)
        self.failed = None  # a configuration error reported by a worker: not restarted
        # A code deploy: the pool this one replaces slot by slot (a new worker
        # starts when no other is starting; the old one of its slot retires
        # once it consumes). None once every slot rolled.
        self.replacing = None

    @property
    def desired(self) -> int:
        return len(self.slots)

    def scale_to(self, count: int) -> None:
        """Keep ``count`` workers: add the lowest free slots, or drop the highest."""
        slot = 1
        while len(self.slots) < count:
            self.slots.add(slot)
            slot += 1
        while len(self.slots) > count:
            self.slots.remove(max(self.slots))

    def step(self, more: bool) -> None:
        """TTIN (``more``) or TTOU: one worker more or less, within the bounds
        of an autoscaled pool, else never below one."""
        bounds = self.config.workers
        count = self.desired + (1 if more else -1)
        self.scale_to(min(max(count, bounds.min), bounds.max) if bounds.autoscaled else max(1, count))

    def reconfigure(self, config) -> None:
        """A reload changed only the worker count (or nothing): a fixed pool
        takes the new count (undoing TTIN/TTOU); an autoscaled one keeps its
        count, moved within the new bounds."""
        self.config = config
        bounds = config.workers
        self.scale_to(min(max(self.desired, bounds.min), bounds.max) if bounds.autoscaled else bounds.min)


class WorkerProcess:
    """The master's handle on one worker: what it knows, never the process itself."""

    def __init__(self, pool: Pool, slot: int, pid: int, reader, command_fd: int, record, started_at: float):
        self.pool = pool
        self.slot = slot
        self.pid = pid
        self.reader = reader  # worker -> master: events (reporting.EventReader)
        self.command_fd = command_fd  # master -> worker: lost attempts per message
        self.record = record  # shared memory: the running task, the totals (WorkerRecord)
        self.started_at = started_at
        self.state = State.RUNNING
        self.connection = Connection.STARTING
        self.kill_at = None  # RETIRING: when it gets SIGKILL; None once it got it
        self.stalled = False  # it has not run for a while (stalls.py): its connection is not vouched for
        self.activity = Activity(started_at)  # busy or idle, for the autoscaler

    @property
    def name(self) -> str:
        return f"{self.pool.config.name}[{self.slot}]"

    @property
    def busy_since(self):
        """Monotonic time the running task started; None when idle."""
        return self.record.read().busy_since

    @property
    def message_key(self):
        return self.record.read().message_key

    @property
    def retiring(self) -> bool:
        return self.state is State.RETIRING

    @property
    def seen_connection(self) -> Optional[Connection]:
        """Its connection as the master can count it: None while it is stalled
        (the broker has dropped it, or will)."""
        return None if self.stalled else self.connection

    def reported(self, event: str) -> None:
        """A connection event from the worker (reporting.CONNECTED, ...)."""
        # STARTING/CONNECTED/CONSUMING/DISCONNECTED -> CONNECTED/CONSUMING/DISCONNECTED, in any State
        self.connection = Connection(event)

    def recycling(self) -> None:
        """The worker said it exits after its task, to be replaced."""
        if self.state is State.RUNNING:
            # RUNNING -> RECYCLING (a worker already retiring or timed out keeps that fate)
            self.state = State.RECYCLING

    def retire(self, kill_at: float) -> None:
        """The master asked it to stop (the caller signals it); it is not replaced."""
        # RUNNING/RECYCLING/TIMED_OUT/STALLED -> RETIRING; RETIRING -> RETIRING with a new deadline (a fast stop)
        self.state = State.RETIRING
        self.kill_at = kill_at

    def must_be_killed(self, now: float) -> bool:
        """True once, when a retiring worker is past its deadline."""
        if self.kill_at is not None and now > self.kill_at:
            self.kill_at = None  # RETIRING -> RETIRING, SIGKILLed: still not replaced
            return True
        return False

    def over_time_limit(self) -> bool:
        """Its task ran past time_limit; True when the master must SIGKILL it now
        (False when it already did)."""
        if self.state in (State.TIMED_OUT, State.STALLED):
            return False  # SIGKILLed already
        if self.state is State.RETIRING:
            if self.kill_at is None:
                return False
            self.kill_at = None  # RETIRING -> RETIRING, SIGKILLed: still not replaced
            return True
        self.state = State.TIMED_OUT  # RUNNING/RECYCLING -> TIMED_OUT
        return True

    def stall(self) -> bool:
        """It stopped running; True when the master must SIGKILL it now (False
        when it already did, or will at its stop deadline)."""
        if self.state not in (State.RUNNING, State.RECYCLING):
            return False  # TIMED_OUT or STALLED: killed already; RETIRING: killed at kill_at
        self.state = State.STALLED  # RUNNING/RECYCLING -> STALLED
        return True


def worker_exited(proc: "WorkerProcess", status: int, busy: bool) -> Optional[str]:
    """Log a reaped worker's end and book it with its slot's respawn backoff;
    return its restart reason (None: no restart, e.g. a retired worker).
    ``busy``: it died during a task."""
    pool, now, how = proc.pool, time.monotonic(), exits.describe(status)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == os.EX_CONFIG and pool.failed:
        log.error("Worker %s %s with a configuration error; pool %r is not restarted until a "
                  "reload fixes it.", proc.name, how, pool.config.name)
        return None
    reason, why = classify_exit(status, proc.state, busy), explain_exit(status, proc.state, busy)
    if reason is None:
        log.info("Worker %s (pid %d) %s%s.", proc.name, proc.pid, how, why)
    elif reason == RECYCLED:
        log.info("Worker %s (pid %d) %s (%s); replacing it.", proc.name, proc.pid, how, reason)
        pool.respawn.reset(proc.slot)  # a planned exit, however early, is no crash loop
    else:
        hint = " Perhaps out of memory?" if may_be_out_of_memory(status, proc.state, busy) else ""
        log.warning("Worker %s (pid %d) %s (%s)%s; replacing it.%s", proc.name, proc.pid, how, reason, why, hint)
        delay = pool.respawn.exited(now - proc.started_at, now, proc.slot)
        if delay:
            log.warning("Worker %s died %d times in a row within %.0f s of starting; next start in %.0f s.",
                        proc.name, pool.respawn.early_deaths(proc.slot), EARLY_DEATH_SECONDS, delay)
    return reason


def slots_to_fill(pool: "Pool", workers, now: float):
    """(slots to start a worker in now, workers whose slot the pool no longer
    has). A rolling pool starts its next slot only once the new worker of
    the last one consumes; a slot's backoff may hold its start."""
    active = {proc.slot: proc for proc in workers if proc.pool is pool and not proc.retiring}
    starting = sum(proc.seen_connection is not Connection.CONSUMING for proc in active.values())
    to_start = []
    for slot in sorted(pool.slots):
        if pool.replacing is not None and starting:
            break  # rolling: the next slot once this one's new worker consumes
        if slot not in active and pool.respawn.may_start(now, slot):
            to_start.append(slot)
            starting += 1
    return to_start, [proc for slot, proc in active.items() if slot not in pool.slots]


def rolled_over(proc: "WorkerProcess", workers: list) -> list:
    """A new worker of a rolling pool consumes: the old worker of its slot is
    to retire (finishing its task on the old code); after the last slot, so
    are the old pool's workers of slots the new one no longer has."""
    pool = proc.pool
    rolled = {p.slot for p in workers if p.pool is pool and p.seen_connection is Connection.CONSUMING}
    done = pool.slots <= rolled
    old = [p for p in workers if p.pool is pool.replacing and not p.retiring and (p.slot == proc.slot or done)]
    if done:
        log.info("Pool %r runs the new code on every worker.", pool.config.name)
        pool.replacing = None
    return old
