"""Failing, hanging and crashing handlers; broker trouble; recycling."""

import json
import os
import signal
import time

from tests.support.daemon import pool, task_body
from tests.support.queues import queue_counts, wait_queue
from tests.support.waiting import wait_for

FAST_RETRY = {"initial": 0.5, "max": 5, "factor": 2}


def restart_counts(wqd) -> dict:
    return {reason: wqd.metric("wqd_worker_restarts_total", pool="default", reason=reason)
            for reason in ("crashed", "killed", "time_limit", "stalled", "recycled")}


def _dead_letters(broker, queue):
    """Everything in ``<queue>.dead`` as (properties, body), acked."""
    connection = broker.connection()
    channel = connection.channel()
    found = []
    while True:
        method, properties, body = channel.basic_get(queue + ".dead", auto_ack=True)
        if method is None:
            break
        found.append((properties, body))
    connection.close()
    return found


def _dead_letter_count(broker, queue):
    counts = queue_counts(broker, queue + ".dead")
    return counts["messages_ready"] if counts else 0


def test_a_failing_task_is_retried_with_growing_delays_then_dead_lettered(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=2, retry_delay=FAST_RETRY)]).start()
    body = task_body("doomed", action="fail")
    broker.publish(queue_name, body.encode(), declare=False, message_id="m-1", content_type="application/json",
                   headers={"tenant": "acme"})
    wait_queue(broker, queue_name + ".dead", 30, "dead-lettered", messages_ready=1)
    starts = wqd.records("start")
    assert [s["attempt"] for s in starts] == [1, 2, 3]
    first_gap, second_gap = starts[1]["t"] - starts[0]["t"], starts[2]["t"] - starts[1]["t"]
    assert 0.45 <= first_gap < 3, first_gap      # 0.5 s minus up to 10% jitter
    assert 0.9 <= second_gap < 4, second_gap     # 1.0 s minus up to 10% jitter
    ((properties, dead_body),) = _dead_letters(broker, queue_name)
    assert dead_body == body.encode()
    assert properties.message_id == "m-1" and properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    headers = properties.headers
    assert headers["tenant"] == "acme"
    assert headers["x-wqd-exception"] == "RuntimeError"
    assert headers["x-wqd-error"] == "task doomed failed on purpose"
    assert "RuntimeError: task doomed failed on purpose" in headers["x-wqd-traceback"]
    assert headers["x-wqd-attempts"] == 3 and headers["x-wqd-pool"] == "default"
    assert headers["x-wqd-host"] and headers["x-wqd-failed-at"].endswith("Z")
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="retried") == 2
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 1
    assert "Task m-1 failed on attempt 1: RuntimeError: task doomed failed on purpose" in wqd.logs()
    # the last attempt's failure, then what became of the message
    assert (f"Task m-1 dead-lettered to '{queue_name}.dead' after 3 attempts: its retries are used up "
            f"(max_retries 2).") in wqd.logs()
    assert broker.queue_stats(queue_name)["messages_ready"] == 0


def test_reject_dead_letters_at_once(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=5)]).start()
    broker.publish(queue_name, task_body("bad", action="reject").encode(), declare=False)
    wait_queue(broker, queue_name + ".dead", 30, "dead-lettered", messages_ready=1)
    assert len(wqd.records("start")) == 1
    ((properties, _),) = _dead_letters(broker, queue_name)
    assert properties.headers["x-wqd-exception"] == "Reject"
    assert properties.headers["x-wqd-attempts"] == 1
    assert f"dead-lettered to '{queue_name}.dead' after 1 attempt: its handler rejected it (wqd.Reject)." \
        in wqd.logs()


