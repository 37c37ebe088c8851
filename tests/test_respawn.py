"""The respawn backoff, seen from outside: a worker that dies soon after its
start is replaced after growing delays (0, 1, 2, 4 s: 1 s doubled from the
second early death in a row), and a worker that ran long enough resets the
count. A task that kills its worker runs again in each replacement: the gaps
between its recorded starts are the respawn delays plus a worker's start-up."""

from tests.support import procfs
from tests.support.daemon import pool, task_body
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for

EARLY_DEATH_SECONDS = 5.0  # a worker younger than this at its death counts as an early death
SLACK = 3.0                # seconds a loaded machine may add: reaping, fork, connect, consume


def _start_gaps(wqd, task: str, runs: int) -> list:
    """Seconds between the successive starts of ``task``, once it started ``runs`` times."""
    starts = wait_for(lambda: len(s := [e["t"] for e in wqd.records("start") if e["id"] == task]) >= runs and s,
                      90, message=lambda: f"{runs} starts of {task}:\n{wqd.logs()}")
    assert len(starts) == runs, starts
    return [later - earlier for earlier, later in zip(starts, starts[1:])]


def _assert_backoff(gaps, expected):
    assert all(want - 0.1 <= gap <= want + SLACK for gap, want in zip(gaps, expected)), \
        f"gaps between respawns {gaps}, expected about {expected}"


def test_a_worker_that_dies_at_start_is_respawned_with_growing_delays_reset_by_a_healthy_run(
        broker, queue_name, make_wqd):
    # max_retries=4: the task kills five workers in a row, each right after its start.
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=4)]).start()
    broker.publish(queue_name, task_body("poison", action="exit"), declare=False)
    _assert_backoff(_start_gaps(wqd, "poison", 5), [0, 1, 2, 4])
    wait_queue(broker, queue_name + ".dead", 60, "poison dead-lettered after 5 attempts", messages_ready=1)
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 5

    # The sixth worker runs longer than EARLY_DEATH_SECONDS: its death is not
    # an early one and starts the count again (without the reset, the next
    # early death would wait 16 s).
    (worker,) = wait_for(lambda: wqd.worker_pids(consuming_only=True), 30, message="the sixth worker")
    wait_for(lambda: (procfs.age(worker) or 0) > EARLY_DEATH_SECONDS + 1, 30, interval=0.2,
             message="the sixth worker runs past the early-death window")
    assert not procfs.gone(worker), "the sixth worker lives"
    broker.publish(queue_name, task_body("poison-2", action="exit"), declare=False)
    _assert_backoff(_start_gaps(wqd, "poison-2", 5), [0, 0, 1, 2])
    wait_queue(broker, queue_name + ".dead", 60, "second poison dead-lettered", messages_ready=2)
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 10
    assert wqd.stop() == 0
