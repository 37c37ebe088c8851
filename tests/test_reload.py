"""SIGHUP reloads the YAML; TTIN/TTOU add and remove workers."""

import signal

from tests.support import procfs
from tests.support.daemon import pool, task_body, wait_gone
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for


def _consuming(wqd, count):
    return lambda: len(wqd.worker_pids(consuming_only=True)) == count and len(wqd.worker_pids()) == count


def _worker(wqd, name):
    """The /status entry of worker ``name`` (e.g. "default[2]"), None if none."""
    return next((w for w in wqd.workers() if w["name"] == name), None)


def _restart_counts(wqd) -> dict:
    return {reason: wqd.metric("wqd_worker_restarts_total", pool="default", reason=reason)
            for reason in ("crashed", "killed", "time_limit", "stalled", "recycled")}


def test_hup_below_a_busy_slot_retires_its_worker_after_its_task(broker, queue_name, make_wqd):
    """Two long tasks keep both workers busy; a reload to one worker retires
    slot 2: /status shows its worker busy and stopping, the task runs to its
    end once, then the worker cancels its consumer (the broker counts one),
    exits, and is not replaced."""
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    broker.publish_many(queue_name, [task_body("long-a", sleep=8), task_body("long-b", sleep=8)])
    wait_for(lambda: len({s["pid"] for s in wqd.records("start")}) == 2, 30, message="both tasks started")
    keeper, retiree = _worker(wqd, "default[1]")["pid"], _worker(wqd, "default[2]")["pid"]
    (its_task,) = [s["id"] for s in wqd.records("start") if s["pid"] == retiree]
    assert wait_queue(broker, queue_name, 10, "2 consumers", consumers=2)["messages_ready"] == 0

    wqd.config["pools"][0]["workers"] = 1
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    retiring = wait_for(lambda: (w := _worker(wqd, "default[2]")) and w["stopping"] and w, 15,
                        message="slot 2 stopping")
    assert retiring["pid"] == retiree and retiring["busy"], retiring
    assert its_task not in wqd.ended_ids() and not procfs.gone(retiree), "the retiring worker runs its task"

    wait_for(lambda: sorted(wqd.ended_ids()) == ["long-a", "long-b"], 30, message="both tasks finished")
    wait_queue(broker, queue_name, 15, "slot 2's consumer cancelled", consumers=1)
    wait_gone(retiree, 15)
    assert [e["pid"] for e in wqd.records("end") if e["id"] == its_task] == [retiree], "finished where it began"
    assert sorted(s["id"] for s in wqd.records("start")) == ["long-a", "long-b"], "each task ran exactly once"
    wait_for(_consuming(wqd, 1), 15, message="1 worker left")
    assert wqd.worker_pids() == [keeper]
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0
    assert _restart_counts(wqd) == {"crashed": 0, "killed": 0, "time_limit": 0, "stalled": 0, "recycled": 0}
    wait_queue(broker, queue_name, 10, "acked", messages_ready=0, messages_unacknowledged=0, consumers=1)
    assert wqd.stop() == 0


def test_hup_replaces_workers_of_a_changed_pool_and_they_use_the_new_setting(broker, queue_name, make_wqd):
    fast_retry = {"initial": 0.2, "max": 0.2}
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=0, retry_delay=fast_retry)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    broker.publish(queue_name, task_body("before", action="fail"), declare=False)
    wait_queue(broker, queue_name + ".dead", 30, "dead-lettered at once (max_retries=0)", messages_ready=1)
    old = set(wqd.worker_pids())
    wqd.config["pools"][0]["max_retries"] = 2
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: _consuming(wqd, 2)() and not (set(wqd.worker_pids()) & old), 30,
             message="both workers replaced")
    assert "Pool 'default' changed" in wqd.logs()
    broker.publish(queue_name, task_body("after", action="fail"), declare=False)
    wait_queue(broker, queue_name + ".dead", 30, "dead-lettered after 2 retries", messages_ready=2)
    attempts = lambda task: [s["attempt"] for s in wqd.records("start") if s["id"] == task]  # noqa: E731
    assert attempts("before") == [1]
    assert attempts("after") == [1, 2, 3], "the new workers retry twice (max_retries=2)"
    assert not {s["pid"] for s in wqd.records("start") if s["id"] == "after"} & old


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
    wait_queue(broker, queue_name, 10, "the first pool consumes", consumers=1)
    removed = wqd.worker_pids("default")
    wqd.config["pools"].pop(0)
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: wqd.workers("default") == [], 30, message="first pool removed")
    for pid in removed:
        wait_gone(pid, 15)
    wait_queue(broker, queue_name, 15, "the removed pool's consumer gone", consumers=0)
    assert wait_queue(broker, second_queue, 10, "the second pool consumes", consumers=1)
    assert wqd.worker_pids("second")
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
