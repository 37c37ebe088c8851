"""Quiet (SIGTSTP/SIGCONT) and autoscaling between bounds, against a real broker,
with the daemon as a process and real signals."""

import os
import signal
import socket
import uuid

from tests.support.daemon import pool, run_cli, task_body
from tests.support.waiting import wait_for

QUIET_READYZ = (503, b"not ready: quiet (SIGTSTP); workers consume nothing until SIGCONT\n")


def _consumers(broker, queue):
    return (broker.queue_stats(queue) or {}).get("consumers")


def _gauge(wqd, name):
    return wqd.metric(name, pool="default")


def _pool_size(wqd):
    return _gauge(wqd, "wqd_workers_desired"), _gauge(wqd, "wqd_workers")


# --------------------------------------------------------------------------
# quiet


def test_tstp_quiets_every_worker_after_its_task_and_cont_resumes(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: _consumers(broker, queue_name) == 2, 30, message="2 consumers")
    pids = sorted(wqd.worker_pids())
    broker.publish(queue_name, task_body("running", sleep=3).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="task started")

    wqd.signal(signal.SIGTSTP)
    wait_for(lambda: wqd.http("/readyz") == QUIET_READYZ, 10, message="/readyz says quiet")
    wait_for(lambda: _consumers(broker, queue_name) == 0, 30, message="both consumers cancelled")
    wait_for(lambda: wqd.ended_ids() == ["running"], 30, message="the running task finished")
    wait_for(lambda: broker.queue_stats(queue_name)["messages_unacknowledged"] == 0, 10, message="and was acked")
    assert _gauge(wqd, "wqd_tasks_in_progress") == 0
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1
    assert sorted(wqd.worker_pids()) == pids == sorted(wqd.all_worker_pids()), "the same workers stay up"
    assert all(w["state"] == "quiet" for w in wqd.workers()), wqd.workers()
    assert wqd.metric("wqd_quiet") == 1 and wqd.metric("wqd_ready") == 0
    assert _gauge(wqd, "wqd_broker_connected") == 2, "quiet workers keep their connection"

    # While quiet, a message waits; a worker added now starts quiet too.
    broker.publish(queue_name, task_body("later").encode())
    wqd.signal(signal.SIGTTIN)
    wait_for(lambda: len(wqd.workers()) == 3 and all(w["state"] == "quiet" for w in wqd.workers()), 30,
             message=lambda: f"a third worker, connected and quiet: {wqd.workers()}")
    stats = broker.queue_stats(queue_name)
    assert (stats["consumers"], stats["messages_ready"]) == (0, 1), stats
    status = run_cli("status", "-c", str(wqd.config_path), env=wqd.env)
    assert status.returncode == 0, status.stderr
    assert "QUIET: consuming nothing until SIGCONT" in status.stdout, status.stdout
    assert status.stdout.count(" quiet ") == 3, status.stdout
    assert wqd.status()["quiet"] is True
    assert "Quiet (SIGTSTP)" in wqd.logs()

    wqd.signal(signal.SIGCONT)
    wait_for(lambda: _consumers(broker, queue_name) == 3, 30, message="3 consumers again")
    wait_for(lambda: wqd.ended_ids() == ["running", "later"], 30, message="the waiting message ran")
    assert wqd.http("/readyz") == (200, b"ready\n")
    assert set(pids) <= set(wqd.worker_pids()), "the quiet workers resumed; none was replaced"
    assert wqd.metric("wqd_quiet") == 0 and wqd.metric("wqd_ready") == 1
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0
    assert set(wqd.metric("wqd_worker_restarts_total", pool="default", reason=reason)
               for reason in ("crashed", "killed", "time_limit", "stalled", "recycled")) == {0}
    assert wqd.stop() == 0


def test_a_worker_replaced_while_quiet_starts_quiet(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    wqd.signal(signal.SIGTSTP)
    wait_for(lambda: _consumers(broker, queue_name) == 0 and wqd.workers()[0]["state"] == "quiet", 30,
             message="quiet")
    [victim] = wqd.worker_pids()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: [w["state"] for w in wqd.workers()] == ["quiet"] and wqd.worker_pids() != [victim], 30,
             message=lambda: f"replaced by a quiet worker: {wqd.workers()}")
    assert _consumers(broker, queue_name) == 0
    wqd.signal(signal.SIGCONT)
    wait_for(lambda: _consumers(broker, queue_name) == 1, 30, message="consuming again")
    wqd.wait_ready(10)


class Notifications:
    """Plays systemd's notify socket (an abstract address); read() takes what arrived."""

    def __init__(self):
        self.address = f"@wqdtest-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.setblocking(False)
        self.received = []

    def read(self) -> list:
        while True:
            try:
                data = self._sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))

    def close(self):
        self._sock.close()


