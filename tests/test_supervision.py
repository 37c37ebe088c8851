"""The restart policy, without processes: how an exit is classified, the
transitions of a worker's state, and the respawn backoff's growth, cap and reset."""

import os
import signal
from types import SimpleNamespace

import pytest

from wqd.config import WorkerBounds
from wqd.master.service_child import STABLE_SECONDS
from wqd.master.supervision import (
    CRASHED,
    EARLY_DEATH_SECONDS,
    KILLED,
    RECYCLED,
    RESPAWN_BACKOFF_MAX,
    STALLED,
    TIME_LIMIT,
    Connection,
    Pool,
    RespawnBackoff,
    State,
    WorkerProcess,
    classify_exit,
    explain_exit,
    may_be_out_of_memory,
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


@pytest.mark.parametrize("status, state, busy, reason", [
    (exited(1), State.RUNNING, False, CRASHED),
    (exited(os.EX_CONFIG), State.RUNNING, False, CRASHED),  # without the worker's report of a config error
    (killed_by(signal.SIGSEGV), State.RUNNING, True, CRASHED),
    (killed_by(signal.SIGABRT), State.RUNNING, False, CRASHED),
    (killed_by(signal.SIGKILL), State.RUNNING, True, KILLED),  # an operator, or the OOM killer
    (killed_by(signal.SIGKILL), State.RUNNING, False, KILLED),
    (exited(0), State.RUNNING, True, CRASHED),  # its handler called os._exit(0)
    (exited(3), State.RUNNING, True, CRASHED),
    (exited(0), State.RUNNING, False, KILLED),  # a SIGTERM wqd did not send (an operator's, its handler's own)
    (exited(0), State.RECYCLING, False, RECYCLED),
    (exited(0), State.RECYCLING, True, CRASHED),  # a recycling worker exits after its task, not during it
    (exited(1), State.RECYCLING, False, CRASHED),  # crashed on its way out: not a recycle
    (killed_by(signal.SIGKILL), State.RECYCLING, False, KILLED),
    (killed_by(signal.SIGKILL), State.TIMED_OUT, True, TIME_LIMIT),
    (exited(0), State.TIMED_OUT, False, TIME_LIMIT),  # finished just before the SIGKILL landed
    (killed_by(signal.SIGKILL), State.STALLED, True, STALLED),
    (killed_by(signal.SIGKILL), State.STALLED, False, STALLED),  # not the OOM killer's: wqd's
    (exited(0), State.RETIRING, False, None),
    (exited(1), State.RETIRING, True, None),
    (killed_by(signal.SIGKILL), State.RETIRING, True, None),  # past its stop deadline (a stop's graceful_timeout)
])
def test_classify_exit(status, state, busy, reason):
    assert classify_exit(status, state, busy) == reason


UNASKED = (": wqd did not ask it to stop (a SIGTERM from elsewhere, an operator's or its handler's, "
           "or an exit in its code)")


@pytest.mark.parametrize("status, state, busy, words, out_of_memory", [
    (exited(0), State.RUNNING, True, ": it exited on its own while running a task", False),
    (exited(3), State.RUNNING, True, ": it exited on its own while running a task", False),
    (killed_by(signal.SIGSEGV), State.RUNNING, True, ": it died while running a task", False),
    (exited(0), State.RUNNING, False, UNASKED, False),
    (exited(1), State.RUNNING, False, "", False),
    (killed_by(signal.SIGKILL), State.RUNNING, True, "", True),
    (killed_by(signal.SIGKILL), State.RUNNING, False, "", True),
    (exited(0), State.RECYCLING, False, "", False),
    (killed_by(signal.SIGKILL), State.TIMED_OUT, True, "", False),
    (killed_by(signal.SIGKILL), State.STALLED, False, "", False),
    (killed_by(signal.SIGKILL), State.RETIRING, True, "; it was stopping, so it is not replaced", False),
    (exited(0), State.RETIRING, False, "; it was stopping, so it is not replaced", False),
])
def test_explain_exit(status, state, busy, words, out_of_memory):
    assert explain_exit(status, state, busy) == words
    assert may_be_out_of_memory(status, state, busy) is out_of_memory


# --------------------------------------------------------------------------
# a worker's state


def worker() -> WorkerProcess:
    pool = Pool(SimpleNamespace(name="default", workers=WorkerBounds(1, 1)), handler=None)
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
    assert proc.retiring and classify_exit(exited(0), proc.state, busy=False) is None


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


def test_a_stalled_worker_is_killed_once_and_not_again_over_its_time_limit():
    proc = worker()
    assert proc.stall()
    assert proc.state is State.STALLED
    assert not proc.stall() and not proc.over_time_limit(), "SIGKILLed once"
    assert proc.state is State.STALLED


def test_a_worker_killed_over_its_time_limit_or_retiring_is_not_killed_as_stalled():
    timed_out, retiring = worker(), worker()
    timed_out.over_time_limit()
    retiring.retire(kill_at=10.0)
    assert not timed_out.stall() and timed_out.state is State.TIMED_OUT
    assert not retiring.stall() and retiring.state is State.RETIRING, "killed at its deadline, not replaced"


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
    assert classify_exit(killed_by(signal.SIGKILL), proc.state, busy=True) is None


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
    backoff = Pool(SimpleNamespace(name="default", workers=WorkerBounds(1, 1)), handler=None).respawn
    assert early_deaths(backoff, 5, slot=1) == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff.early_deaths(1) == 5


def test_the_delay_is_capped():
    backoff = Pool(SimpleNamespace(name="default", workers=WorkerBounds(1, 1)), handler=None).respawn
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
