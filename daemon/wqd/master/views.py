"""What the master shows of itself, read from its state and never changing
it: readiness (/readyz, READY=1), /status, the systemd STATUS line."""

import json
import time

from wqd.master.supervision import Connection, Pool, WorkerProcess


def routes(master) -> dict:
    """The master's HTTP endpoint: each path and what answers it."""
    return {
        "/metrics": lambda: (200, "text/plain; version=0.0.4; charset=utf-8", master.metrics.exposition()),
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": lambda: readyz(master.is_ready(), master.quiet.on, master.stopping),
        "/status": lambda: (200, "application/json", json.dumps(status(master)).encode()),
    }


def pool_counts(pool: Pool, workers) -> dict:
    procs = [p for p in workers if p.pool is pool]
    busy = sum(p.busy_since is not None for p in procs)
    return {
        "name": pool.config.name,
        "queue": pool.config.queue,
        "desired": pool.desired,
        "min": pool.config.workers.min,
        "max": pool.config.workers.max,
        "workers": len(procs),
        "consuming": sum(p.seen_connection is Connection.CONSUMING for p in procs),
        "busy": busy,
        "saturation": busy / len(procs) if procs else 0.0,
        "connected": sum(p.seen_connection in (Connection.CONNECTED, Connection.CONSUMING) for p in procs),
        "failed": pool.failed,
    }


def workers_up(pools, workers, quiet: bool) -> bool:
    """Every pool has a worker consuming, or connected while quiet."""
    up = (Connection.CONNECTED, Connection.CONSUMING) if quiet else (Connection.CONSUMING,)
    return all(any(p.pool in (pool, pool.replacing) and p.seen_connection in up for p in workers)
               for pool in pools)


def readyz(ready: bool, quiet: bool, stopping: bool):
    if ready:
        return 200, "text/plain", b"ready\n"
    if quiet and not stopping:
        return 503, "text/plain", b"not ready: quiet (SIGTSTP); workers consume nothing until SIGCONT\n"
    return 503, "text/plain", b"not ready: a pool has no consuming worker\n"


def status(master) -> dict:
    """/status and `wqd status`: the master's pools, workers and broker."""
    now, totals, quiet = time.monotonic(), master.metrics.task_totals(), master.quiet.on
    workers = master.workers.values()
    pools = []
    for pool in master.pools:
        counts = pool_counts(pool, workers)
        counts["tasks"] = totals[pool.config.name].outcomes
        counts["worker_processes"] = [worker_status(proc, now, quiet) for proc in
                                      sorted(workers, key=lambda p: p.slot) if proc.pool is pool]
        pools.append(counts)
    return {"pid": master.pid, "ready": master.is_ready(), "quiet": quiet, "stopping": master.stopping,
            "pools": pools,
            "broker": master.queue_monitor.broker,  # {server, url} the queue monitor is connected to, or None
            "outbox": master.outbox_relay.status()}  # None without an outbox section


def worker_status(proc: WorkerProcess, now: float, quiet: bool) -> dict:
    busy_since = proc.busy_since
    if proc.stalled:  # not run for a while (stalls.py), whatever it last reported
        state = "stalled"
    elif quiet and proc.connection is Connection.CONNECTED:  # consuming nothing while quiet, not about to
        state = "quiet"
    else:
        state = proc.connection.value
    return {"pid": proc.pid, "name": proc.name, "state": state, "busy": busy_since is not None,
            "task_age": round(now - busy_since, 3) if busy_since else None,
            "stopping": proc.retiring}


def status_line(master) -> str:
    """systemd's STATUS: per pool, workers, connected, done."""
    parts, totals, workers = [], master.metrics.task_totals(), master.workers.values()
    for pool in master.pools:
        counts = pool_counts(pool, workers)
        done = totals[pool.config.name].outcomes["succeeded"]
        bounds = pool.config.workers
        scaling = f" ({bounds})" if bounds.autoscaled else ""
        parts.append(f"{counts['name']}: {counts['workers']}/{counts['desired']}{scaling} workers, "
                     f"{counts['connected']} connected, {done} done")
    return ("Quiet (SIGCONT resumes): " if master.quiet.on else "") + "; ".join(parts)


def snapshot(master):
    """For the metrics: each pool's counts, ready, quiet."""
    workers = master.workers.values()
    return [pool_counts(pool, workers) for pool in master.pools], master.is_ready(), master.quiet.on


def live_records(master):
    """For the metrics: (pool name, shared record) of each live worker."""
    return [(proc.pool.config.name, proc.record) for proc in master.workers.values()]


def stop_line(workers) -> str:
    busy = sum(proc.busy_since is not None for proc in workers)
    return f"Stopping: {len(workers)} workers left, {busy} finishing a task"
