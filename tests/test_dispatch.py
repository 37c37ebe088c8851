"""Round-robin and fair dispatch, as in the RabbitMQ work-queue tutorial."""

from collections import Counter

from tests.support.daemon import pool, task_body
from tests.support.waiting import wait_for


def test_round_robin_over_idle_workers(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming workers")
    for task_id in range(6):
        broker.publish(queue_name, task_body(task_id, sleep=0.3).encode())
    wait_for(lambda: len(wqd.ended_ids()) == 6, 30, message="6 tasks done")
    per_worker = Counter(entry["pid"] for entry in wqd.records("end"))
    assert sorted(per_worker.values()) == [3, 3], per_worker
    assert sorted(wqd.ended_ids()) == list(range(6))


def test_fair_dispatch_keeps_both_workers_busy(broker, queue_name, make_wqd):
    """Odd tasks take 1 s, even ones 0.05 s. Prefetch 1 gives each worker a new
    task only when it is free, so the makespan stays near total/2; blind
    round-robin would hand every slow task to one worker (about 1.9x)."""
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming workers")
    durations = {task_id: (1.0 if task_id % 2 else 0.05) for task_id in range(1, 21)}
    for task_id, seconds in durations.items():
        broker.publish(queue_name, task_body(task_id, sleep=seconds).encode())
    wait_for(lambda: len(wqd.ended_ids()) == 20, 60, message="20 tasks done")
    starts, ends = wqd.records("start"), wqd.records("end")
    makespan = max(e["t"] for e in ends) - min(s["t"] for s in starts)
    ideal = sum(durations.values()) / 2
    round_robin = sum(seconds for task_id, seconds in durations.items() if task_id % 2)
    assert round_robin / ideal > 1.85
    assert makespan <= ideal * 1.15, f"makespan {makespan:.2f} s, ideal {ideal:.2f} s"
    slow_per_worker = Counter(e["pid"] for e in ends if durations[e["id"]] == 1.0)
    assert min(slow_per_worker.values()) >= 4, slow_per_worker
