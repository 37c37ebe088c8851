"""Helpers of the outbox tests: a wqd with an outbox section, its table, its rows."""

import os
import signal

import psycopg

from tests.support import procfs
from tests.support.daemon import run_cli
from tests.support.waiting import wait_for
from wqd.outbox import enqueue


def with_outbox(wqd, dsn: str, **settings):
    """Give a (not yet started) Wqd an outbox section, and create its table with `wqd outbox init`."""
    wqd.config["outbox"] = {"dsn": dsn, **settings}
    wqd.write_config()
    done = run_cli("outbox", "init", "-c", str(wqd.config_path), env=wqd.env)
    assert done.returncode == 0, done.stderr
    return wqd


def enqueue_rows(dsn: str, queue: str, ids, commit: bool = True, table: str = "wqd_outbox") -> list:
    """One transaction enqueuing a task per id (body {"id": id}); committed or rolled back. Returns the message ids."""
    with psycopg.connect(dsn) as connection:
        message_ids = [enqueue(connection, queue, {"id": task_id}, table=table) for task_id in ids]
        if commit:
            connection.commit()
        else:
            connection.rollback()
    return message_ids


def rows_left(dsn: str, table: str = "wqd_outbox") -> int:
    with psycopg.connect(dsn) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def relay_pids(wqd) -> list:
    return procfs.group_members(wqd.proc.pid, b"wqd: outbox relay")


def kill_relay(wqd, timeout: float = 30) -> int:
    """SIGKILL the master's running relay; return its pid."""
    pid = wait_for(lambda: relay_pids(wqd), timeout, message="no outbox relay runs")[0]
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it died meanwhile: the master starts another
    return pid
