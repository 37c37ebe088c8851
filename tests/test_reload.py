"""SIGHUP reloads the YAML; TTIN/TTOU add and remove workers."""

import signal

from tests.support.daemon import pool, task_body
from tests.support.waiting import wait_for


def _consuming(wqd, count):
    return lambda: len(wqd.worker_pids(consuming_only=True)) == count and len(wqd.worker_pids()) == count


def test_hup_scales_2_to_4_to_1_and_the_in_flight_task_runs_once(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    broker.publish(queue_name, task_body("long", sleep=4).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="task started")

    wqd.config["pools"][0]["workers"] = 4
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(_consuming(wqd, 4), 30, message="4 workers after HUP")

    wqd.config["pools"][0]["workers"] = 1
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(_consuming(wqd, 1), 30, message="1 worker after the second HUP")
    wait_for(lambda: wqd.ended_ids() == ["long"], 30, message="in-flight task finished")
    assert len(wqd.records("start")) == 1, "the in-flight task ran exactly once"
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0
    wait_for(lambda: broker.queue_stats(queue_name)["messages_unacknowledged"] == 0, 10, message="acked")
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 0
    assert wqd.stop() == 0


def test_hup_replaces_workers_of_a_changed_pool(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    old = set(wqd.worker_pids())
    wqd.config["pools"][0]["max_retries"] = 7
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: _consuming(wqd, 2)() and not (set(wqd.worker_pids()) & old), 30,
             message="both workers replaced")
    assert "Pool 'default' changed" in wqd.logs()


def test_hup_with_an_invalid_config_keeps_the_running_one(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    before = set(wqd.worker_pids())
    wqd.config["pools"][0]["workers"] = "many"
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed; keeping the running configuration" in wqd.logs(), 15,
             message="reload failure logged")
    assert "pools[0].workers: expected a positive integer, got 'many'" in wqd.logs()
    assert set(wqd.worker_pids()) == before
    broker.publish(queue_name, task_body("still-working").encode())
    wait_for(lambda: wqd.ended_ids() == ["still-working"], 30, message="still processing")


def test_hup_adds_and_removes_pools(broker, queue_name, make_wqd):
    second_queue = queue_name + "-second"
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    wqd.config["pools"].append(pool(second_queue, name="second", workers=1))
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: len(wqd.worker_pids("second", consuming_only=True)) == 1, 30, message="second pool up")
    broker.publish(second_queue, task_body("on-second").encode())
    wait_for(lambda: wqd.ended_ids() == ["on-second"], 30, message="second pool works")
    wqd.config["pools"].pop(0)
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: wqd.workers("default") == [], 30, message="first pool removed")
    broker.delete_queue(second_queue)


def test_ttin_and_ttou_change_the_worker_count(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wqd.signal(signal.SIGTTIN)
    wait_for(_consuming(wqd, 3), 30, message="3 workers after TTIN")
    assert wqd.metric("wqd_workers_desired", pool="default") == 3
    # Signals of one kind sent back to back may merge into one (POSIX does not
    # queue them), so each TTOU waits for the effect of the previous one.
    wqd.signal(signal.SIGTTOU)
    wait_for(_consuming(wqd, 2), 30, message="2 workers after TTOU")
    wqd.signal(signal.SIGTTOU)
    wait_for(_consuming(wqd, 1), 30, message="1 worker after two TTOU")
    wqd.signal(signal.SIGTTOU)
    wait_for(lambda: "workers per pool now default=1" in wqd.logs().split("SIGTTOU")[-1], 10,
             message="TTOU at one worker logged")
    assert len(wqd.worker_pids()) == 1, "TTOU never goes below one worker"
