"""The restart policy, without processes: how an exit is classified, the
transitions of a worker's state, and the respawn backoff's growth, cap and reset."""

import os
import signal
from types import SimpleNamespace

import pytest

from wqd.queue_monitor import STABLE_SECONDS
from wqd.supervision import (
    CRASHED,
    EARLY_DEATH_SECONDS,
    KILLED,
    RECYCLED,
    RESPAWN_BACKOFF_MAX,
    TIME_LIMIT,
    Connection,
    Pool,
    RespawnBackoff,
    State,
    WorkerProcess,
    classify_exit,
)


def exited(code: int) -> int:
    """The wait status of a process that exited with ``code``."""
    status = code << 8
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == code
    return status


def killed_by(signum: int) -> int:
    """The wait status of a process killed by ``signum``."""
    status = int(signum)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signum
    return status


# --------------------------------------------------------------------------
# classify_exit


@pytest.mark.parametrize("status, state, reason", [
    (exited(1), State.RUNNING, CRASHED),
    (exited(os.EX_CONFIG), State.RUNNING, CRASHED),  # without the worker's report of a config error
    (killed_by(signal.SIGSEGV), State.RUNNING, CRASHED),
    (killed_by(signal.SIGABRT), State.RUNNING, CRASHED),
    (killed_by(signal.SIGKILL), State.RUNNING, KILLED),  # an operator, or the OOM killer
    (exited(0), State.RUNNING, KILLED),  # stopped cleanly by a TERM from outside wqd
    (exited(0), State.RECYCLING, RECYCLED),
    (exited(1), State.RECYCLING, CRASHED),  # crashed on its way out: not a recycle
    (killed_by(signal.SIGKILL), State.RECYCLING, KILLED),
    (killed_by(signal.SIGKILL), State.TIMED_OUT, TIME_LIMIT),
    (exited(0), State.TIMED_OUT, TIME_LIMIT),  # finished just before the SIGKILL landed
    (exited(0), State.RETIRING, None),
    (exited(1), State.RETIRING, None),
    (killed_by(signal.SIGKILL), State.RETIRING, None),  # past its stop deadline
])
def test_classify_exit(status, state, reason):
    assert classify_exit(status, state) == reason


# --------------------------------------------------------------------------
# a worker's state


def worker() -> WorkerProcess:
    pool = Pool(SimpleNamespace(name="default", workers=1), handler=None)
    return WorkerProcess(pool, slot=1, pid=4242, reader=None, command_fd=-1, record=None, started_at=0.0)


def test_a_new_worker_runs_and_has_not_connected():
    proc = worker()
    assert (proc.state, proc.connection, proc.retiring) == (State.RUNNING, Connection.STARTING, False)


def test_connection_reports_do_not_change_the_state():
    proc = worker()
    proc.recycling()
    for event in ("connected", "consuming", "disconnected", "consuming"):
        proc.reported(event)
    assert (proc.state, proc.connection) == (State.RECYCLING, Connection.CONSUMING)


def test_a_recycling_worker_that_is_retired_is_not_replaced():
    proc = worker()
    proc.recycling()
    proc.retire(kill_at=10.0)
    assert proc.retiring and classify_exit(exited(0), proc.state) is None


def test_a_retired_worker_does_not_become_recycling():
    proc = worker()
    proc.retire(kill_at=10.0)
    proc.recycling()
    assert proc.state is State.RETIRING


def test_a_worker_over_its_time_limit_is_killed_once():
    proc = worker()
    assert proc.over_time_limit()
    assert proc.state is State.TIMED_OUT
    assert not proc.over_time_limit(), "SIGKILLed once"


def test_a_retiring_worker_is_killed_once_at_its_deadline_and_stays_retiring():
    proc = worker()
    proc.retire(kill_at=10.0)
    assert not proc.must_be_killed(9.0)
    assert proc.must_be_killed(10.5)
    assert not proc.must_be_killed(11.0), "SIGKILLed once"
    assert not proc.over_time_limit(), "already SIGKILLed"
    assert proc.state is State.RETIRING


def test_a_retiring_worker_over_its_time_limit_is_killed_but_not_replaced():
    proc = worker()
    proc.retire(kill_at=10.0)
    assert proc.over_time_limit()
    assert not proc.must_be_killed(11.0), "already SIGKILLed"
    assert classify_exit(killed_by(signal.SIGKILL), proc.state) is None


def test_a_fast_stop_moves_a_retiring_worker_s_deadline():
    proc = worker()
    proc.retire(kill_at=100.0)
    proc.retire(kill_at=2.0)
    assert proc.must_be_killed(3.0)


# --------------------------------------------------------------------------
# RespawnBackoff


def early_deaths(backoff: RespawnBackoff, count: int, slot=0) -> list:
    """Delays after ``count`` deaths in a row, each right after its start."""
    delays, now = [], 1000.0
    for _ in range(count):
        delays.append(backoff.exited(0.5, now, slot))
        now += delays[-1] + 0.5
    return delays


def test_a_pool_restarts_a_first_early_death_at_once_then_waits_1_2_4_seconds():
    backoff = Pool(SimpleNamespace(name="default", workers=1), handler=None).respawn
    assert early_deaths(backoff, 5, slot=1) == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff.early_deaths(1) == 5


def test_the_delay_is_capped():
    backoff = Pool(SimpleNamespace(name="default", workers=1), handler=None).respawn
    delays = early_deaths(backoff, 12)
    assert delays[-1] == RESPAWN_BACKOFF_MAX and max(delays) == RESPAWN_BACKOFF_MAX
    assert delays == sorted(delays)


def test_a_healthy_run_resets_the_count():
    backoff = RespawnBackoff(EARLY_DEATH_SECONDS, immediate=1)
    assert early_deaths(backoff, 3) == [0.0, 1.0, 2.0]
    assert backoff.exited(EARLY_DEATH_SECONDS, 2000.0) == 0.0, "a death after a healthy run: at once"
    assert backoff.early_deaths() == 0
    assert early_deaths(backoff, 2) == [0.0, 1.0], "the count starts again"


def test_reset_forgets_the_count_and_the_pending_start():
    backoff = RespawnBackoff(EARLY_DEATH_SECONDS, immediate=1)
    early_deaths(backoff, 3)
    backoff.reset()
    assert backoff.may_start(0.0) and backoff.early_deaths() == 0
    assert early_deaths(backoff, 2) == [0.0, 1.0]


def test_a_slot_may_not_start_before_its_delay_is_over():
    backoff = RespawnBackoff(EARLY_DEATH_SECONDS, immediate=1)
    assert backoff.exited(0.1, 100.0, slot=1) == 0.0
    assert backoff.may_start(100.0, slot=1)
    assert backoff.exited(0.1, 100.0, slot=1) == 1.0
    assert not backoff.may_start(100.5, slot=1)
    assert backoff.next_start(100.5) == 101.0
    assert backoff.may_start(101.0, slot=1)
    assert backoff.next_start(101.0) is None, "only starts still ahead wake the loop"


def test_slots_are_counted_apart():
    backoff = RespawnBackoff(EARLY_DEATH_SECONDS, immediate=1)
    assert early_deaths(backoff, 3, slot=1) == [0.0, 1.0, 2.0]
    assert early_deaths(backoff, 1, slot=2) == [0.0]
    assert backoff.may_start(1000.0, slot=2)


def test_the_queue_monitor_s_policy_delays_from_its_first_early_exit():
    backoff = RespawnBackoff(STABLE_SECONDS)
    assert early_deaths(backoff, 8) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff.exited(STABLE_SECONDS, 5000.0) == 0.0