def test_systemd_hears_quiet_in_status_and_ready_after_a_reload_while_quiet(broker, queue_name, make_wqd):
    notifications = Notifications()
    try:
        wqd = make_wqd([pool(queue_name, workers=2)], extra_env={"NOTIFY_SOCKET": notifications.address}).start()
        wait_for(lambda: any(m.get("READY") == "1" for m in notifications.read()), 10, message="READY=1")
        wqd.signal(signal.SIGTSTP)
        wait_for(lambda: any(m.get("STATUS", "").startswith("Quiet (SIGCONT resumes): default: 2/2 workers")
                             for m in notifications.read()), 30, message=lambda: f"quiet: {notifications.read()}")
        seen = len(notifications.read())
        wqd.signal(signal.SIGHUP)  # a reload while quiet still ends with READY=1
        wait_for(lambda: [key for m in notifications.read()[seen:] for key in ("RELOADING", "READY") if key in m]
                 == ["RELOADING", "READY"], 30, message=lambda: f"reloaded: {notifications.read()[seen:]}")
        assert wqd.http("/readyz") == QUIET_READYZ, "still quiet after the reload"
        seen = len(notifications.read())
        wqd.signal(signal.SIGCONT)
        wait_for(lambda: any(m.get("STATUS", "").startswith("default: 2/2 workers")
                             for m in notifications.read()[seen:]), 30, message="resumed")
        wait_for(lambda: _consumers(broker, queue_name) == 2, 30, message="2 consumers again")
    finally:
        notifications.close()


# --------------------------------------------------------------------------
# autoscaling


def test_a_backlog_grows_the_pool_to_max_and_idle_workers_retire_down_to_min(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers={"min": 1, "max": 6, "idle_timeout": 3})]).start()
    assert _pool_size(wqd) == (1, 1)
    broker.publish_many(queue_name, [task_body(i, sleep=0.2) for i in range(200)])
    saturated = set()  # pool sizes above 1 seen with every worker busy

    def grown():
        samples = wqd.metrics()
        desired, live, saturation = (samples.get((name, frozenset({"pool": "default"}.items())))
                                     for name in ("wqd_workers_desired", "wqd_workers", "wqd_pool_saturation"))
        if live > 1 and saturation == 1:
            saturated.add(live)
        return (desired, live) == (6, 6)

    wait_for(grown, 60, message=lambda: f"grown to 6: {_pool_size(wqd)}")
    assert saturated, "wqd_pool_saturation was 1 while the pool grew"
    assert "every worker busy; one worker more (6, max 6)" in wqd.logs()
    wait_for(lambda: len(wqd.ended_ids()) == 200, 120, message=lambda: f"{len(wqd.ended_ids())} of 200 done")
    assert sorted(wqd.ended_ids()) == list(range(200)), "each task ran once"

    wait_for(lambda: _pool_size(wqd) == (1, 1), 60, message=lambda: f"back to 1: {_pool_size(wqd)}")
    assert [w["name"] for w in wqd.workers()] == ["default[1]"], "the lowest slot stays"
    assert _gauge(wqd, "wqd_pool_saturation") == 0
    assert "idle for 3 s; retiring it" in wqd.logs()
    assert set(wqd.metric("wqd_worker_restarts_total", pool="default", reason=reason)
               for reason in ("crashed", "killed", "time_limit", "stalled", "recycled")) == {0}
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 200
    assert wqd.stop() == 0


def test_a_busy_worker_is_never_retired_when_the_pool_shrinks(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers={"min": 1, "max": 3, "idle_timeout": 2})]).start()
    broker.publish_many(queue_name, [task_body(i, sleep=0.3) for i in range(100)])
    wait_for(lambda: _pool_size(wqd) == (3, 3), 60, message=lambda: f"grown to 3: {_pool_size(wqd)}")
    broker.purge_queue(queue_name)
    broker.publish(queue_name, task_body("long", sleep=12).encode())
    long_start = wait_for(lambda: [e for e in wqd.records("start") if e["id"] == "long"], 30,
                          message="the long task started")[0]
    wait_for(lambda: _pool_size(wqd) == (1, 1), 30,
             message=lambda: f"the two idle workers retired: {_pool_size(wqd)}")
    assert wqd.worker_pids() == [long_start["pid"]], "the busy worker is the one kept"
    assert "long" not in wqd.ended_ids(), "the pool shrank while the long task ran"
    wait_for(lambda: "long" in wqd.ended_ids(), 30, message="the long task finished")
    assert [e["id"] for e in wqd.records("start")].count("long") == 1, "it ran once"
    assert [e for e in wqd.records("end") if e["id"] == "long"][0]["pid"] == long_start["pid"]
    wait_for(lambda: broker.queue_stats(queue_name)["messages_unacknowledged"] == 0, 10, message="acked")
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="failed") == 0
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0
    assert _pool_size(wqd) == (1, 1)


def test_ttin_ttou_and_hup_stay_within_the_bounds(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers={"min": 1, "max": 2, "idle_timeout": 600})]).start()
    wqd.signal(signal.SIGTTOU)
    wait_for(lambda: "SIGTTOU: workers per pool now default=1" in wqd.logs(), 10, message="TTOU handled")
    assert _pool_size(wqd) == (1, 1), "never below min"
    wqd.signal(signal.SIGTTIN)
    wait_for(lambda: _pool_size(wqd) == (2, 2), 30, message="TTIN adds one")
    wqd.signal(signal.SIGTTIN)
    wait_for(lambda: wqd.logs().count("SIGTTIN: workers per pool now default=2") == 2, 10, message="TTIN again")
    assert _pool_size(wqd) == (2, 2), "never above max"

    wqd.config["pools"][0]["workers"] = {"min": 3, "max": 5, "idle_timeout": 600}
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: _pool_size(wqd) == (3, 3), 30, message="raised to the new min")
    wqd.config["pools"][0]["workers"] = 1
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: _pool_size(wqd) == (1, 1), 30, message="a fixed count again")
    status = wqd.status()["pools"][0]
    assert (status["min"], status["max"]) == (1, 1)
