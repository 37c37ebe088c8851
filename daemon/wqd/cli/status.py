"""``wqd status``: the broker's view of each pool's queue, plus the master's
view of its workers when a master answers on metrics.listen."""

import json
import urllib.error
import urllib.request

import pika.exceptions

from wqd import errors
from wqd.broker import amqp, queues
from wqd.config import redact_url
from wqd.config.checks import parse_listen

MASTER_TIMEOUT = 2.0
# A master's /status is a few KiB per pool; more is not read.
MAX_STATUS_BYTES = 16 * 1024 * 1024


def gather_status(config) -> dict:
    """Raise errors.BrokerUnavailable when no broker answers, or the one that
    does fails before every queue was looked at."""
    master, master_problem = _master_status(config)
    master_pools = {pool["name"]: pool for pool in (master or {}).get("pools", [])}
    connection, index = amqp.connect_any(config.broker, name="wqd status")
    server = amqp.describe_server(connection)
    notes = amqp.server_notes(amqp.server_version(connection)[1])
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
        # The product and version of the node that answered, e.g. "RabbitMQ 4.0.5".
        "broker_server": server,
        "broker_answered": redact_url(config.broker.urls[index]),
        # What of that version changes wqd's promises (amqp.server_notes), e.g. Khepri on 4.3.
        "broker_notes": notes,
        # running: True (it answered), False (nothing listens), None (unknown: see "problem").
        "master": {"running": True if master else (False if master_problem == _NOTHING_LISTENS else None),
                   "pid": master and master["pid"], "ready": bool(master and master["ready"]),
                   "problem": master_problem, "quiet": bool(master and master.get("quiet"))},
        "pools": pools,
        # the master's outbox relay (None without an outbox section, or without a master to ask)
        "outbox": (master or {}).get("outbox"),
    }


def _queue_counts(connection, queue: str):
    found = queues.look_up(connection, queue)
    return None if found is None else {"messages": found.message_count, "consumers": found.consumer_count}


_NOTHING_LISTENS = "nothing listens on metrics.listen"


def _master_status(config):
    """(the master's /status, None) or (None, why there is none). Only a refused
    connection means no master runs: one that is busy, or stopped for a
    moment, still holds its socket and does not answer in time."""
    if not config.metrics.listen:
        return None, "metrics.listen is null, so a running master cannot be asked"
    host, port = parse_listen(config.metrics.listen)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=MASTER_TIMEOUT) as response:
            status = json.loads(response.read(MAX_STATUS_BYTES))
        if not isinstance(status, dict) or not isinstance(status.get("pools"), list) or "pid" not in status:
            raise ValueError("not the status of a wqd master")
        return status, None
    except urllib.error.HTTPError as exc:
        return None, f"something on {address} answered /status with HTTP {exc.code}: not a wqd master?"
    except (ConnectionRefusedError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            return None, _NOTHING_LISTENS
        if isinstance(reason, TimeoutError):
            return None, _not_answering(address)
        return None, f"cannot ask {address}: {getattr(reason, 'strerror', None) or reason}"
    except TimeoutError:
        return None, _not_answering(address)
    except OSError as exc:
        return None, f"cannot ask {address}: {exc.strerror or exc}"
    except ValueError:
        return None, f"something on {address} answered /status with what is not a wqd master's status"


def _not_answering(address: str) -> str:
    return (f"a process listens on {address} but did not answer /status within {MASTER_TIMEOUT:g} s "
            f"(the master busy, stopped or overloaded?)")


def format_status(status: dict) -> str:
    master = status["master"]
    if master["running"]:
        head = f"wqd master pid {master['pid']}, {'ready' if master['ready'] else 'NOT READY'}"
        if master["quiet"]:
            head = f"wqd master pid {master['pid']}, QUIET: consuming nothing until SIGCONT"
    elif master["running"] is False:
        head = "wqd is not running (nothing listens on metrics.listen); broker view only"
    else:
        head = f"wqd master: unknown, {master['problem']}; broker view only"
    answered = f"{status['broker_server']} at {status['broker_answered']}"
    others = status["broker"] != status["broker_answered"]  # several URLs: all of them, then the one that answered
    lines = [head, f"broker {status['broker']} ({answered})" if others else f"broker {answered}"]
    lines += [f"  {status['broker_server']}: {note}" for note in status["broker_notes"]] + [""]
    lines.append(f"{'POOL':<14}{'QUEUE':<24}{'READY':>7}{'BUSY':>6}{'CONSUMERS':>11}"
                 f"{'WORKERS':>9}{'DONE':>8}{'RETRIED':>9}{'FAILED':>8}{'DEAD':>6}")
    for pool in status["pools"]:
        tasks = pool["tasks"] or {}
        lines.append(
            f"{pool['pool']:<14}{pool['queue']:<24}{_show(pool['messages_ready']):>7}"
            f"{pool['in_progress']:>6}{_show(pool['consumers']):>11}"
            + f"{pool['workers_live']}/{pool['workers_desired']}".rjust(9)
            # the outcomes of wqd_tasks_total: FAILED is `failed` there too (the attempt did not end normally)
            + "".join(f"{_show(tasks.get(outcome) if tasks else None):>{width}}"
                      for outcome, width in (("succeeded", 8), ("retried", 9), ("failed", 8)))
            + f"{_show(pool['dead_lettered_messages']):>6}")
    if status.get("outbox"):
        lines += ["", outbox_line(status["outbox"])]
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


def outbox_line(outbox: dict) -> str:
    """One line on the master's outbox relay."""
    state = "relay up" if outbox["relay_up"] else f"RELAY DOWN ({outbox['problem']})"
    waiting = "? waiting" if outbox["pending"] is None else f"{outbox['pending']} waiting"
    if outbox["oldest_age_seconds"] is not None:
        waiting += f" (oldest {outbox['oldest_age_seconds']:.1f}s)"
    aside = f", {outbox['set_aside']} set aside (wqd outbox list)" if outbox["set_aside"] else ""
    return (f"outbox {outbox['table']}: {state}, {waiting}{aside}; relayed {outbox['relayed']}, "
            f"refused {outbox['refused']} since the master started")


def _show(value) -> str:
    return "-" if value is None else str(value)
