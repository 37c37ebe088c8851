"""Round-robin and fair dispatch, as in the RabbitMQ work-queue tutorial."""

import json
from collections import Counter

from tests.support.daemon import pool, task_body
from tests.support.waiting import wait_for


def _consumer_prefetch(broker, queue) -> list:
    """The prefetch count of each consumer of ``queue``, as the broker reports it."""
    rows = json.loads(broker.ctl("list_consumers", "-q", "--formatter", "json", "queue_name", "prefetch_count"))
    return sorted(row["prefetch_count"] for row in rows if row["queue_name"] == queue)


def test_round_robin_over_idle_workers(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming workers")
    broker.publish_many(queue_name, [task_body(task_id, sleep=0.3) for task_id in range(6)])
    wait_for(lambda: len(wqd.ended_ids()) == 6, 30, message="6 tasks done")
    per_worker = Counter(entry["pid"] for entry in wqd.records("end"))
    assert sorted(per_worker.values()) == [3, 3], per_worker
    assert sorted(wqd.ended_ids()) == list(range(6))


def test_fair_dispatch_keeps_both_workers_busy(broker, queue_name, make_wqd):
    """Odd tasks take 1 s, even ones 0.05 s, published in one go. Prefetch 1
    gives each worker a new task only when it is free, so both run slow tasks
    and the makespan stays near total/2; blind round-robin would hand every
    slow task to one worker (about 1.9x)."""
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming workers")
    workers = set(wqd.worker_pids(consuming_only=True))
    assert _consumer_prefetch(broker, queue_name) == [1, 1], "each worker's consumer has prefetch 1"
    durations = {task_id: (1.0 if task_id % 2 else 0.05) for task_id in range(1, 21)}
    broker.publish_many(queue_name, [task_body(task_id, sleep=seconds) for task_id, seconds in durations.items()])
    wait_for(lambda: len(wqd.ended_ids()) == 20, 60, message="20 tasks done")
    starts, ends = wqd.records("start"), wqd.records("end")
    assert sorted(e["id"] for e in ends) == sorted(durations), "every task ran once"
    slow_per_worker = Counter(e["pid"] for e in ends if durations[e["id"]] == 1.0)
    assert set(slow_per_worker) == workers, f"both workers ran slow tasks: {slow_per_worker}"
    assert min(slow_per_worker.values()) >= 4, slow_per_worker
    makespan = max(e["t"] for e in ends) - min(s["t"] for s in starts)
    ideal = sum(durations.values()) / 2
    round_robin = sum(seconds for task_id, seconds in durations.items() if task_id % 2)
    assert round_robin / ideal > 1.85
    assert makespan <= ideal * 1.15, f"makespan {makespan:.2f} s, ideal {ideal:.2f} s"