def test_a_hung_task_is_killed_at_time_limit_and_dead_lettered(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, time_limit=1, max_retries=1,
                         retry_delay={"initial": 0.2, "max": 0.2})]).start()
    broker.publish(queue_name, task_body("hang", sleep=600).encode(), declare=False)
    broker.publish(queue_name, task_body("fine").encode(), declare=False)
    wait_queue(broker, queue_name + ".dead", 60, "hung task dead-lettered", messages_ready=1)
    assert wqd.ended_ids() == ["fine"]
    assert [s["attempt"] for s in wqd.records("start") if s["id"] == "hang"] == [1, 2]
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="time_limit") == 2
    ((properties, _),) = _dead_letters(broker, queue_name)
    assert properties.headers["x-wqd-exception"] == "WorkerLost"
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="pool back to 2")
    assert "exceeded time_limit=1.0s" in wqd.logs()


def test_time_limit_bounds_the_handler_and_not_a_slow_settling_after_it(broker, queue_name, make_wqd):
    """A handler that fails 0.5 s before its time_limit leaves its retry copy
    to a broker frozen until 2 s past the limit: the worker is not killed (it
    has SETTLE_TIMEOUT for the copy and the ack), and both attempts run in it."""
    wqd = make_wqd([pool(queue_name, workers=1, time_limit=3, max_retries=1,
                         retry_delay={"initial": 0.2, "max": 0.2})]).start()
    (worker,) = wqd.worker_pids()
    broker.publish(queue_name, task_body("late", sleep=2.5, action="fail").encode(), declare=False)
    (started,) = wait_for(lambda: wqd.records("start"), 30, interval=0.02, message="the task started")
    broker.pause()
    try:
        assert "failed on attempt 1" not in wqd.logs(), "the broker froze before the handler ended"
        wait_for(lambda: "failed on attempt 1" in wqd.logs(), 30, message=lambda: f"attempt 1 failed:\n{wqd.logs()}")
        # The master would have killed the worker at time_limit (started + 3 s).
        time.sleep(max(0.0, started["t"] + 3 + 2 - time.time()))
        assert wqd.worker_pids() == [worker], wqd.logs()
    finally:
        broker.resume()
    wait_queue(broker, queue_name + ".dead", 60, "dead-lettered after its second attempt", messages_ready=1)
    assert [s["attempt"] for s in wqd.records("start")] == [1, 2]
    assert {s["pid"] for s in wqd.records("start")} == {worker}
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="time_limit") == 0
    assert "exceeded time_limit" not in wqd.logs() and "did not settle" not in wqd.logs()


def test_a_task_that_kills_its_worker_ends_in_the_dead_letter_queue(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=2,
                         retry_delay={"initial": 0.2, "max": 0.2})]).start()
    broker.publish(queue_name, task_body("poison", action="exit").encode(), declare=False)
    wait_queue(broker, queue_name + ".dead", 60, "poison dead-lettered", messages_ready=1)
    assert len(wqd.records("start")) == 3
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 3
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="failed") == 3
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="pool back to 2")
    broker.publish(queue_name, task_body("after").encode(), declare=False)
    wait_for(lambda: wqd.ended_ids() == ["after"], 30, message="pool still works")
    assert "exited with code 3 (crashed)" in wqd.logs()


def test_broker_down_at_start_then_up(broker, queue_name, make_wqd):
    broker.kill()
    wqd = make_wqd([pool(queue_name, workers=2)]).start(wait_ready=False)
    wait_for(lambda: "cannot reach the broker" in wqd.logs(), 30, message="connection failure logged")
    assert wqd.http("/healthz")[0] == 200 and wqd.http("/readyz")[0] == 503
    broker.start()
    wqd.wait_ready(60)
    broker.publish(queue_name, task_body("late").encode(), declare=False)
    wait_for(lambda: wqd.ended_ids() == ["late"], 30, message="processed once the broker is up")
    for reason in ("crashed", "killed"):
        assert wqd.metric("wqd_worker_restarts_total", pool="default", reason=reason) == 0
    assert "Traceback" not in wqd.logs()


