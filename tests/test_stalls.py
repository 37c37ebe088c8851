"""Stalled workers (stalls.py), in process: the master's judgement of the
alive stamps in real worker records, on a clock the test drives. The daemon
against a real SIGSTOP is tested in tests/test_stalled_workers.py."""

from types import SimpleNamespace

import pytest

from wqd.config import WorkerBounds
from wqd.ipc.worker_record import WorkerRecord
from wqd.master.stalls import KILL_FLOOR, KILL_WITHOUT_HEARTBEAT, MAX_STEP, UNRESPONSIVE_AFTER, StallWatch, kill_after
from wqd.master.supervision import Connection, Pool, State, WorkerProcess


@pytest.fixture
def records():
    made = []
    yield made
    for record in made:
        record.close()


def worker(records, pid=4242) -> WorkerProcess:
    records.append(WorkerRecord())
    pool = Pool(SimpleNamespace(name="default", workers=WorkerBounds(1, 1)), handler=None)
    proc = WorkerProcess(pool, slot=1, pid=pid, reader=None, command_fd=-1, record=records[-1], started_at=0.0)
    proc.reported("consuming")
    return proc


def turns(watch, procs, start: float, seconds: float, stamping=()) -> list:
    """Look once a second from ``start`` for ``seconds``; the workers in
    ``stamping`` stamp before each look. Returns the workers to kill, per look."""
    doomed = []
    for tick in range(int(seconds) + 1):
        for proc in stamping:
            proc.record.stamp_alive()
        doomed.append(watch.look(start + tick, procs))
    return doomed


@pytest.mark.parametrize("heartbeat, bound", [
    (60, 60.0), (600, 600.0), (5, KILL_FLOOR), (1, KILL_FLOOR), (0, KILL_WITHOUT_HEARTBEAT)])
def test_a_worker_is_killed_once_the_broker_has_dropped_it_never_sooner_than_the_floor(heartbeat, bound):
    assert kill_after(heartbeat) == bound


def test_a_worker_that_stamps_is_never_stalled(records):
    proc = worker(records)
    watch = StallWatch(heartbeat=5)
    assert turns(watch, [proc], 0.0, 3 * KILL_FLOOR, stamping=[proc]) == [[]] * (int(3 * KILL_FLOOR) + 1)
    assert not proc.stalled and proc.state is State.RUNNING


def test_a_silent_worker_is_shown_stalled_then_killed_once(records):
    quiet, stamping = worker(records, pid=1), worker(records, pid=2)
    watch = StallWatch(heartbeat=5)
    quiet.record.stamp_alive()
    watch.look(0.0, [quiet, stamping])
    turns(watch, [quiet, stamping], 1.0, UNRESPONSIVE_AFTER - 2, stamping=[stamping])
    assert not quiet.stalled and quiet.seen_connection is Connection.CONSUMING

    turns(watch, [quiet, stamping], UNRESPONSIVE_AFTER, 0, stamping=[stamping])
    assert quiet.stalled and quiet.seen_connection is None and quiet.state is State.RUNNING
    assert not stamping.stalled

    doomed = turns(watch, [quiet, stamping], UNRESPONSIVE_AFTER + 1, KILL_FLOOR, stamping=[stamping])
    killed_at = [UNRESPONSIVE_AFTER + 1 + tick for tick, procs in enumerate(doomed) if procs]
    assert killed_at == [KILL_FLOOR] and doomed[int(KILL_FLOOR - UNRESPONSIVE_AFTER - 1)] == [quiet]
    assert quiet.state is State.STALLED and stamping.state is State.RUNNING


def test_a_stamp_that_moves_again_clears_the_mark(records):
    proc = worker(records)
    watch = StallWatch(heartbeat=5)
    proc.record.stamp_alive()
    turns(watch, [proc], 0.0, UNRESPONSIVE_AFTER + 2)
    assert proc.stalled
    proc.record.stamp_alive()  # a C call that held the GIL for 12 s returned
    assert watch.look(UNRESPONSIVE_AFTER + 3, [proc]) == []
    assert not proc.stalled and proc.seen_connection is Connection.CONSUMING
    assert turns(watch, [proc], UNRESPONSIVE_AFTER + 4, KILL_FLOOR - 2) == [[]] * int(KILL_FLOOR - 1)


def test_a_worker_that_never_stamped_is_not_judged(records):
    proc = worker(records)  # e.g. a reloaded pool's worker still importing its handler
    watch = StallWatch(heartbeat=5)
    assert turns(watch, [proc], 0.0, 3 * KILL_FLOOR) == [[]] * (int(3 * KILL_FLOOR) + 1)
    assert not proc.stalled


def test_a_master_stopped_with_its_workers_does_not_find_them_silent(records):
    """SIGSTOP to the whole process group, `docker pause`: on the master's
    clock, an hour without a turn is MAX_STEP."""
    proc = worker(records)
    watch = StallWatch(heartbeat=5)
    proc.record.stamp_alive()
    watch.look(0.0, [proc])
    assert watch.look(3600.0, [proc]) == [] and not proc.stalled
    proc.record.stamp_alive()  # the first thing the thawed worker does
    assert turns(watch, [proc], 3601.0, 3 * KILL_FLOOR, stamping=[proc]) == [[]] * (int(3 * KILL_FLOOR) + 1)
    assert MAX_STEP < UNRESPONSIVE_AFTER


def test_a_pid_reused_by_a_new_worker_starts_afresh(records):
    old = worker(records)
    watch = StallWatch(heartbeat=5)
    old.record.stamp_alive()
    turns(watch, [old], 0.0, UNRESPONSIVE_AFTER + 1)
    assert old.stalled
    new = worker(records)  # reaped and replaced by a process that got the same pid
    new.record.stamp_alive()
    assert watch.look(UNRESPONSIVE_AFTER + 2, [new]) == [] and not new.stalled
