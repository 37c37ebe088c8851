"""Graceful and fast stop, worker replacement, master death, process titles."""

import os
import signal
import socket
import time

from tests.support import procfs
from tests.support.daemon import pool, task_body, wait_gone
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for


def _started_ids(wqd):
    return {e["id"] for e in wqd.records("start")}


def test_sigterm_finishes_in_flight_tasks_and_leaves_the_rest_queued(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)], graceful_timeout=30).start()
    for task_id in range(6):
        broker.publish(queue_name, task_body(task_id, sleep=2).encode())
    wait_for(lambda: len(_started_ids(wqd)) == 2, 30, message="two tasks in flight")
    in_flight = _started_ids(wqd)
    wqd.signal(signal.SIGTERM)
    assert wqd.wait_exit(30) == 0
    assert set(wqd.ended_ids()) == in_flight, "each in-flight task finished exactly once"
    assert len(wqd.records("start")) == 2, "no task was started after SIGTERM"
    stats = broker.queue_stats(queue_name)
    assert stats["messages_ready"] == 4 and stats["messages_unacknowledged"] == 0, stats
    assert "Graceful stop" in wqd.logs()


def test_second_sigterm_is_a_fast_stop_and_loses_nothing(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)], graceful_timeout=60).start()
    broker.publish(queue_name, task_body(1, sleep=30).encode())
    wait_for(lambda: len(_started_ids(wqd)) == 1, 30, message="task started")
    started = time.monotonic()
    wqd.signal(signal.SIGTERM)
    wait_for(lambda: "Graceful stop" in wqd.logs(), 10, message="graceful stop logged")
    wqd.signal(signal.SIGTERM)
    assert wqd.wait_exit(15) == 0
    assert time.monotonic() - started < 15
    wait_queue(broker, queue_name, 15, "the interrupted task is back in the queue", messages_ready=1)


def test_graceful_timeout_kills_what_is_left(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)], graceful_timeout=2).start()
    broker.publish(queue_name, task_body(1, sleep=60).encode())
    wait_for(lambda: len(_started_ids(wqd)) == 1, 30, message="task started")
    wqd.signal(signal.SIGTERM)
    assert wqd.wait_exit(20) == 0
    assert "did not stop in time" in wqd.logs()
    wait_queue(broker, queue_name, 15, "the killed task is back in the queue", messages_ready=1)


def test_sigkill_of_a_busy_worker_moves_its_task_and_restores_the_pool(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    broker.publish(queue_name, task_body("victim", sleep=3).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="task started")
    victim = wqd.records("start")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: wqd.ended_ids() == ["victim"], 30, message="task completed on another worker")
    finisher = wqd.records("end")[0]
    assert finisher["pid"] != victim and finisher["attempt"] == 2
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 1
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="pool back to 2")
    assert victim not in wqd.worker_pids()
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == 1
    assert "was killed by SIGKILL" in wqd.logs()


def test_master_sigkill_leaves_no_orphan_consuming(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    broker.publish(queue_name, task_body("inflight", sleep=2).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="task started")
    workers, monitors = wqd.all_worker_pids(), wqd.queue_monitor_pids()
    assert len(workers) == 2 and len(monitors) == 1, (workers, monitors)
    os.kill(wqd.proc.pid, signal.SIGKILL)
    for pid in workers + monitors:
        wait_gone(pid, 15)
    assert wqd.ended_ids() == ["inflight"], "the in-flight task finished before its worker left"
    wait_queue(broker, queue_name, 10, "no consumers left", consumers=0)
    assert broker.queue_stats(queue_name) == {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0}, \
        "the in-flight task was acked before its worker left; nothing else was queued"


def test_process_titles(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    master_title = procfs.cmdline(wqd.proc.pid).rstrip(b"\0")
    assert master_title == f"wqd: master -c {wqd.config_path}".encode()
    (worker,) = wqd.worker_pids()
    assert procfs.cmdline(worker).rstrip(b"\0") == b"wqd: worker default[1]"


def test_a_busy_metrics_port_is_a_config_error(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", wqd.port))
        squatter.listen()
        wqd.start(wait_ready=False)
        assert wqd.wait_exit(30) == 78
    assert f"metrics.listen: cannot listen on 127.0.0.1:{wqd.port}: Address already in use" in wqd.logs()
    assert "spawned" not in wqd.logs()
