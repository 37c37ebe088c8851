"""Stalled workers: processes that stopped running while the master counts them.

A worker's main thread stamps its record (WorkerRecord.stamp_alive) at every
turn of its signal wait, at least once a second, whatever its other threads
do; the master, at every turn of its loop, checks that the stamp moves.

What stops the stamp: nothing in the worker runs Python any more. The process
is stopped (SIGSTOP, a debugger, a frozen cgroup of its own) or a C call holds
the GIL (a ctypes.PyDLL call, an extension that does not release it). Its
heartbeat thread is stopped as well, so the broker drops the connection after
``broker.heartbeat`` and its messages wait for it meanwhile.
What does not stop it: a long handler that sleeps, waits on I/O, runs Python
(the GIL changes hands every 5 ms) or runs a C call that releases the GIL.
time_limit bounds those; the heartbeat thread serves the connection meanwhile.

Two bounds. Silent for UNRESPONSIVE_AFTER, a worker is shown "stalled" and
not counted as connected or consuming (so /readyz answers 503 when no other
worker of its pool consumes). Silent for kill_after(heartbeat), when the
broker has dropped its connection (or is about to), it is SIGKILLed and
replaced with the restart reason "stalled". A stamp that moves again before
that clears the mark: a GIL held for a few seconds costs nothing.

Silence is measured on a clock that advances only while the master's loop
turns, at most MAX_STEP a turn, so a master stopped or frozen with its
workers (SIGSTOP to the process group, `docker pause`) does not find them all
silent when it resumes. A worker is watched from its first stamp, when it
starts to run wqd's code (a pool added by a reload imports its handler before).
"""

import logging

from wqd.ipc.worker_record import SETTLE_TIMEOUT

log = logging.getLogger("wqd.master")

# Silent this long (a stamp is due every second), a worker is shown stalled and not ready.
UNRESPONSIVE_AFTER = 10.0
# Never killed sooner than this, whatever the heartbeat: a loaded machine must not cost a task.
KILL_FLOOR = 20.0
# With heartbeats disabled (heartbeat: 0) the broker never drops a stopped worker: this long.
KILL_WITHOUT_HEARTBEAT = 60.0
# The most the master's clock advances in one turn of its loop (a turn is due every second).
MAX_STEP = 2.0


def kill_after(heartbeat: int) -> float:
    """Seconds of silence after which a worker is killed: by then the broker
    has dropped its connection (two missed heartbeats, sent every heartbeat/2)."""
    return max(float(heartbeat), KILL_FLOOR) if heartbeat else KILL_WITHOUT_HEARTBEAT


class StallWatch:
    def __init__(self, heartbeat: int):
        self.kill_after = kill_after(heartbeat)
        self._clock = 0.0  # seconds the master's loop has turned
        self._last_turn = None  # monotonic time of the last look
        self._moved = {}  # pid -> (its last stamp, self._clock when the master saw it change)

    def look(self, now: float, workers) -> list:
        """Mark each worker's ``stalled``; return the workers to kill now.
        ``workers``: the master's WorkerProcess of every live worker."""
        if self._last_turn is not None:
            self._clock += min(max(now - self._last_turn, 0.0), MAX_STEP)
        self._last_turn = now
        moved, self._moved = self._moved, {}
        doomed = []
        for proc in workers:
            stamp = proc.record.alive_stamp()
            if not stamp:
                continue  # not started yet: it has not stamped once
            last = moved.get(proc.pid)
            self._moved[proc.pid] = last if last and last[0] == stamp else (stamp, self._clock)
            silent = self._clock - self._moved[proc.pid][1]
            self._mark(proc, silent >= UNRESPONSIVE_AFTER, silent)
            if silent >= self.kill_after and proc.stall():
                key = proc.message_key  # None when idle
                log.warning("Worker %s (pid %d) has not run for %.0f s (stopped, or a C call that holds the "
                            "GIL); killing it%s.", proc.name, proc.pid, silent,
                            f" (task {key} goes back to the queue)" if key else "")
                doomed.append(proc)
        return doomed

    def _mark(self, proc, stalled: bool, silent: float) -> None:
        if stalled and not proc.stalled:
            log.warning("Worker %s (pid %d) has not run for %.0f s: shown stalled, not counted as consuming; "
                        "killed and replaced if it stays so for %.0f s.", proc.name, proc.pid, silent,
                        self.kill_after)
        elif proc.stalled and not stalled:
            log.info("Worker %s (pid %d) runs again.", proc.name, proc.pid)
        proc.stalled = stalled


def over_time_limit(workers, now: float):
    """The workers to SIGKILL for their pool's time_limit: the task ran past
    it, or its settling did (the handler returned, the ack hangs)."""
    for proc in workers:
        limit = proc.pool.config.time_limit
        task = limit and proc.record.read()
        if not (task and task.past_time_limit(limit, now) and proc.over_time_limit()):
            continue
        if task.settling_since is None:
            log.warning("Worker %s (pid %d) exceeded time_limit=%ss on task %s; killing it.",
                        proc.name, proc.pid, limit, task.message_key)
        else:
            log.warning("Worker %s (pid %d) did not settle task %s within %.0f s of its handler's end "
                        "(time_limit=%ss); killing it.", proc.name, proc.pid, task.message_key,
                        SETTLE_TIMEOUT, limit)
        yield proc