def test_wrong_credentials_are_reported_clearly_and_retried(broker, queue_name, make_wqd):
    url = broker.url.replace("guest:guest", "guest:Wr0ngPass")
    wqd = make_wqd([pool(queue_name, workers=1)], broker_url=url).start(wait_ready=False)
    first = wait_for(lambda: wqd.all_worker_pids(), 30, message="a worker")
    wait_for(lambda: wqd.logs().count("refused the credentials") >= 3, 30, message="repeated clear error")
    logs = wqd.logs()
    assert "Wr0ngPass" not in logs and "Traceback" not in logs
    assert wqd.proc.poll() is None and wqd.http("/readyz")[0] == 503
    assert wqd.all_worker_pids() == first, "the worker retries; it is not respawned"
    assert restart_counts(wqd) == {"crashed": 0, "killed": 0, "time_limit": 0, "stalled": 0, "recycled": 0}


def test_recycling_by_task_count(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, max_tasks_per_child=3)]).start()
    for task_id in range(7):
        broker.publish(queue_name, task_body(task_id).encode(), declare=False)
    wait_for(lambda: len(wqd.ended_ids()) == 7, 60, message="7 tasks done")
    pids = [e["pid"] for e in wqd.records("end")]
    assert len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1 and len(set(pids)) == 3
    wait_for(lambda: wqd.metric("wqd_worker_restarts_total", pool="default", reason="recycled") == 2, 10,
             message="two recycles counted")
    assert sorted(wqd.ended_ids()) == list(range(7)), "each task ran once"


def test_recycling_by_memory(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, max_memory_per_child=80)]).start()
    first_pid = wqd.worker_pids()[0]
    broker.publish(queue_name, json.dumps({"id": "grow-1", "action": "grow", "mib": 100}).encode(), declare=False)
    wait_for(lambda: first_pid not in wqd.worker_pids() and len(wqd.worker_pids(consuming_only=True)) == 1,
             30, message="worker recycled after crossing the memory limit")
    assert wqd.ended_ids() == ["grow-1"]
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="recycled") == 1
    assert broker.queue_stats(queue_name)["messages_unacknowledged"] == 0


def test_a_deleted_queue_is_redeclared_and_consumption_resumes(broker, queue_name, make_wqd):
    """The broker cancels the consumer of a deleted queue: the worker's consumer
    starts again (same process, the queue declared anew) and loses nothing
    published afterwards."""
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    (worker,) = wqd.worker_pids()
    broker.delete_queue(queue_name)
    wait_for(lambda: "The broker cancelled the consumer on" in wqd.logs(), 30, message="the cancel seen and logged")
    wait_queue(broker, queue_name, 30, "queue re-declared and consumed again", consumers=1)
    assert wqd.worker_pids() == [worker], "the consumer restarted inside its worker"
    assert restart_counts(wqd) == {"crashed": 0, "killed": 0, "time_limit": 0, "stalled": 0, "recycled": 0}
    broker.publish_many(queue_name, [task_body(f"again-{n}") for n in range(5)], declare=False)
    wait_for(lambda: len(wqd.ended_ids()) == 5, 30, message="processed after re-declare")
    assert sorted(wqd.ended_ids()) == [f"again-{n}" for n in range(5)], "each ran exactly once"
    wait_queue(broker, queue_name, 10, "all acked", messages_ready=0, messages_unacknowledged=0)


def test_worker_sigterm_alone_is_graceful(broker, queue_name, make_wqd):
    """KillMode=control-group and `docker stop` signal workers directly."""
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    broker.publish(queue_name, task_body("t", sleep=2).encode(), declare=False)
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="started")
    (worker,) = wqd.worker_pids()
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: wqd.ended_ids() == ["t"], 30, message="finished despite TERM")
    wait_queue(broker, queue_name, 10, "acked", messages_unacknowledged=0)
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 1, 30, message="worker replaced")
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == 1

