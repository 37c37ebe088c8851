"""The shared-memory record a worker writes and its master reads (across a fork)."""

import os
import signal
import time

from wqd.ipc.task_stats import DURATION_BUCKETS, Outcome
from wqd.ipc.worker_record import KEY_BYTES, WorkerRecord


def _in_child(work) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    return pid


def test_the_master_reads_what_the_forked_worker_wrote():
    record = WorkerRecord()
    pid = _in_child(lambda: (record.task_started("m-1"), record.task_finished(Outcome.SUCCEEDED, 0.003),
                             record.redelivered(), record.task_finished(Outcome.DEAD_LETTERED),
                             record.task_started("m-2")))
    os.waitpid(pid, 0)
    seen = record.read()
    assert seen.message_key == "m-2" and seen.busy_since is not None  # it died running m-2
    assert time.monotonic() - seen.busy_since < 60
    assert seen.outcomes == {"succeeded": 1, "failed": 0, "retried": 0, "dead_lettered": 1, "duplicate": 0}
    assert seen.redelivered == 1
    assert seen.duration_sum == 0.003
    assert seen.duration_buckets[0] == 1 and sum(seen.duration_buckets) == 1  # a handler that ran: 1
    record.close()


def test_an_idle_record_has_no_task_and_a_long_key_is_cut_to_its_field():
    record = WorkerRecord()
    assert record.read().busy_since is None and record.read().message_key is None
    record.task_started("k" * (KEY_BYTES + 50))
    assert record.read().message_key == "k" * KEY_BYTES
    record.task_finished(Outcome.FAILED, 4000.0)
    assert record.read().message_key is None
    assert record.read().duration_buckets[len(DURATION_BUCKETS)] == 1  # +Inf
    record.close()


def _consistent(seen) -> int:
    """Every finished task adds one outcome and one bucket in the same write, so
    a consistent snapshot always has equal sums; a torn read would not."""
    total = sum(seen.outcomes.values())
    assert total == sum(seen.duration_buckets), (seen.outcomes, seen.duration_buckets)
    return total


def test_reads_are_never_torn_by_a_busy_writer_nor_by_one_stopped_mid_write():
    record = WorkerRecord()

    def write_forever():
        durations = (0.001, 0.02, 0.3, 7.0)
        n = 0
        while True:
            record.task_started(f"task-{n}")
            record.task_finished(Outcome.SUCCEEDED if n % 3 else Outcome.RETRIED, durations[n % 4])
            n += 1

    pid = _in_child(write_forever)
    try:
        reads, last_total = 0, 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline or last_total < 1000:
            total = _consistent(record.read())
            assert total >= last_total
            last_total = total
            reads += 1
            assert time.monotonic() < deadline + 30, "the writer made no progress"
        assert reads > 1000
        for _ in range(50):  # stopped at random points, often mid-write
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            _consistent(record.read())
            assert time.monotonic() - started < 1.0
            os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    record.close()


def test_settling_is_shown_from_the_handlers_end_until_the_task_is_finished():
    record = WorkerRecord()
    record.task_started("m-1")
    assert record.read().settling_since is None
    record.task_settling()
    seen = record.read()
    assert seen.busy_since <= seen.settling_since <= time.monotonic()
    record.task_finished(Outcome.RETRIED, 2.9)
    assert record.read().settling_since is None and record.read().busy_since is None
    record.task_started("m-2")  # the next task starts unsettled
    assert record.read().settling_since is None
    record.close()
