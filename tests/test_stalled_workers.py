"""Stalled workers, from outside: a real `wqd run`, a real broker, real
signals. A worker that stops running (SIGSTOP, a C call that holds the GIL)
is shown stalled and not ready, then killed and replaced, and the task it
held runs on its replacement; a worker in a long handler that sleeps or runs
Python is left alone.
The bounds themselves are tested in process in tests/test_stalls.py."""

import json
import os
import signal
import time

import pytest

from tests.support import procfs
from tests.support.daemon import pool, run_cli
from tests.support.waiting import wait_for
from wqd.master.stalls import UNRESPONSIVE_AFTER, kill_after

HEARTBEAT = 5  # the broker drops a stopped worker's connection after about 5 s
KILL_AFTER = kill_after(HEARTBEAT)  # 20 s: the floor
# What a loaded machine adds to a bound: a stamp due every second, a master turn every second, a scrape.
SLACK = 15


def _worker_state(wqd, pid):
    return next((w["state"] for w in wqd.workers() if w["pid"] == pid), None)


def _started(wqd, body: str) -> list:
    return [entry for entry in wqd.records("start") if entry["id"] == body]


def _ended_on(wqd, body: str) -> list:
    return [entry["pid"] for entry in wqd.records("end") if entry["id"] == body]


def _reaped(pid: int, starttime: int) -> bool:
    """That process is gone and no zombie is left of it (a pid taken again is another process)."""
    stat = procfs.proc_stat(pid)
    return stat is None or stat.starttime != starttime


def _stop(pid: int) -> None:
    """SIGSTOP, and wait until the kernel shows the process stopped."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: procfs.proc_stat(pid).state == "T", 10, message=f"worker {pid} stopped")


@pytest.mark.parametrize("how", ["sigstop", "gil"])
def test_a_worker_that_stops_running_is_shown_stalled_then_replaced_and_its_task_runs_again(
        broker, queue_name, make_wqd, how):
    wqd = make_wqd([pool(queue_name, handler="handlers:hang_on_first_delivery", workers=1)],
                   heartbeat=HEARTBEAT).start()
    (victim,) = wqd.worker_pids(consuming_only=True)
    body = "gil" if how == "gil" else "held"
    broker.publish(queue_name, body.encode())
    wait_for(lambda: _started(wqd, body), 30, message=lambda: f"the task started:\n{wqd.logs()}")
    starttime = procfs.proc_stat(victim).starttime
    stopped_at = time.monotonic()
    if how == "sigstop":
        _stop(victim)  # else it holds the GIL in libc's sleep

    wait_for(lambda: _worker_state(wqd, victim) == "stalled", UNRESPONSIVE_AFTER + SLACK,
             message=lambda: f"shown stalled:\n{wqd.status()}\n{wqd.logs()}")
    shown_after = time.monotonic() - stopped_at
    assert wqd.http("/readyz") == (503, b"not ready: a pool has no consuming worker\n")
    assert wqd.metric("wqd_workers_consuming", pool="default") == 0
    assert wqd.metric("wqd_ready") == 0
    text = run_cli("status", "-c", str(wqd.config_path), env=wqd.env)
    assert "NOT READY" in text.stdout and f"{victim:>8}  stalled" in text.stdout, text

    wait_for(lambda: wqd.worker_pids(consuming_only=True) not in ([], [victim]), KILL_AFTER + SLACK,
             message=lambda: f"replaced:\n{wqd.status()}\n{wqd.logs()}")
    replaced_after = time.monotonic() - stopped_at
    (replacement,) = wqd.worker_pids()
    wait_for(lambda: _ended_on(wqd, body), 30, message=lambda: f"the task ran again:\n{wqd.logs()}")
    assert _ended_on(wqd, body) == [replacement]
    # Counted like any attempt lost with its worker: the redelivery is attempt 2.
    assert [(entry["redelivered"], entry["attempt"]) for entry in _started(wqd, body)] == [(False, 1), (True, 2)]
    wait_for(lambda: _reaped(victim, starttime), 10, message=f"worker {victim} reaped")
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="stalled") == 1
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == 0
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="failed") == 1  # the attempt that stalled
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1
    assert wqd.http("/readyz")[0] == 200
    log = wqd.stderr_path.read_text()
    assert f"Worker default[1] (pid {victim}) has not run for " in log
    assert "Perhaps out of memory?" not in log
    print(f"{how}: shown stalled after {shown_after:.1f} s, replaced after {replaced_after:.1f} s")
    assert wqd.stop() == 0


@pytest.mark.parametrize("spec", [
    {"sleep": KILL_AFTER + 5},  # past the kill: the main thread stamps while the handler sleeps
    {"spin": UNRESPONSIVE_AFTER + 5},  # past the mark: the GIL changes hands every 5 ms
])
def test_a_worker_in_a_long_handler_that_sleeps_or_runs_python_is_not_stalled(broker, queue_name, make_wqd, spec):
    wqd = make_wqd([pool(queue_name, workers=1)], heartbeat=HEARTBEAT).start()
    (worker,) = wqd.worker_pids(consuming_only=True)
    broker.publish(queue_name, json.dumps({"id": "long", **spec}).encode())
    states = set()

    def ended() -> bool:
        states.add(_worker_state(wqd, worker))
        return wqd.ended_ids() == ["long"]

    wait_for(ended, KILL_AFTER + 5 + 30, interval=0.5, message=lambda: f"the long task ended:\n{wqd.logs()}")
    assert states == {"consuming"}, "never stalled"
    assert [entry["pid"] for entry in wqd.records("end")] == [worker] and wqd.worker_pids() == [worker]
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="stalled") == 0
    assert "has not run for" not in wqd.stderr_path.read_text()
    assert wqd.stop() == 0
