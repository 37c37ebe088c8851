"""``wqd status``: the broker's view of each pool's queue, plus the master's
view of its workers when a master answers on metrics.listen."""

import json
import urllib.request

import pika.exceptions

from wqd import amqp, errors
from wqd.config import redact_url
from wqd.http_endpoint import parse_listen

MASTER_TIMEOUT = 2.0


def gather_status(config) -> dict:
    """Raise errors.BrokerUnavailable when no broker answers, or the one that
    does fails before every queue was looked at."""
    master = _master_status(config)
    master_pools = {pool["name"]: pool for pool in (master or {}).get("pools", [])}
    connection, index = amqp.connect_any(config.broker, name="wqd status")
    try:
        pools = []
        for pool in config.pools:
            queue = _queue_counts(connection, pool.queue)
            dead = _queue_counts(connection, pool.dead_letter_queue) if pool.dead_letter_queue else None
            live = master_pools.get(pool.name)
            pools.append({
                "pool": pool.name,
                "queue": pool.queue,
                "queue_exists": queue is not None,
                "messages_ready": queue["messages"] if queue else None,
                "consumers": queue["consumers"] if queue else None,
                "dead_letter_queue": pool.dead_letter_queue,
                "dead_lettered_messages": dead["messages"] if dead else None,
                "workers_desired": live["desired"] if live else pool.workers.min,
                "workers_live": live["workers"] if live else 0,
                "workers_consuming": live["consuming"] if live else 0,
                "in_progress": live["busy"] if live else 0,
                "tasks": live["tasks"] if live else None,
                "workers": live["worker_processes"] if live else [],
            })
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise errors.BrokerUnavailable(amqp.describe_error(exc, config.broker.urls[index])) from None
    finally:
        if connection.is_open:
            connection.close()
    return {
        "broker": ", ".join(redact_url(url) for url in config.broker.urls),
        "master": {"running": master is not None, "pid": master and master["pid"],
                   "ready": bool(master and master["ready"]), "quiet": bool(master and master.get("quiet"))},
        "pools": pools,
    }


def _queue_counts(connection, queue: str):
    channel = connection.channel()
    try:
        result = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    channel.close()
    return {"messages": result.method.message_count, "consumers": result.method.consumer_count}


def _master_status(config):
    if not config.metrics.listen:
        return None
    host, port = parse_listen(config.metrics.listen)
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=MASTER_TIMEOUT) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def format_status(status: dict) -> str:
    master = status["master"]
    if master["running"]:
        head = f"wqd master pid {master['pid']}, {'ready' if master['ready'] else 'NOT READY'}"
        if master["quiet"]:
            head = f"wqd master pid {master['pid']}, QUIET: consuming nothing until SIGCONT"
    else:
        head = "wqd is not running (no master answered on metrics.listen); broker view only"
    lines = [head, f"broker {status['broker']}", ""]
    lines.append(f"{'POOL':<14}{'QUEUE':<24}{'READY':>7}{'BUSY':>6}{'CONSUMERS':>11}"
                 f"{'WORKERS':>9}{'DONE':>8}{'FAILED':>8}{'DEAD':>6}")
    for pool in status["pools"]:
        tasks = pool["tasks"] or {}
        failed = sum(tasks.get(k, 0) for k in ("failed", "retried", "dead_lettered")) if tasks else "-"
        lines.append(
            f"{pool['pool']:<14}{pool['queue']:<24}{_show(pool['messages_ready']):>7}"
            f"{pool['in_progress']:>6}{_show(pool['consumers']):>11}"
            + f"{pool['workers_live']}/{pool['workers_desired']}".rjust(9)
            + f"{_show(tasks.get('succeeded') if tasks else None):>8}{_show(failed):>8}"
            f"{_show(pool['dead_lettered_messages']):>6}")
    workers = [(pool["pool"], w) for pool in status["pools"] for w in pool["workers"]]
    if workers:
        lines += ["", f"{'WORKER':<20}{'PID':>8}  {'STATE':<14}{'TASK AGE':>9}"]
        for _, w in workers:
            state = ("busy" if w["busy"] else "idle") if w["state"] == "consuming" else w["state"]
            if w["stopping"]:
                state += ", stopping"
            age = f"{w['task_age']:.1f}s" if w["task_age"] is not None else "-"
            lines.append(f"{w['name']:<20}{w['pid']:>8}  {state:<14}{age:>9}")
    return "\n".join(lines)


def _show(value) -> str:
    return "-" if value is None else str(value)
