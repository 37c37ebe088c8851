"""The respawn backoff, seen from outside: a worker that dies soon after its
start is replaced after growing delays (0, 1, 2, 4 s: 1 s doubled from the
second early death in a row), and a worker that ran long enough resets the
count. Deaths are seen in /proc, replacements in /status."""

import time

from tests.support import procfs
from tests.support.daemon import pool, task_body
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for

EARLY_DEATH_SECONDS = 5.0  # a worker younger than this at its death counts as an early death
SLACK = 1.5                # seconds a loaded machine may add to a respawn (reaping, fork, /status poll)


def _single_worker(wqd, other_than: int = 0) -> int:
    pids = [pid for pid in wqd.worker_pids() if pid != other_than]
    return pids[0] if len(pids) == 1 else 0


def _respawn_delays(wqd, worker: int, deaths: int) -> tuple:
    """Follow the pool's one worker through ``deaths`` deaths: the seconds from
    each death to its replacement's appearance in /status, and the last pid."""
    delays = []
    for _ in range(deaths):
        died = wait_for(lambda: procfs.gone(worker) and time.monotonic(), 60, interval=0.02,
                        message=lambda: f"worker {worker} to die:\n{wqd.logs()}")
        worker = wait_for(lambda: _single_worker(wqd, other_than=worker), 60,
                          message=lambda: f"a replacement for worker {worker}:\n{wqd.logs()}")
        delays.append(time.monotonic() - died)
    return delays, worker


def _assert_backoff(delays, expected):
    for delay, want in zip(delays, expected):
        assert want - 0.1 <= delay <= want + SLACK, f"respawn delays {delays}, expected about {expected}"


def test_a_worker_that_dies_at_start_is_respawned_with_growing_delays_reset_by_a_healthy_run(
        broker, queue_name, make_wqd):
    # A task that kills its worker is redelivered to the next one, which dies
    # too, right after its start: max_retries=3 makes that four deaths in a row.
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=3)]).start()
    worker = wait_for(lambda: _single_worker(wqd), 30, message="one worker")
    broker.publish(queue_name, task_body("poison", action="exit"), declare=False)
    delays, worker = _respawn_delays(wqd, worker, deaths=4)
    _assert_backoff(delays, [0, 1, 2, 4])
    wait_queue(broker, queue_name + ".dead", 30, "poison dead-lettered after 4 attempts", messages_ready=1)
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 4

    # The fifth worker runs longer than EARLY_DEATH_SECONDS: its death is not
    # an early one and starts the count again (without the reset, the next
    # early death would wait 8 s).
    wait_for(lambda: (procfs.age(worker) or 0) > EARLY_DEATH_SECONDS + 1, 30, interval=0.2,
             message="the fifth worker runs past the early-death window")
    assert procfs.proc_stat(worker) is not None and not procfs.gone(worker), "the fifth worker lives"
    broker.publish(queue_name, task_body("poison-2", action="exit"), declare=False)
    delays, worker = _respawn_delays(wqd, worker, deaths=4)
    _assert_backoff(delays, [0, 0, 1, 2])
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 8
    wait_queue(broker, queue_name + ".dead", 30, "second poison dead-lettered", messages_ready=2)
    assert wqd.stop() == 0
